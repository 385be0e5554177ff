"""What the gateway says on its L2 segment about the VIPs it serves: ARP and NDP, without I/O.

``decide`` takes one received Ethernet frame and returns either the frame to send back (an ARP
reply or a solicited neighbour advertisement from the gateway's MAC) or a named reason to drop
it; ``arpsock`` counts those reasons. Frames are parsed and built with ``struct`` at fixed
offsets: this runs for every ARP request and neighbour solicitation on the LAN, so no scapy.

Gratuitous ARP and unsolicited NA tell the segment, when the gateway starts serving a VIP, that
the VIP now lives at its MAC (switch CAM tables and neighbours' caches move at once instead of
after their entries expire). Like MetalLB, the caller repeats them every ``GARP_INTERVAL`` for
``GARP_DURATION`` because single frames get lost while links and bridges settle.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from .model import IP

GARP_INTERVAL = 1.1  # seconds between gratuitous ARP / unsolicited NA bursts (as MetalLB)
GARP_DURATION = 5.0  # seconds during which they are repeated after a VIP is taken

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_OPT_SOURCE_LL = 1
ND_OPT_TARGET_LL = 2
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
MIN_FRAME = 60  # Ethernet minimum without FCS; ARP frames are padded up to it

_ETH = struct.Struct("!6s6sH")  # destination, source, EtherType
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa
_IP6 = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hops
_ICMP6 = struct.Struct("!BBH")  # type, code, checksum
_NS_FIXED = 24  # ICMPv6 NS/NA: type, code, checksum, 4 bytes flags/reserved, target
_NA_LEN = _NS_FIXED + 8  # with one target link-layer address option


class DropReason(enum.StrEnum):
    """Why a received frame gets no answer; each is a label value of the frames metric."""

    MALFORMED = "malformed"  # truncated, or lengths/types that do not add up
    OWN_FRAME = "own_frame"  # Ethernet source is our MAC (our own gratuitous frames)
    OTHER_HOST = "other_host"  # unicast to another MAC (only seen in promiscuous mode)
    UNHANDLED_ETHERTYPE = "unhandled_ethertype"  # neither ARP nor IPv6 (VLAN tags included)
    NOT_ARP_REQUEST = "not_arp_request"  # an ARP reply or another opcode
    NOT_NS = "not_ns"  # IPv6 but not an ICMPv6 neighbour solicitation
    BAD_ICMP6 = "bad_icmp6"  # an NS that RFC 4861 section 7.1.1 says to discard silently
    NOT_OURS = "not_ours"  # the target address is not a VIP this gateway serves


@dataclass(frozen=True)
class Answer:
    frame: bytes
    vip: IP


@dataclass(frozen=True)
class Drop:
    reason: DropReason


def decide(frame: bytes, vips: AbstractSet[IP], mac: bytes) -> Answer | Drop:
    """The frame to send back for a received frame, or why there is none.

    ``vips`` is the served set (both families), ``mac`` this gateway's 6-byte interface MAC.
    """
    if len(frame) < _ETH.size:
        return Drop(DropReason.MALFORMED)
    dst, src, ethertype = _ETH.unpack_from(frame)
    if src == mac:
        return Drop(DropReason.OWN_FRAME)
    # Group bit clear: unicast, which must be to us (a kernel never hands us others' unicast
    # unless the interface is promiscuous, and then it is not ours to answer).
    if not dst[0] & 1 and dst != mac:
        return Drop(DropReason.OTHER_HOST)
    if ethertype == ETH_P_ARP:
        return _decide_arp(frame, vips, mac)
    if ethertype == ETH_P_IPV6:
        return _decide_ns(frame, src, vips, mac)
    return Drop(DropReason.UNHANDLED_ETHERTYPE)


def _decide_arp(frame: bytes, vips: AbstractSet[IP], mac: bytes) -> Answer | Drop:
    if len(frame) < _ETH.size + _ARP.size:
        return Drop(DropReason.MALFORMED)
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return Drop(DropReason.MALFORMED)  # only Ethernet/IPv4 ARP exists on this segment
    if op != ARP_REQUEST:
        return Drop(DropReason.NOT_ARP_REQUEST)
    vip = ipaddress.IPv4Address(tpa)
    if vip not in vips:
        return Drop(DropReason.NOT_OURS)
    # RFC 826: swap sender and target, fill in our MAC. A probe (sender 0.0.0.0, RFC 5227)
    # gets the same unicast reply, which is how an address in use is defended.
    reply = _arp_frame(sha, mac, ARP_REPLY, mac, tpa, sha, spa)
    return Answer(reply, vip)


def _decide_ns(frame: bytes, eth_src: bytes, vips: AbstractSet[IP], mac: bytes) -> Answer | Drop:
    off = _ETH.size
    if len(frame) < off + _IP6.size:
        return Drop(DropReason.MALFORMED)
    vtf, plen, next_header, hops, src, dst = _IP6.unpack_from(frame, off)
    if vtf >> 28 != 6 or len(frame) < off + _IP6.size + plen:
        return Drop(DropReason.MALFORMED)
    # Extension headers before ICMPv6 are not followed: an NS never needs them.
    if next_header != IPPROTO_ICMPV6:
        return Drop(DropReason.NOT_NS)
    icmp = frame[off + _IP6.size : off + _IP6.size + plen]  # without Ethernet padding
    if len(icmp) < _ICMP6.size:
        return Drop(DropReason.MALFORMED)
    kind, code, _ = _ICMP6.unpack_from(icmp)
    if kind != ND_NEIGHBOR_SOLICIT:
        return Drop(DropReason.NOT_NS)
    # RFC 4861 7.1.1: a hop limit below 255 means it crossed a router, i.e. it is forged.
    if hops != 255 or code != 0 or len(icmp) < _NS_FIXED:
        return Drop(DropReason.BAD_ICMP6)
    if not checksum_ok(src, dst, icmp):
        return Drop(DropReason.BAD_ICMP6)
    target_bytes = icmp[8:_NS_FIXED]
    if target_bytes[0] == 0xFF:  # the target is never multicast
        return Drop(DropReason.BAD_ICMP6)
    source_ll = _source_ll_option(icmp[_NS_FIXED:])
    if source_ll is None:
        return Drop(DropReason.BAD_ICMP6)  # an option of length 0, or one that overruns
    dad = src == bytes(16)
    if dad and (dst[:13] != _SOLICITED_PREFIX or source_ll):
        return Drop(DropReason.BAD_ICMP6)
    target = ipaddress.IPv6Address(target_bytes)
    if target not in vips:
        return Drop(DropReason.NOT_OURS)
    if dad:
        # RFC 4861 7.2.4: to a duplicate address probe, all-nodes and not Solicited.
        return Answer(_na_frame(mac, target_bytes, ALL_NODES_MAC, ALL_NODES.packed, False), target)
    # A unicast NS (reachability check) may carry no source link-layer option; the Ethernet
    # source is then the asker's MAC.
    reply_mac = source_ll or eth_src
    return Answer(_na_frame(mac, target_bytes, reply_mac, src, True), target)


_SOLICITED_PREFIX = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13]


def _source_ll_option(options: bytes) -> bytes | None:
    """The source link-layer address option's MAC (b"" without one); None if options are bad."""
    found = b""
    i = 0
    while i + 2 <= len(options):
        kind, units = options[i], options[i + 1]
        size = units * 8
        if size == 0 or i + size > len(options):
            return None
        if kind == ND_OPT_SOURCE_LL and size >= 8:
            found = options[i + 2 : i + 8]
        i += size
    return found


def _arp_frame(
    eth_dst: bytes, eth_src: bytes, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes
) -> bytes:
    head = _ETH.pack(eth_dst, eth_src, ETH_P_ARP) + _ARP.pack(
        1, 0x0800, 6, 4, op, sha, spa, tha, tpa
    )
    return head + bytes(MIN_FRAME - len(head))


def _na_frame(mac: bytes, target: bytes, eth_dst: bytes, ip_dst: bytes, solicited: bool) -> bytes:
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_SOLICITED if solicited else 0)
    body = struct.pack(
        "!BBHI16sBB6s", ND_NEIGHBOR_ADVERT, 0, 0, flags, target, ND_OPT_TARGET_LL, 1, mac
    )
    csum = icmp6_checksum(target, ip_dst, body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    # The source address is the VIP itself: the NA is about it, and hosts match on it.
    ip6 = _IP6.pack(0x60000000, _NA_LEN, IPPROTO_ICMPV6, 255, target, ip_dst)
    return _ETH.pack(eth_dst, mac, ETH_P_IPV6) + ip6 + body


def _ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of ``data`` (zero-padded to even length).

    2**16 is 1 modulo 0xFFFF, so the sum of the big-endian words is congruent to the whole
    buffer read as one big integer: one C-speed ``int.from_bytes`` instead of a Python loop.
    The ones' complement sum of non-zero data is never 0 but 0xFFFF ("negative zero").
    """
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def _pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!I3xB", length, IPPROTO_ICMPV6)


def icmp6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """RFC 4443 checksum of an ICMPv6 message whose checksum field is zero."""
    return ~_ones_sum(_pseudo_header(src, dst, len(message)) + message) & 0xFFFF


def checksum_ok(src: bytes, dst: bytes, message: bytes) -> bool:
    return _ones_sum(_pseudo_header(src, dst, len(message)) + message) == 0xFFFF


def gratuitous_arp(vip: ipaddress.IPv4Address, mac: bytes) -> list[bytes]:
    """Broadcast announcements of ``vip`` at ``mac``: the request form (RFC 5227 announcement,
    target MAC zero) and the reply form (target MAC broadcast). Some hosts and switches only
    learn from one of the two, so both are sent."""
    spa = vip.packed
    return [
        _arp_frame(BROADCAST_MAC, mac, ARP_REQUEST, mac, spa, ZERO_MAC, spa),
        _arp_frame(BROADCAST_MAC, mac, ARP_REPLY, mac, spa, BROADCAST_MAC, spa),
    ]


def unsolicited_na(vip: ipaddress.IPv6Address, mac: bytes) -> bytes:
    """An NA to all nodes with Override set (RFC 4861 7.2.6) so caches replace the old MAC."""
    return _na_frame(mac, vip.packed, ALL_NODES_MAC, ALL_NODES.packed, False)


def solicited_node_mac(vip: ipaddress.IPv6Address) -> bytes:
    """The Ethernet multicast address NSs for ``vip`` are sent to (RFC 2464: 33:33 followed by
    the low 32 bits of ff02::1:ffXX:XXXX)."""
    return b"\x33\x33\xff" + vip.packed[13:]


def announcements(vip: IP, mac: bytes) -> list[bytes]:
    """The frames of one gratuitous burst for ``vip``."""
    if isinstance(vip, ipaddress.IPv4Address):
        return gratuitous_arp(vip, mac)
    return [unsolicited_na(vip, mac)]

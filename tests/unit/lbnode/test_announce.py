"""The gateway's ARP/NDP decisions on scapy-built frames, its kernel filter program run by a tiny
classic-BPF interpreter, and the Announcer's loop over a datagram socketpair (no root)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_lbnode import announce as A
from portico_lbnode.announce import Answer, Drop, DropReason, decide
from portico_lbnode.arpsock import Announcer, kernel_filter
from prometheus_client import REGISTRY
from scapy.layers.inet import IP as IPv4
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    in6_getnsma,
    in6_getnsmac,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet
from scapy.utils6 import inet_pton

MAC = bytes.fromhex("02aabbccdd01")
MAC_S = "02:aa:bb:cc:dd:01"
PEER = "02:11:22:33:44:55"
VIP4 = ipaddress.IPv4Address("198.18.201.10")
VIP6 = ipaddress.IPv6Address("fd00:201::10")
VIPS: frozenset[A.IP] = frozenset({VIP4, VIP6})
PEER4 = "198.18.200.2"
PEER6 = "fd00:200::2"


def who_has(target: str, op: int = 1, **ether: str) -> bytes:
    eth: dict[str, Any] = {"src": PEER, "dst": "ff:ff:ff:ff:ff:ff", **ether}
    return bytes(Ether(**eth) / ARP(op=op, hwsrc=PEER, psrc=PEER4, pdst=target))


def ns_frame(
    target: str, src: str = PEER6, hlim: int = 255, code: int = 0, sllao: bool = True
) -> bytes:
    group = in6_getnsma(inet_pton(socket.AF_INET6, target))
    dst = socket.inet_ntop(socket.AF_INET6, group)
    pkt: Packet = (
        Ether(src=PEER, dst=in6_getnsmac(group))
        / IPv6(src=src, dst=dst, hlim=hlim)
        / ICMPv6ND_NS(tgt=target, code=code)
    )
    if sllao:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=PEER)
    return bytes(pkt)


def answer(frame: bytes) -> Answer:
    got = decide(frame, VIPS, MAC)
    assert isinstance(got, Answer), got
    return got


def dropped(frame: bytes, vips: frozenset[A.IP] = VIPS) -> DropReason:
    got = decide(frame, vips, MAC)
    assert isinstance(got, Drop), got
    return got.reason


def checksum_verified(frame: bytes) -> bool:
    """Scapy recomputes the ICMPv6 checksum when the field is cleared; equal means right."""
    pkt = Ether(frame)
    sent = pkt[IPv6].payload.cksum
    del pkt[IPv6].payload.cksum
    return Ether(bytes(pkt))[IPv6].payload.cksum == sent


# -- ARP ---------------------------------------------------------------------------------------
def test_arp_request_for_vip_gets_is_at_from_our_mac() -> None:
    got = answer(who_has(str(VIP4)))
    assert got.vip == VIP4
    pkt = Ether(got.frame)
    assert (pkt.dst, pkt.src, pkt.type) == (PEER, MAC_S, 0x0806)
    arp = pkt[ARP]
    assert arp.op == 2  # is-at
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)
    assert (arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (MAC_S, str(VIP4), PEER, PEER4)
    assert len(got.frame) == 60  # padded to the Ethernet minimum


def test_arp_unicast_to_us_is_answered_but_not_to_another_host() -> None:
    assert answer(who_has(str(VIP4), dst=MAC_S)).vip == VIP4
    assert dropped(who_has(str(VIP4), dst="02:99:99:99:99:99")) is DropReason.OTHER_HOST


def test_arp_probe_is_answered_to_the_prober() -> None:
    probe = bytes(
        Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=PEER, psrc="0.0.0.0", pdst=str(VIP4))
    )
    arp = Ether(answer(probe).frame)[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2,
        MAC_S,
        str(VIP4),
        PEER,
        "0.0.0.0",
    )


def test_arp_for_an_address_not_served_is_not_ours() -> None:
    assert dropped(who_has("198.18.201.11")) is DropReason.NOT_OURS
    assert dropped(who_has(PEER4)) is DropReason.NOT_OURS
    # withdrawn: the same frame that was answered a moment ago
    assert dropped(who_has(str(VIP4)), frozenset({VIP6})) is DropReason.NOT_OURS


def test_arp_reply_is_dropped() -> None:
    assert dropped(who_has(str(VIP4), op=2)) is DropReason.NOT_ARP_REQUEST


def test_own_frames_are_dropped() -> None:
    assert dropped(who_has(str(VIP4), src=MAC_S)) is DropReason.OWN_FRAME
    for frame in A.gratuitous_arp(VIP4, MAC):
        assert dropped(frame) is DropReason.OWN_FRAME


@pytest.mark.parametrize("cut", [0, 5, 13, 14, 20, 41])
def test_truncated_arp_is_malformed(cut: int) -> None:
    assert dropped(who_has(str(VIP4))[:cut]) is DropReason.MALFORMED


def test_non_ethernet_arp_is_malformed() -> None:
    frame = bytes(
        Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / ARP(hwtype=6, psrc=PEER4, pdst=str(VIP4))
    )
    assert dropped(frame) is DropReason.MALFORMED


def test_other_ethertypes_are_unhandled() -> None:
    udp = Ether(src=PEER, dst=MAC_S) / IPv4(src=PEER4, dst=str(VIP4)) / UDP(dport=80)
    assert dropped(bytes(udp)) is DropReason.UNHANDLED_ETHERTYPE
    tagged = (
        Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=7) / ARP(psrc=PEER4, pdst=str(VIP4))
    )
    assert dropped(bytes(tagged)) is DropReason.UNHANDLED_ETHERTYPE


# -- NDP ---------------------------------------------------------------------------------------
def test_ns_for_vip_gets_solicited_override_na() -> None:
    got = answer(ns_frame(str(VIP6)))
    assert got.vip == VIP6
    pkt = Ether(got.frame)
    assert (pkt.dst, pkt.src, pkt.type) == (PEER, MAC_S, 0x86DD)
    ip6 = pkt[IPv6]
    assert (ip6.src, ip6.dst, ip6.hlim, ip6.nh, ip6.plen) == (str(VIP6), PEER6, 255, 58, 32)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt, na.code) == (0, 1, 1, str(VIP6), 0)
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == MAC_S
    assert checksum_verified(got.frame)


def test_ns_without_source_option_is_answered_to_ethernet_source() -> None:
    # a unicast reachability probe straight to our MAC
    frame = bytes(
        Ether(src=PEER, dst=MAC_S)
        / IPv6(src=PEER6, dst=str(VIP6), hlim=255)
        / ICMPv6ND_NS(tgt=str(VIP6))
    )
    pkt = Ether(answer(frame).frame)
    assert (pkt.dst, pkt[IPv6].dst, pkt[ICMPv6ND_NA].S) == (PEER, PEER6, 1)


def test_dad_ns_gets_all_nodes_na_without_solicited() -> None:
    pkt = Ether(answer(ns_frame(str(VIP6), src="::", sllao=False)).frame)
    assert (pkt.dst, pkt[IPv6].dst, pkt[IPv6].src) == ("33:33:00:00:00:01", "ff02::1", str(VIP6))
    assert (pkt[ICMPv6ND_NA].S, pkt[ICMPv6ND_NA].O) == (0, 1)
    assert checksum_verified(bytes(pkt))


def test_dad_ns_with_source_option_is_invalid() -> None:
    assert dropped(ns_frame(str(VIP6), src="::", sllao=True)) is DropReason.BAD_ICMP6


@pytest.mark.parametrize("hlim", [64, 254, 1])
def test_ns_that_crossed_a_router_is_dropped(hlim: int) -> None:
    assert dropped(ns_frame(str(VIP6), hlim=hlim)) is DropReason.BAD_ICMP6


def test_ns_with_bad_code_or_checksum_is_dropped() -> None:
    assert dropped(ns_frame(str(VIP6), code=1)) is DropReason.BAD_ICMP6
    frame = bytearray(ns_frame(str(VIP6)))
    frame[14 + 40 + 2] ^= 0x01  # checksum field
    assert dropped(bytes(frame)) is DropReason.BAD_ICMP6


def test_ns_option_of_length_zero_is_dropped() -> None:
    frame = ns_frame(str(VIP6), sllao=False)
    pkt = Ether(frame)
    pkt[IPv6].plen = None
    bad = Ether(bytes(pkt / ICMPv6NDOptSrcLLAddr(len=0, lladdr=PEER)))
    assert dropped(bytes(bad)) is DropReason.BAD_ICMP6


def test_ns_for_other_target_and_other_icmp6_are_dropped() -> None:
    assert dropped(ns_frame("fd00:201::11")) is DropReason.NOT_OURS
    na = Ether(src=PEER, dst="33:33:00:00:00:01") / IPv6(src=PEER6, dst="ff02::1", hlim=255)
    assert dropped(bytes(na / ICMPv6ND_NA(tgt=str(VIP6)))) is DropReason.NOT_NS
    udp = Ether(src=PEER, dst=MAC_S) / IPv6(src=PEER6, dst=str(VIP6)) / UDP(dport=53)
    assert dropped(bytes(udp)) is DropReason.NOT_NS


@pytest.mark.parametrize("cut", [14, 30, 54, 57, 70, 85])
def test_truncated_ns_is_malformed(cut: int) -> None:
    assert dropped(ns_frame(str(VIP6))[:cut]) is DropReason.MALFORMED


# -- announcements -----------------------------------------------------------------------------
def test_gratuitous_arp_request_and_reply_forms() -> None:
    request, reply = (Ether(f) for f in A.gratuitous_arp(VIP4, MAC))
    for pkt, op in ((request, 1), (reply, 2)):
        assert (pkt.dst, pkt.src) == ("ff:ff:ff:ff:ff:ff", MAC_S)
        arp = pkt[ARP]
        assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst) == (op, MAC_S, str(VIP4), str(VIP4))
    assert request[ARP].hwdst == "00:00:00:00:00:00"


def test_unsolicited_na() -> None:
    frame = A.unsolicited_na(VIP6, MAC)
    pkt = Ether(frame)
    assert (pkt.dst, pkt.src) == ("33:33:00:00:00:01", MAC_S)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (str(VIP6), "ff02::1", 255)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, str(VIP6))
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == MAC_S
    assert checksum_verified(frame)
    assert A.announcements(VIP6, MAC) == [frame]


@given(st.ip_addresses(v=6))
def test_solicited_node_mac_matches_scapy(vip: ipaddress.IPv6Address) -> None:
    want = in6_getnsmac(in6_getnsma(vip.packed))
    assert A.solicited_node_mac(vip) == bytes.fromhex(want.replace(":", ""))


# -- properties --------------------------------------------------------------------------------
def reference_ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=200))
def test_ones_sum_matches_word_loop(data: bytes) -> None:
    assert A._ones_sum(data) == reference_ones_sum(data)


@given(st.binary(max_size=120))
def test_decide_never_raises(frame: bytes) -> None:
    assert isinstance(decide(frame, VIPS, MAC), Answer | Drop)


v4s = st.ip_addresses(v=4, network="198.18.0.0/24")
v6s = st.ip_addresses(v=6, network="fd00:201::/120")


@given(st.frozensets(v4s | v6s, max_size=6), v4s | v6s)
def test_answers_exactly_for_served_targets(vips: frozenset[A.IP], target: A.IP) -> None:
    frame = who_has(str(target)) if target.version == 4 else ns_frame(str(target))
    got = decide(frame, vips, MAC)
    if target in vips:
        assert isinstance(got, Answer) and got.vip == target
    else:
        assert got == Drop(DropReason.NOT_OURS)


# -- the kernel filter, run by a classic BPF interpreter ------------------------------------
def run_bpf(program: list[tuple[int, int, int, int]], frame: bytes, vlan_tag: bool = False) -> int:
    a, pc = 0, 0
    for _ in range(len(program)):  # no backward jumps in cBPF: one pass is enough
        code, jt, jf, k = program[pc]
        if code in (0x20, 0x28, 0x30):
            if code == 0x20 and k >= 0x80000000:  # ancillary data (SKF_AD_OFF + n)
                assert k == (-0x1000 + 48) & 0xFFFFFFFF, "only VLAN_TAG_PRESENT is modelled"
                a = int(vlan_tag)
            else:
                size = {0x20: 4, 0x28: 2, 0x30: 1}[code]
                if k + size > len(frame):
                    return 0  # the kernel drops on an out-of-bounds load
                a = int.from_bytes(frame[k : k + size], "big")
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if a == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unmodelled opcode {code:#x}")
    raise AssertionError("fell off the program")


def test_kernel_filter_passes_only_arp_requests_and_ns() -> None:
    prog = kernel_filter()
    udp4 = bytes(Ether(src=PEER, dst=MAC_S) / IPv4(src=PEER4, dst=str(VIP4)) / UDP())
    udp6 = bytes(Ether(src=PEER, dst=MAC_S) / IPv6(src=PEER6, dst=str(VIP6)) / UDP())
    na = bytes(Ether() / IPv6(hlim=255) / ICMPv6ND_NA(tgt=str(VIP6)))
    passed = {
        "arp request": who_has("198.18.9.9"),
        "ns": ns_frame("fd00::99"),
        "dad ns": ns_frame(str(VIP6), src="::", sllao=False),
    }
    blocked = {
        "arp reply": who_has(str(VIP4), op=2),
        "udp4": udp4,
        "udp6": udp6,
        "na": na,
        "short": who_has(str(VIP4))[:19],
        "short ns": ns_frame(str(VIP6))[:54],
        "vlan": bytes(Ether() / Dot1Q() / ARP()),
    }
    for name, frame in passed.items():
        assert run_bpf(prog, frame) > 1500, name
    for name, frame in blocked.items():
        assert run_bpf(prog, frame) == 0, name
    # a tag stripped by the NIC: only the ancillary flag tells
    assert run_bpf(prog, who_has(str(VIP4)), vlan_tag=True) == 0


# -- the Announcer's loop on a socketpair -----------------------------------------------------
def frames_total(result: str, reason: str) -> float:
    labels = {"result": result, "reason": reason}
    return REGISTRY.get_sample_value("portico_gateway_announce_frames_total", labels) or 0.0


async def recv_frame(peer: socket.socket, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(peer, 2048), timeout)


async def wait_for(pred, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_announcer_answers_announces_and_withdraws() -> None:
    async def scenario() -> None:
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        ann = Announcer("test0", sock=ours, mac=MAC, garp_interval=0.02, garp_duration=0.05)
        runner = asyncio.create_task(ann.run())
        try:
            ann.set_vips({VIP4, VIP6})
            # 3 bursts (at 0, 0.02, 0.04): 2 ARP forms for the v4 VIP, one NA for the v6 one
            got = [await recv_frame(peer) for _ in range(9)]
            await wait_for(lambda: not ann._bursts)
            assert ann.stats["announced"] == 9
            assert sorted(got) == sorted(
                3 * [*A.gratuitous_arp(VIP4, MAC), A.unsolicited_na(VIP6, MAC)]
            )

            before = frames_total("dropped", "not_ours")
            peer.send(who_has(str(VIP4)))
            reply = Ether(await recv_frame(peer))
            assert (reply[ARP].op, reply[ARP].psrc, reply[ARP].hwsrc) == (2, str(VIP4), MAC_S)
            assert ann.stats["answered"] == 1

            ann.set_vips({VIP6})  # withdraw the v4 VIP: the next request is not answered
            peer.send(who_has(str(VIP4)))
            await wait_for(lambda: ann.stats["not_ours"] == 1)
            assert frames_total("dropped", "not_ours") == before + 1
            peer.send(ns_frame(str(VIP6)))
            assert Ether(await recv_frame(peer))[ICMPv6ND_NA].tgt == str(VIP6)
            assert ann.stats["answered"] == 2
        finally:
            ann.close()
            await asyncio.wait_for(runner, 2)
            peer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_withdrawn_vip_stops_its_announcements() -> None:
    async def scenario() -> None:
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        ann = Announcer("test0", sock=ours, mac=MAC, garp_interval=0.05, garp_duration=5.0)
        runner = asyncio.create_task(ann.run())
        try:
            ann.set_vips({VIP4})
            assert len([await recv_frame(peer), await recv_frame(peer)]) == 2  # first burst
            ann.set_vips(set())
            assert not ann._bursts
            await asyncio.sleep(0.3)  # six intervals: a live task would have sent 12 more
            assert ann.stats["announced"] == 2
            with pytest.raises(BlockingIOError):
                peer.recv(2048)
        finally:
            ann.close()
            await asyncio.wait_for(runner, 2)
            peer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def neighbour_replies(vip: str, protocol: str, kind: str) -> float:
    labels = {"vip": vip, "protocol": protocol, "kind": kind}
    value = REGISTRY.get_sample_value("portico_gateway_vip_neighbour_replies_total", labels)
    return value or 0.0


def test_replies_are_counted_per_vip_protocol_and_kind() -> None:
    v4, other, v6 = "198.18.213.1", "198.18.213.2", "fd00:213::1"

    async def scenario() -> None:
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.setblocking(False)
        ann = Announcer("test0", sock=ours, mac=MAC, garp_interval=0.02, garp_duration=0.0)
        runner = asyncio.create_task(ann.run())
        try:
            ann.set_vips({ipaddress.ip_address(v) for v in (v4, other, v6)})
            # one burst: the two ARP forms for each IPv4 VIP, one NA for the IPv6 one
            for _ in range(5):
                await recv_frame(peer)
            await wait_for(lambda: not ann._bursts)
            assert neighbour_replies(v4, "arp", "gratuitous") == 2
            assert neighbour_replies(v6, "ndp", "gratuitous") == 1
            for _ in range(3):
                peer.send(who_has(v4))
                await recv_frame(peer)
            peer.send(ns_frame(v6))
            await recv_frame(peer)
            peer.send(who_has("198.18.213.9"))  # not served: no answer, no count
            await wait_for(lambda: ann.stats["not_ours"] == 1)
            assert neighbour_replies(v4, "arp", "answer") == 3
            assert neighbour_replies(other, "arp", "answer") == 0
            assert neighbour_replies(v6, "ndp", "answer") == 1
            assert neighbour_replies(v6, "arp", "answer") == 0
            assert neighbour_replies("198.18.213.9", "arp", "answer") == 0
        finally:
            ann.close()
            await asyncio.wait_for(runner, 2)
            peer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))

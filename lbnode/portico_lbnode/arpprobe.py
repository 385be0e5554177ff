"""Asks every backend node "who has <your address>?" ten times a second and hands the answers
to ``neighbours`` (pure), which judges. The I/O only. IPv4: one AF_PACKET socket per interface
bound to ETH_P_ARP (so the kernel queues ARP frames only; a socket bound to one EtherType also
sees them after the interface's netdev ingress hook, as the IP stack does). IPv6 (a node known
by an IPv6 address only): one raw ICMPv6 socket per interface that lets only neighbour
advertisements in (ICMP6_FILTER); the solicitations go to the node's solicited-node multicast
group with the gateway's MAC as source link-layer option, hop limit 255 (RFC 4861), and the
kernel fills in the checksum.

The requests are RFC 5227 ARP probes (sender address 0.0.0.0): the node's kernel answers them
as any request for its address, and no node's ARP cache is written by them. They go unicast to
the node's MAC once known; after a request went unanswered, to the broadcast address (a node
whose NIC was replaced answers that).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from .neighbours import Neighbour, NeighbourSettings, answered, judge, sent

log = logging.getLogger("portico.lbnode.neighbours")

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa
ARP_REQUEST, ARP_REPLY = 1, 2
ND_SOLICIT, ND_ADVERT = 135, 136
ICMP6_FILTER = 1  # linux/icmpv6.h, at level IPPROTO_ICMPV6
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _received(sock: socket.socket, size: int, what: str) -> Iterator[bytes]:
    """What a non-blocking socket holds now, bounded: a flood must not hold the loop."""
    for _ in range(4096):
        try:
            yield sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("%s receive: %s", what, e)
            return


def probe_frame(mac: bytes, target: ipaddress.IPv4Address, eth_dst: bytes) -> bytes:
    arp = _ARP.pack(1, 0x0800, 6, 4, ARP_REQUEST, mac, b"\0" * 4, b"\0" * 6, target.packed)
    return eth_dst + mac + struct.pack("!H", ETH_P_ARP) + arp


def reply_sender(frame: bytes) -> tuple[ipaddress.IPv4Address, bytes] | None:
    """(sender address, sender MAC) of an ARP reply frame, None for anything else."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != b"\x08\x06":
        return None
    _h, ptype, hlen, plen, op, sha, spa, _tha, _tpa = _ARP.unpack_from(frame, 14)
    if op != ARP_REPLY or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return ipaddress.IPv4Address(spa), sha


def solicitation(mac: bytes, target: ipaddress.IPv6Address) -> bytes:
    """A neighbour solicitation for ``target`` (the ICMPv6 message; checksum left to the
    kernel) with our MAC as source link-layer address option."""
    return struct.pack("!BBHI", ND_SOLICIT, 0, 0, 0) + target.packed + b"\x01\x01" + mac


def solicited_node(target: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target.packed[13:])


def advertised_target(message: bytes) -> ipaddress.IPv6Address | None:
    """The target of a neighbour advertisement (an ICMPv6 message), None for anything else."""
    if len(message) < 24 or message[0] != ND_ADVERT or message[1] != 0:
        return None
    return ipaddress.IPv6Address(message[8:24])


def _advert_only_filter() -> bytes:
    """struct icmp6_filter: a set bit blocks its type; every type but 136 is blocked."""
    words = [0xFFFFFFFF] * 8
    words[ND_ADVERT >> 5] &= ~(1 << (ND_ADVERT & 31)) & 0xFFFFFFFF
    return struct.pack("8I", *words)


OnChange = Callable[[str, Neighbour], None]


class NeighbourProber:
    """The nodes given by ``set_targets`` are asked while ``run`` runs; ``state`` reads the
    verdicts and ``on_change`` hears of each new one."""

    def __init__(
        self,
        settings: NeighbourSettings,
        interfaces: Sequence[str],
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.interfaces = tuple(interfaces)
        self.on_change = on_change
        self._clock = clock
        self._targets: dict[str, IP] = {}
        self._by_ip: dict[IP, str] = {}
        self._states: dict[str, Neighbour] = {}
        self._macs: dict[str, bytes] = {}
        self._socks: list[tuple[socket.socket, bytes]] = []
        self._socks6: list[tuple[socket.socket, bytes, int]] = []  # socket, MAC, ifindex
        # A previous run's verdicts for nodes not (yet) targets; gone at the first targets.
        self._carried: dict[str, Neighbour] = {}
        self._targets_known = False

    @property
    def enabled(self) -> bool:
        return self.settings.interval > 0

    def state(self, node: str) -> Neighbour | None:
        return self._states.get(node)

    def unreachable(self, node: str) -> bool:
        s = self._states.get(node)
        return s is not None and s.reachable is False

    def states(self) -> Mapping[str, Neighbour]:
        """Every verdict, those carried over from a previous run included (for the report:
        its first write, before the targets are known, must not drop them)."""
        return {**self._carried, **self._states} if self._carried else self._states

    def carry_over(self, states: Mapping[str, Neighbour]) -> None:
        """A previous run's verdicts: each node starts from its own when it becomes
        a target (before its first verdict of this run), and stays out until it answers.
        Not when this run does not ask (``enabled`` False): nothing would ever take them back."""
        if not self.enabled:
            return
        for node, state in states.items():
            if node not in self._targets:
                if not self._targets_known:
                    self._carried[node] = state
            elif (cur := self._states.get(node)) is None or cur.reachable is None:
                self._states[node] = state

    def set_targets(self, addresses: Mapping[str, str]) -> None:
        """node -> address (ARP for IPv4, NDP for IPv6). A node whose address changed starts
        over without a verdict."""
        want: dict[str, IP] = {node: ipaddress.ip_address(a) for node, a in addresses.items()}
        for node in list(self._states):
            if want.get(node) != self._targets.get(node):
                del self._states[node]
                self._macs.pop(node, None)
        self._targets = want
        self._by_ip = {ip: node for node, ip in want.items()}
        for node in want:
            carried = self._carried.pop(node, None)
            if carried is not None and node not in self._states:
                self._states[node] = carried
        self._carried.clear()  # no longer backends: nothing to say of them
        self._targets_known = True

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        if not self.enabled:
            return
        for dev in self.interfaces:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((dev, ETH_P_ARP))
            sock.setblocking(False)
            mac = bytes(sock.getsockname()[4])
            self._socks.append((sock, mac))
            try:
                six = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            except OSError as e:  # IPv6 disabled on this host: IPv4 nodes are still asked
                log.warning("no NDP on %s: %s", dev, e)
                continue
            six.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _advert_only_filter())
            six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            six.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            six.setblocking(False)
            self._socks6.append((six, mac, socket.if_nametoindex(dev)))
        try:
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while True:
                self.tick()
                next_at += self.settings.interval
                delay = next_at - loop.time()
                if delay < 0:  # starved: no burst of catching up, just go on from now
                    next_at, delay = loop.time(), 0.0
                await asyncio.sleep(delay)
        finally:
            for sock, _mac in self._socks:
                sock.close()
            for sock, _mac, _ifindex in self._socks6:
                sock.close()
            self._socks.clear()
            self._socks6.clear()

    def tick(self) -> None:
        """Read every answer waiting, judge, then ask again."""
        now = self._clock()
        self._read(now)
        for node in self._targets:
            old = self._states.get(node) or Neighbour()
            new = judge(old, now, self.settings)
            self._states[node] = new
            if new.reachable != old.reachable:
                # The verdict's exact time, for the benchmarks (bench/deadnode.py).
                timing = {"timing": {"node": node, "reachable": new.reachable, "at": now}}
                if new.reachable is False:
                    log.warning("node %s: no ARP/NDP answer", node, extra=timing)
                else:
                    log.info("node %s answers ARP/NDP", node, extra=timing)
                if self.on_change is not None:
                    self.on_change(node, new)
        for node, ip in self._targets.items():
            st = self._states[node]
            try:
                if isinstance(ip, ipaddress.IPv4Address):
                    mac = self._macs.get(node)
                    dst = mac if mac is not None and not st.outstanding else BROADCAST
                    for sock, own in self._socks:
                        sock.send(probe_frame(own, ip, dst))
                else:
                    group = str(solicited_node(ip))
                    for six, own, ifindex in self._socks6:
                        six.sendto(solicitation(own, ip), (group, 0, 0, ifindex))
            except OSError as e:  # a full queue, a link going down: a missed request
                log.debug("neighbour request to %s: %s", node, e)
            self._states[node] = sent(st, now, self.settings)

    def _read(self, now: float) -> None:
        for sock, _own in self._socks:
            for frame in _received(sock, 128, "ARP"):
                got = reply_sender(frame)
                if got is None:
                    continue
                node = self._by_ip.get(got[0])
                if node is None:
                    continue
                self._macs[node] = got[1]
                self._states[node] = answered(self._states.get(node) or Neighbour(), now)
        for six, _own, _ifindex in self._socks6:
            for message in _received(six, 256, "NDP"):
                target = advertised_target(message)
                node = self._by_ip.get(target) if target is not None else None
                if node is not None:
                    self._states[node] = answered(self._states.get(node) or Neighbour(), now)

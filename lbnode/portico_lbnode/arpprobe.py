"""Asks every backend node "who has <your IPv4 address>?" ten times a second and hands the
answers to ``neighbours`` (pure), which judges. The I/O only: one AF_PACKET socket per
interface bound to ETH_P_ARP (so the kernel queues ARP frames only; a socket bound to one
EtherType also sees them after the interface's netdev ingress hook, as the IP stack does).

The requests are RFC 5227 ARP probes (sender address 0.0.0.0): the node's kernel answers them
as any request for its address, and no node's ARP cache is written by them. They go unicast to
the node's MAC once known; after a request went unanswered, to the broadcast address (a node
whose NIC was replaced answers that). Nodes known only by an IPv6 address are not asked: the
HTTP probe alone judges them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence

from .neighbours import Neighbour, NeighbourSettings, answered, judge, sent

log = logging.getLogger("portico.lbnode.neighbours")

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa
ARP_REQUEST, ARP_REPLY = 1, 2


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
        self._targets: dict[str, ipaddress.IPv4Address] = {}
        self._by_ip: dict[ipaddress.IPv4Address, str] = {}
        self._states: dict[str, Neighbour] = {}
        self._macs: dict[str, bytes] = {}
        self._socks: list[tuple[socket.socket, bytes]] = []

    @property
    def enabled(self) -> bool:
        return self.settings.interval > 0

    def state(self, node: str) -> Neighbour | None:
        return self._states.get(node)

    def unreachable(self, node: str) -> bool:
        s = self._states.get(node)
        return s is not None and s.reachable is False

    def states(self) -> Mapping[str, Neighbour]:
        return self._states

    def set_targets(self, addresses: Mapping[str, str]) -> None:
        """node -> address; IPv6 addresses are not asked. A node whose address changed starts
        over without a verdict."""
        want: dict[str, ipaddress.IPv4Address] = {}
        for node, address in addresses.items():
            ip = ipaddress.ip_address(address)
            if isinstance(ip, ipaddress.IPv4Address):
                want[node] = ip
        for node in list(self._states):
            if want.get(node) != self._targets.get(node):
                del self._states[node]
                self._macs.pop(node, None)
        self._targets = want
        self._by_ip = {ip: node for node, ip in want.items()}

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        if not self.enabled:
            return
        for dev in self.interfaces:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((dev, ETH_P_ARP))
            sock.setblocking(False)
            self._socks.append((sock, bytes(sock.getsockname()[4])))
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
            self._socks.clear()

    def tick(self) -> None:
        """Read every answer waiting, judge, then ask again."""
        now = self._clock()
        self._read(now)
        for node in self._targets:
            old = self._states.get(node) or Neighbour()
            new = judge(old, now, self.settings)
            self._states[node] = new
            if new.reachable != old.reachable:
                if new.reachable is False:
                    log.warning("node %s: no ARP answer to %d requests", node, len(old.outstanding))
                else:
                    log.info("node %s answers ARP", node)
                if self.on_change is not None:
                    self.on_change(node, new)
        for node, ip in self._targets.items():
            st = self._states[node]
            mac = self._macs.get(node)
            dst = mac if mac is not None and not st.outstanding else BROADCAST
            for sock, own in self._socks:
                try:
                    sock.send(probe_frame(own, ip, dst))
                except OSError as e:  # a full queue, a link going down: a missed request
                    log.debug("ARP request to %s: %s", node, e)
            self._states[node] = sent(st, now, self.settings)

    def _read(self, now: float) -> None:
        for sock, _own in self._socks:
            for _ in range(4096):  # bounded: a flood of ARP must not hold the loop
                try:
                    frame = sock.recv(128)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log.warning("ARP receive: %s", e)
                    break
                got = reply_sender(frame)
                if got is None:
                    continue
                node = self._by_ip.get(got[0])
                if node is None:
                    continue
                self._macs[node] = got[1]
                self._states[node] = answered(self._states.get(node) or Neighbour(), now)

"""The gateway's ARP/NDP announcer on one interface: a raw AF_PACKET socket and asyncio.

The socket carries a classic BPF program, so the kernel hands this process only ARP requests
and ICMPv6 neighbour solicitations, not every frame of a busy LAN. Each frame goes through the
pure ``announce.decide``; answers go out on the same socket, drops are counted by reason.

For NDP the interface must accept the solicited-node multicast frames (33:33:ff:xx:xx:xx) of
the served IPv6 VIPs. The socket joins exactly those groups (PACKET_ADD_MEMBERSHIP with
PACKET_MR_MULTICAST) rather than setting PACKET_MR_ALLMULTI: all-multicast would make the NIC
accept every multicast frame of the segment (mDNS, every other host's solicited-node groups)
and the kernel would have to look at all of them. Memberships belong to the socket, so the
kernel drops them when the process exits, however it exits.

Run as ``python -m portico_lbnode.arpsock --interface IF --vip IP ...``; it then reads control
lines on stdin (``vips IP ...`` replaces the served set, ``stats`` prints counters) and answers
each with a JSON line on stdout. The lab tests and the benchmark drive it that way.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import json
import logging
import socket
import struct
import sys
from collections.abc import Set as AbstractSet

from prometheus_client import Counter

from .announce import (
    GARP_DURATION,
    GARP_INTERVAL,
    Answer,
    DropReason,
    announcements,
    decide,
    solicited_node_mac,
)
from .model import IP

log = logging.getLogger("portico.lbnode.announce")

# linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h (the socket module lacks most).
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
_PACKET_MREQ = struct.Struct("iHH8s")  # ifindex, type, address length, address

FRAMES = Counter(
    "portico_gateway_announce_frames_total",
    "Frames the ARP/NDP announcer received or sent, by result and drop reason",
    ["result", "reason"],
)
# One series per VIP, protocol and kind the process has sent for (VIPs that left keep theirs,
# so a VIP that comes back does not reset it).
NEIGHBOUR_REPLIES = Counter(
    "portico_gateway_vip_neighbour_replies_total",
    "ARP replies and NDP neighbour advertisements sent for the VIP: kind=answer to a request "
    "or solicitation, kind=gratuitous for the announcements of a newly served VIP",
    ["vip", "protocol", "kind"],
)
NEIGHBOUR_PROTOCOL = {4: "arp", 6: "ndp"}

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20  # A <- u32 at k
_LD_H_ABS = 0x28  # A <- u16 at k
_LD_B_ABS = 0x30  # A <- u8 at k
_JEQ_K = 0x15  # if A == k: skip jt instructions, else skip jf
_RET_K = 0x06  # accept k bytes of the frame (0: drop it)
_SKF_AD_VLAN_TAG_PRESENT = (-0x1000 + 48) & 0xFFFFFFFF  # ancillary: frame had an 802.1Q tag
_ACCEPT_ALL = 0x40000


def kernel_filter() -> list[tuple[int, int, int, int]]:
    """The socket's BPF program as (code, jt, jf, k); offsets are from the Ethernet header.

    Jumps are relative to the next instruction: ``jf=10`` at 1 lands on 12.
    """
    return [
        # 0: A <- "had a VLAN tag". A NIC that strips tags in hardware shows tagged frames as
        #    untagged; answering them untagged would go to the wrong VLAN. Serve a VLAN by
        #    running the announcer on its sub-interface instead.
        (_LD_W_ABS, 0, 0, _SKF_AD_VLAN_TAG_PRESENT),
        (_JEQ_K, 0, 10, 0),  # 1: tagged -> 12 (drop)
        (_LD_H_ABS, 0, 0, 12),  # 2: A <- EtherType
        (_JEQ_K, 0, 2, 0x0806),  # 3: ARP -> 4, else -> 6
        (_LD_H_ABS, 0, 0, 20),  # 4: A <- ARP opcode
        (_JEQ_K, 5, 6, 1),  # 5: request -> 11 (accept), else -> 12 (drop)
        (_JEQ_K, 0, 5, 0x86DD),  # 6: IPv6 -> 7, else -> 12 (drop)
        (_LD_B_ABS, 0, 0, 20),  # 7: A <- IPv6 next header
        (_JEQ_K, 0, 3, 58),  # 8: ICMPv6 -> 9, else -> 12 (drop)
        (_LD_B_ABS, 0, 0, 54),  # 9: A <- ICMPv6 type (14 + 40)
        (_JEQ_K, 0, 1, 135),  # 10: neighbour solicitation -> 11, else -> 12 (drop)
        (_RET_K, 0, 0, _ACCEPT_ALL),  # 11: accept the whole frame
        (_RET_K, 0, 0, 0),  # 12: drop
    ]


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the kernel copies
    # the program during the call, so buf only has to outlive it.
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_packet_socket(interface: str, *, filtered: bool = True) -> socket.socket:
    """A raw AF_PACKET socket on ``interface``, with the kernel filter unless told otherwise."""
    # Protocol 0 receives nothing yet: the filter is in place before the first frame is queued
    # (created with ETH_P_ALL, frames would arrive unfiltered until the setsockopt).
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if filtered:
            attach_filter(sock, kernel_filter())
        try:
            # Our own transmitted frames would loop back to the tap; decide() also drops them
            # by source MAC (OWN_FRAME) where this option does not exist.
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            log.info("PACKET_IGNORE_OUTGOING unsupported; own frames are dropped by MAC")
        sock.bind((interface, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def packet_statistics(sock: socket.socket) -> tuple[int, int]:
    """(frames that passed the filter, of which dropped for lack of buffer) since last asked."""
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return packets, drops


def _membership(sock: socket.socket, ifindex: int, mac: bytes, add: bool) -> None:
    mreq = _PACKET_MREQ.pack(ifindex, PACKET_MR_MULTICAST, len(mac), mac)
    opt = PACKET_ADD_MEMBERSHIP if add else PACKET_DROP_MEMBERSHIP
    sock.setsockopt(SOL_PACKET, opt, mreq)


class Announcer:
    """Answers ARP/NDP for the served VIPs on one interface, and announces newly served ones.

    All methods are called from the event loop's thread. ``sock`` and ``mac`` are for tests
    that stand in a datagram socketpair for the AF_PACKET socket.
    """

    def __init__(
        self,
        interface: str,
        *,
        sock: socket.socket | None = None,
        mac: bytes | None = None,
        garp_interval: float = GARP_INTERVAL,
        garp_duration: float = GARP_DURATION,
    ) -> None:
        self.interface = interface
        self._packet = sock is None
        if sock is None:
            sock = open_packet_socket(interface)
            mac = mac or bytes(sock.getsockname()[4])  # the bound interface's address
        if mac is None or len(mac) != 6:
            raise ValueError("an Ethernet MAC of 6 bytes is needed")
        self.mac = mac
        self._sock = sock
        self._sock.setblocking(False)
        self._ifindex = socket.if_nametoindex(interface) if self._packet else 0
        self._interval = garp_interval
        self._duration = garp_duration
        self._vips: frozenset[IP] = frozenset()
        self._groups: frozenset[bytes] = frozenset()
        self._bursts: dict[IP, asyncio.Task[None]] = {}
        self._reading = False
        self._closed = asyncio.Event()
        self.stats: dict[str, int] = {"answered": 0, "announced": 0, "send_errors": 0}
        self.stats.update({r.value: 0 for r in DropReason})

    @property
    def vips(self) -> frozenset[IP]:
        return self._vips

    def set_vips(self, vips: AbstractSet[IP]) -> None:
        """Serve exactly ``vips`` from now on: removed ones are not answered from this call on
        (and their announcements stop), added ones get gratuitous bursts."""
        new = frozenset(vips)
        added, removed = new - self._vips, self._vips - new
        self._vips = new
        for vip in removed:
            task = self._bursts.pop(vip, None)
            if task:
                task.cancel()
        self._update_groups()
        for vip in added:
            self._bursts[vip] = asyncio.get_running_loop().create_task(self._announce(vip))

    def _update_groups(self) -> None:
        if not self._packet:
            return
        groups = frozenset(
            solicited_node_mac(v) for v in self._vips if isinstance(v, ipaddress.IPv6Address)
        )
        for g in groups - self._groups:
            _membership(self._sock, self._ifindex, g, add=True)
        for g in self._groups - groups:
            _membership(self._sock, self._ifindex, g, add=False)
        self._groups = groups

    async def _announce(self, vip: IP) -> None:
        frames = announcements(vip, self.mac)
        replies = NEIGHBOUR_REPLIES.labels(str(vip), NEIGHBOUR_PROTOCOL[vip.version], "gratuitous")
        # At 0, 1.1, ... up to the duration: 5 bursts with MetalLB's figures.
        bursts = int(self._duration / self._interval) + 1
        try:
            for i in range(bursts):
                for frame in frames:
                    if self._send(frame):
                        self.stats["announced"] += 1
                        FRAMES.labels("announced", "").inc()
                        replies.inc()
                if i + 1 < bursts:
                    await asyncio.sleep(self._interval)
        finally:
            if self._bursts.get(vip) is asyncio.current_task():
                del self._bursts[vip]

    def _send(self, frame: bytes) -> bool:
        try:
            self._sock.send(frame)
            return True
        except OSError as e:  # a full transmit queue (ENOBUFS/EAGAIN), a link going down
            self.stats["send_errors"] += 1
            FRAMES.labels("send_error", "").inc()
            log.debug("send on %s failed: %s", self.interface, e)
            return False

    def _on_readable(self, budget: int = 256) -> None:
        # Bounded per wakeup so a flood cannot starve the loop's other tasks (health checks).
        for _ in range(budget):
            try:
                frame = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("receive on %s failed: %s", self.interface, e)
                return
            self.handle(frame)

    def handle(self, frame: bytes) -> None:
        result = decide(frame, self._vips, self.mac)
        if isinstance(result, Answer):
            if self._send(result.frame):
                self.stats["answered"] += 1
                FRAMES.labels("answered", "").inc()
                vip = result.vip
                NEIGHBOUR_REPLIES.labels(str(vip), NEIGHBOUR_PROTOCOL[vip.version], "answer").inc()
        else:
            self.stats[result.reason.value] += 1
            FRAMES.labels("dropped", result.reason.value).inc()

    async def run(self) -> None:
        """Answers until ``close()``."""
        if self._closed.is_set():
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._on_readable)
        self._reading = True
        try:
            await self._closed.wait()
        finally:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._sock.fileno())

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._stop_reading()
        for task in self._bursts.values():
            task.cancel()
        self._bursts.clear()
        self._vips = frozenset()
        self._sock.close()  # also leaves the multicast groups
        self._closed.set()


# -- the process entry used by the lab tests and the benchmark -------------------------------
def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _control(announcer: Announcer) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        if cmd == "vips":
            announcer.set_vips({ipaddress.ip_address(a) for a in args})
            _emit({"vips": sorted(str(v) for v in announcer.vips)})
        elif cmd == "stats":
            _emit({"stats": announcer.stats})
    announcer.close()  # stdin closed: the parent is done with us


async def _main(interface: str, vips: list[str]) -> None:
    announcer = Announcer(interface)
    announcer.set_vips({ipaddress.ip_address(v) for v in vips})
    _emit({"ready": True, "interface": interface, "mac": announcer.mac.hex(":")})
    control = asyncio.create_task(_control(announcer))
    try:
        await announcer.run()
    finally:
        control.cancel()
        announcer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Portico gateway ARP/NDP announcer")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--vip", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(args.interface, args.vip))


if __name__ == "__main__":
    main()

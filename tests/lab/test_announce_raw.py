"""The ARP/NDP announcer on a real veth, against real Linux neighbours.

Two namespaces of our own joined by a veth pair: the announcer runs in ``a`` as its own process
(``python -m portico_lbnode.arpsock``, driven over stdin), and ``b`` plays a host on the LAN:
its kernel resolves the VIPs, and a raw-socket probe sends scapy-built requests and collects
what comes back. The VIPs are on no interface of ``a``, so every answer is the announcer's.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

pytestmark = pytest.mark.lab

NS_A = f"ptcT-ann-a-{os.getpid()}"
NS_B = f"ptcT-ann-b-{os.getpid()}"
A4, B4 = "198.18.200.1", "198.18.200.2"
A6, B6 = "fd00:200::1", "fd00:200::2"
VIP4, VIP6 = "198.18.201.10", "fd00:201::10"

# Sends the frames given in hex (spaced 0.1 s) from the interface and prints, as JSON, the hex
# of every frame received until `wait` seconds after the last one.
_PROBE = r"""
import json, select, socket, sys, time
dev, wait, frames = sys.argv[1], float(sys.argv[2]), [bytes.fromhex(h) for h in sys.argv[3:]]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 3))
got = []
def drain(until):
    while (left := until - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0]:
            data, addr = s.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:
                got.append(data.hex())
for f in frames:
    s.send(f)
    drain(time.monotonic() + 0.1)
drain(time.monotonic() + wait)
print(json.dumps(got))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def in_b(*argv: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", NS_B, *argv)


def link_mac(ns: str, dev: str) -> str:
    return str(json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]["address"])


@dataclass(frozen=True)
class Pair:
    a_mac: str
    b_mac: str


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    try:
        sh("ip", "netns", "add", NS_A)
        sh("ip", "netns", "add", NS_B)
        sh(
            "ip",
            "-n",
            NS_A,
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            NS_B,
        )
        for ns, dev, v4, v6 in ((NS_A, "va", A4, A6), (NS_B, "vb", B4, B6)):
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # b reaches the VIPs on the link, as a router or host on the gateway's segment does
        sh("ip", "-n", NS_B, "route", "add", "198.18.201.0/24", "dev", "vb")
        sh("ip", "-n", NS_B, "-6", "route", "add", "fd00:201::/64", "dev", "vb")
        pair = Pair(link_mac(NS_A, "va"), link_mac(NS_B, "vb"))
    except Exception as e:
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "del", ns, check=False)
        pytest.fail(f"cannot build the namespaces: {e}", pytrace=False)
    try:
        yield pair
    finally:
        for ns in (NS_A, NS_B):  # deleting a namespace deletes its end of the veth
            sh("ip", "netns", "del", ns, check=False)


class AnnouncerProc:
    """The announcer process in namespace a, and its stdin/stdout control channel."""

    def __init__(self, vips: list[str]) -> None:
        argv = ["ip", "netns", "exec", NS_A, sys.executable, "-m", "portico_lbnode.arpsock"]
        argv += ["--interface", "va", *(a for v in vips for a in ("--vip", v))]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.hello = self.read_line()

    def read_line(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError("the announcer did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the announcer exited: {self.stderr()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return dict(json.loads(line))

    def control(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read_line()

    def stats(self) -> dict[str, int]:
        return dict(self.control("stats")["stats"])

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # EOF: the announcer closes its socket and exits
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._sel.close()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.fixture
def announcer(pair: Pair) -> Iterator[Callable[[list[str]], AnnouncerProc]]:
    started: list[AnnouncerProc] = []
    sh("ip", "-n", NS_B, "neigh", "flush", "dev", "vb")

    def start(vips: list[str]) -> AnnouncerProc:
        proc = AnnouncerProc(vips)
        started.append(proc)
        assert proc.hello["mac"] == pair.a_mac
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def probe(frames: list[bytes], wait: float = 0.6) -> list[Ether]:
    res = in_b(sys.executable, "-S", "-c", _PROBE, "vb", str(wait), *(f.hex() for f in frames))
    return [Ether(bytes.fromhex(h)) for h in json.loads(res.stdout)]


def who_has(pair: Pair, target: str) -> bytes:
    eth = Ether(src=pair.b_mac, dst="ff:ff:ff:ff:ff:ff")
    return bytes(eth / ARP(op=1, hwsrc=pair.b_mac, psrc=B4, pdst=target))


def replies_for(got: list[Ether], target: str) -> list[str]:
    """The MACs that answered b's who-has for ``target`` (gratuitous frames excluded)."""
    return [
        p[ARP].hwsrc
        for p in got
        if ARP in p and p[ARP].op == 2 and p[ARP].psrc == target and p[ARP].pdst == B4
    ]


def link_groups() -> str:
    return sh("ip", "-n", NS_A, "maddr", "show", "dev", "va").stdout


def neighbour(address: str) -> dict[str, Any] | None:
    rows = json.loads(sh("ip", "-n", NS_B, "-j", "neigh", "show", address, "dev", "vb").stdout)
    return dict(rows[0]) if rows else None


def wait_neighbour(address: str, mac: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = neighbour(address)
        if row and row.get("lladdr") == mac:
            return row
        assert time.monotonic() < deadline, f"{address} never reached {mac} in b: {row}"
        time.sleep(0.05)


def test_arp_for_vip_answered_by_a_only_and_never_for_others(pair: Pair, announcer) -> None:
    ann = announcer([VIP4, VIP6])
    got = probe(
        [who_has(pair, VIP4) for _ in range(3)]
        + [who_has(pair, "198.18.201.99") for _ in range(3)]
        + [who_has(pair, A4)]  # a's kernel answers for its own address: the probe can hear
    )
    assert replies_for(got, VIP4) == 3 * [pair.a_mac]
    assert all(
        p[Ether].src == pair.a_mac and p[Ether].dst == pair.b_mac
        for p in got
        if ARP in p and p[ARP].pdst == B4
    )
    assert replies_for(got, "198.18.201.99") == []
    assert replies_for(got, A4) == [pair.a_mac]
    stats = ann.stats()
    assert stats["answered"] == 3
    # Three for .99, one for a's own address, and any the two kernels sent meanwhile.
    assert stats["not_ours"] >= 4


def test_b_kernel_resolves_both_vips_to_a(pair: Pair, announcer) -> None:
    announcer([VIP4, VIP6])
    # any datagram makes b's kernel resolve the next hop: ARP, and NS to the solicited-node group
    send = "import socket,sys; socket.socket(int(sys.argv[2]), 2).sendto(b'x', (sys.argv[1], 9))"
    in_b(sys.executable, "-S", "-c", send, VIP4, "2")
    in_b(sys.executable, "-S", "-c", send, VIP6, "10")
    for vip in (VIP4, VIP6):
        row = wait_neighbour(vip, pair.a_mac)
        assert row["state"] != ["FAILED"], row


def test_ns_from_b_gets_one_solicited_na(pair: Pair, announcer) -> None:
    ann = announcer([VIP6])
    ns = (
        Ether(src=pair.b_mac, dst="33:33:ff:00:00:10")
        / IPv6(src=B6, dst="ff02::1:ff00:10", hlim=255)
        / ICMPv6ND_NS(tgt=VIP6)
        / ICMPv6NDOptSrcLLAddr(lladdr=pair.b_mac)
    )
    got = probe([bytes(ns), bytes(ns)])
    nas = [p for p in got if ICMPv6ND_NA in p and p[ICMPv6ND_NA].S == 1]
    assert len(nas) == 2
    for na in nas:
        assert (na.src, na.dst, na[IPv6].src, na[IPv6].dst) == (pair.a_mac, pair.b_mac, VIP6, B6)
        assert (na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].O, na[IPv6].hlim) == (VIP6, 1, 255)
    assert ann.stats()["answered"] == 2
    # the socket joined the VIP's solicited-node group (veth passes every multicast frame, a
    # real NIC only the groups it was told), and leaves it when the VIP is withdrawn
    assert "33:33:ff:00:00:10" in link_groups()
    ann.control("vips")
    assert "33:33:ff:00:00:10" not in link_groups()


def test_withdrawn_vip_is_no_longer_answered(pair: Pair, announcer) -> None:
    ann = announcer([VIP4])
    assert replies_for(probe([who_has(pair, VIP4)]), VIP4) == [pair.a_mac]
    assert ann.control("vips") == {"vips": []}
    got = probe([who_has(pair, VIP4), who_has(pair, VIP4), who_has(pair, A4)])
    assert replies_for(got, VIP4) == []
    assert replies_for(got, A4) == [pair.a_mac]
    assert ann.stats()["not_ours"] == 3


def test_gratuitous_announcements_update_b_without_asking(pair: Pair, announcer) -> None:
    vip4, vip6 = "198.18.201.20", "fd00:201::20"
    # Linux keeps unsolicited ARP only with arp_accept, and (RFC 9131) unsolicited NA only
    # with accept_untracked_na on a forwarding interface.
    for key in ("ipv4.conf.all.arp_accept", "ipv4.conf.vb.arp_accept"):
        in_b("sysctl", "-qw", f"net.{key}=1")
    for key in ("ipv6.conf.vb.forwarding", "ipv6.conf.vb.accept_untracked_na"):
        in_b("sysctl", "-qw", f"net.{key}=1")
    try:
        ann = announcer([])
        assert neighbour(vip4) is None and neighbour(vip6) is None
        assert ann.control(f"vips {vip4} {vip6}") == {"vips": sorted([vip4, vip6])}
        for vip in (vip4, vip6):
            # STALE: learned from an announcement; b never asked (it would be REACHABLE)
            assert wait_neighbour(vip, pair.a_mac)["state"] == ["STALE"]
    finally:
        for key in ("ipv4.conf.all.arp_accept", "ipv4.conf.vb.arp_accept"):
            in_b("sysctl", "-qw", f"net.{key}=0")
        for key in ("ipv6.conf.vb.forwarding", "ipv6.conf.vb.accept_untracked_na"):
            in_b("sysctl", "-qw", f"net.{key}=0")

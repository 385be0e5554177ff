"""The gateway's per-VIP counters against the lab, as Prometheus reads them from its
``--metrics-port``: packets and bytes it forwarded for each VIP (nft counters in its table,
``vipstats``), and ARP replies and neighbour advertisements it sent for each (``arpsock``).
Traffic from client-1 to VIPs of this module's own pool.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from collections.abc import Iterator

import pytest
from portico_lab.lab import Lab
from portico_lab.procs import Proc
from portico_lbnode.vipstats import counter_name
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from .dataplane_harness import (
    answered,
    create,
    deleting_services,
    family_spec,
    http,
    running_agents,
    running_gateway,
    running_operator,
)
from .operator_harness import Api, OperatorProcess, wait_for

pytestmark = pytest.mark.lab

GATEWAY = "gw-1"
CLIENT = "client-1"
METRICS_PORT = 9475  # the gateway's --metrics-port, in its namespace
BLOCK = 248  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "vipstats", BLOCK, "op-vipstats") as op:
        yield op


@pytest.fixture(scope="module")
def gateway(lab: Lab, operator: OperatorProcess) -> Iterator[Proc]:
    with (
        running_agents(lab),
        running_gateway(lab, GATEWAY, "--metrics-port", str(METRICS_PORT)) as proc,
    ):
        wait_for(lambda: scrape(lab), "the gateway serves its metrics")
        yield proc


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def scrape(lab: Lab) -> str | None:
    """The gateway's /metrics, or None while it does not listen yet."""
    r = http(lab, GATEWAY, "127.0.0.1", METRICS_PORT, "/metrics")
    if r.get("error") == "refused":
        return None
    assert r.get("status") == 200, r
    return str(r["body"])


def metrics(lab: Lab, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The gateway's samples of ``name`` by the values of ``labels``."""
    body = scrape(lab)
    assert body is not None
    out = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", body, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        out[tuple(found[k] for k in labels)] = float(m[2])
    return out


def forwarded(lab: Lab) -> dict[str, tuple[float, float]]:
    """Packets and bytes per VIP."""
    packets = metrics(lab, "portico_gateway_vip_packets_total", "vip")
    octets = metrics(lab, "portico_gateway_vip_bytes_total", "vip")
    return {k[0]: (v, octets[k]) for k, v in packets.items()}


def replies(lab: Lab, vip: str, protocol: str, kind: str) -> float:
    by = ("vip", "protocol", "kind")
    return metrics(lab, "portico_gateway_vip_neighbour_replies_total", *by).get(
        (vip, protocol, kind), 0
    )


# N datagrams of S bytes to VIP:80 from the client, at most 2 s.
_DATAGRAMS = r"""
import socket, sys
host, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x" * size, (host, 80))
"""

# Frames (hex) sent from eth0, 20 ms apart.
_FRAMES = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for h in sys.argv[1:]:
    s.send(bytes.fromhex(h)); time.sleep(0.02)
"""


def send_frames(lab: Lab, frames: list[bytes]) -> None:
    argv = [sys.executable, "-S", "-c", _FRAMES, *(f.hex() for f in frames)]
    assert lab.exec(CLIENT, argv, timeout=10).returncode == 0


def client_mac(lab: Lab) -> str:
    out = lab.exec(CLIENT, ["ip", "-j", "link", "show", "eth0"], check=True).stdout
    return str(json.loads(out)[0]["address"])


def test_forwarded_packets_and_bytes_are_counted_per_vip(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(api, services, "vs-fwd-a")
    create(api, services, "vs-fwd-b")
    create(api, services, "vs-fwd-6", **family_spec(6))
    vips = {n: api.wait_ips(n)[0] for n in ("vs-fwd-a", "vs-fwd-b", "vs-fwd-6")}
    # Served end to end (UDP, what is sent below), so each datagram is forwarded.
    for name in ("vs-fwd-a", "vs-fwd-6"):
        wait_for(lambda v=vips[name]: answered(lab, CLIENT, v, "udp"), f"{name} answers", 60)
    before = wait_for(lambda: (f := forwarded(lab)) and set(vips.values()) <= set(f) and f, "all")
    n, size = 200, 1000
    for name in ("vs-fwd-a", "vs-fwd-6"):
        argv = [sys.executable, "-S", "-c", _DATAGRAMS, vips[name], str(n), str(size)]
        assert lab.exec(CLIENT, argv, timeout=10).returncode == 0
    a, six, b = vips["vs-fwd-a"], vips["vs-fwd-6"], vips["vs-fwd-b"]
    header = {a: 28, six: 48}  # IP and UDP headers: counted, the Ethernet header not

    def grown() -> dict[str, tuple[float, float]] | None:
        f = forwarded(lab)
        done = all(f[v][0] >= before[v][0] + n for v in (a, six))
        return f if done else None

    after = wait_for(grown, "the counters took the datagrams", 10)
    for v in (a, six):
        assert after[v][1] - before[v][1] >= n * (size + header[v]), (v, before[v], after[v])
    assert after[b] == before[b]  # nothing was sent to the other VIP


def kernel_counter(lab: Lab, vip: str) -> tuple[int, int]:
    """The handle and packets of the VIP's counter object in the gateway's table."""
    name = counter_name(ipaddress.ip_address(vip))
    argv = ["nft", "-a", "-j", "list", "counter", "netdev", "portico-gw", name]
    out = json.loads(lab.exec(GATEWAY, argv, check=True).stdout)
    (obj,) = [i["counter"] for i in out["nftables"] if "counter" in i]
    return int(obj["handle"]), int(obj["packets"])


def ingress_rules(lab: Lab) -> int:
    argv = ["nft", "-j", "list", "chain", "netdev", "portico-gw", "ingress-eth0"]
    out = json.loads(lab.exec(GATEWAY, argv, check=True).stdout)
    return sum(1 for i in out["nftables"] if "rule" in i)


def test_a_full_replace_keeps_the_kernel_counter(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(api, services, "vs-keep")
    vip = api.wait_ips("vs-keep")[0]
    wait_for(lambda: answered(lab, CLIENT, vip, "udp"), "vs-keep answers", 60)
    argv = [sys.executable, "-S", "-c", _DATAGRAMS, vip, "50", "100"]
    assert lab.exec(CLIENT, argv, timeout=10).returncode == 0

    def counted() -> tuple[int, int] | None:
        c = kernel_counter(lab, vip)
        return c if c[1] >= 50 else None

    handle, packets = wait_for(counted, "the datagrams counted", 10)
    # Someone flushes a chain of the table: the gateway's verify (every 10 s) puts the whole
    # table back by a full replace, which must leave the counter object as it was.
    lab.exec(GATEWAY, ["nft", "flush", "chain", "netdev", "portico-gw", "ingress-eth0"], check=True)
    wait_for(lambda: ingress_rules(lab), "the table restored", 30)
    after = kernel_counter(lab, vip)
    assert after[0] == handle and after[1] >= packets, (handle, packets, after)


def test_arp_and_ndp_answers_are_counted_per_vip(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(api, services, "vs-nb-4")
    create(api, services, "vs-nb-6", **family_spec(6))
    v4, v6 = api.wait_ips("vs-nb-4")[0], api.wait_ips("vs-nb-6")[0]
    # Announced (a gratuitous burst went out): the gateway answers for them from then on.
    for vip, proto in ((v4, "arp"), (v6, "ndp")):
        wait_for(lambda v=vip, p=proto: replies(lab, v, p, "gratuitous") > 0, f"{vip} announced")
    mac = client_mac(lab)
    host = lab.host(CLIENT)
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(
        op=1, hwsrc=mac, psrc=str(host.ipv4), pdst=v4
    )
    group = in6_getnsma(socket.inet_pton(socket.AF_INET6, v6))  # the solicited-node group
    ns = (
        Ether(dst=in6_getnsmac(group), src=mac)
        / IPv6(src=str(host.ipv6), dst=socket.inet_ntop(socket.AF_INET6, group), hlim=255)
        / ICMPv6ND_NS(tgt=v6)
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )
    arp_before, ndp_before = replies(lab, v4, "arp", "answer"), replies(lab, v6, "ndp", "answer")
    k_arp, k_ndp = 5, 3
    send_frames(lab, [bytes(arp)] * k_arp + [bytes(ns)] * k_ndp)
    wait_for(
        lambda: (
            replies(lab, v4, "arp", "answer") >= arp_before + k_arp
            and replies(lab, v6, "ndp", "answer") >= ndp_before + k_ndp
        ),
        "the answers counted",
        10,
    )
    assert replies(lab, v4, "arp", "answer") == arp_before + k_arp
    assert replies(lab, v6, "ndp", "answer") == ndp_before + k_ndp
    assert replies(lab, v4, "ndp", "answer") == 0  # one protocol per family

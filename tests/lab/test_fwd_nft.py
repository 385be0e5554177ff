"""The gateway's forwarding table in a real gateway namespace, with real flows.

Namespaces of this test's own (no lab): a bridge in ``ptcT-fwd-lan-<pid>`` joins a gateway, three
nodes and a client on 198.18.210.0/24 (and fd00:210::/64). Each node holds the VIP on ``lo`` (a
stand-in for the node agent's DNAT) and answers on VIP:8080 with its name; the client routes
the VIPs via the gateway. The gateway's table is applied by a small driver holding one
FwdTable inside the gateway namespace (libnftables works in the caller's namespace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.lab

PID = os.getpid()
ROLES = ("lan", "gw", "n1", "n2", "n3", "cl")
NS = {r: f"ptcT-fwd-{r}-{PID}" for r in ROLES}
NODES = ("n1", "n2", "n3")
V4 = {"gw": "198.18.210.1", "n1": "198.18.210.11", "n2": "198.18.210.12", "n3": "198.18.210.13"}
V4["cl"] = "198.18.210.100"
V6 = {k: "fd00:210::" + v.rsplit(".", 1)[1] for k, v in V4.items()}
VIP, VIP6 = "198.18.211.10", "fd00:211::10"
SIZE = 7
SERVER_PORTS = (8080, 8081)
SPORTS = list(range(41000, 41200))  # 200 flows, one per client source port

# Holds one FwdTable; one JSON request per line on stdin, one JSON answer per line on stdout.
_DRIVER = r"""
import ipaddress as I, json, sys
from portico_lbnode.fwdnft import FwdTable
from portico_lbnode.fwdrules import FwdPort, render_fwd
table = FwdTable()
for line in sys.stdin:
    req = json.loads(line)
    out = {}
    try:
        if req["op"] == "apply":
            ports = [FwdPort(p["service"], I.ip_address(p["vip"]), p["protocol"], p["port"],
                             p["affinity"], tuple(I.ip_network(r) for r in p["ranges"]),
                             tuple(I.ip_address(a) for a in p["slots"])) for p in req["ports"]]
            rules = render_fwd(ports, req["devices"], req["size"], previous=table.applied)
            res = table.apply(rules)
            out = {"mode": res.mode, "commands": res.commands}
        elif req["op"] == "restart":  # a new process's handle: first apply is a full replace
            table = FwdTable()
        elif req["op"] == "verify":
            out = {"restored": table.verify()}
        elif req["op"] == "delete":
            table.delete()
        cur = table.current()
        out["in_kernel"] = None if cur is None else (
            table.applied is not None and cur.same_as(table.applied))
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""

_SERVER = r"""
import socket, struct, sys
name = sys.argv[1].encode() + b"\n"
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[2]))); s.listen(256)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        c.sendall(name)
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
"""

# One connection per source port; the client resets it (SO_LINGER 0) so that no TIME_WAIT
# keeps the port from the next round.
_CLIENT = r"""
import json, socket, struct, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sports = json.loads(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {}
for sp in sports:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(timeout)
    try:
        s.bind(("", sp)); s.connect((host, port))
        out[sp] = s.makefile().readline().strip() or "empty"
    except (socket.timeout, TimeoutError):
        out[sp] = "timeout"
    except OSError as e:
        out[sp] = f"error: {e}"
    s.close()
print(json.dumps(out))
"""


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", NS[ns], *argv] if ns else list(argv)
    res = subprocess.run(full, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: {res.stderr.strip()}")
    return res


class Driver:
    def __init__(self) -> None:
        argv = ["ip", "netns", "exec", NS["gw"], sys.executable, "-c", _DRIVER]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def __call__(self, op: str, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **req}) + "\n")
        line = self.proc.stdout.readline()
        assert line, f"driver died (rc {self.proc.poll()})"
        out: dict[str, Any] = json.loads(line)
        assert "error" not in out, out["error"]
        return out

    def apply(self, *ports: dict[str, Any]) -> dict[str, Any]:
        return self("apply", ports=list(ports), devices=["eth0"], size=SIZE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def fwd_port(vip: str, port: int, slots: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "service": kw.get("service", "ns/web"),
        "vip": vip,
        "protocol": "TCP",
        "port": port,
        "affinity": kw.get("affinity", False),
        "ranges": kw.get("ranges", []),
        "slots": slots,
    }


def flows(
    host: str, port: int = 8080, sports: list[int] = SPORTS, timeout: float = 2.0
) -> dict[int, str]:
    argv = [sys.executable, "-S", "-c", _CLIENT, host, str(port), str(timeout), json.dumps(sports)]
    res = sh(*argv, ns="cl")
    return {int(k): v for k, v in json.loads(res.stdout).items()}


def wait_listening(ns: str, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        listening = sh("ss", "-ltnH", ns=ns).stdout
        if all(f":{port} " in listening for port in SERVER_PORTS):
            return
        time.sleep(0.05)
    raise AssertionError(f"no servers on {SERVER_PORTS} in {ns}")


def wait_ipv6_settled(deadline_s: float = 10.0) -> None:
    """Until no address in any namespace is tentative (link-local DAD still running)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not any(sh("ip", "-6", "addr", "show", "tentative", ns=r).stdout for r in ROLES):
            return
        time.sleep(0.1)
    raise AssertionError("IPv6 addresses still tentative")


def _build() -> None:
    for ns in NS.values():
        res = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"cannot create netns {ns}: {res.stderr.strip()}", pytrace=False)
    sh("ip", "link", "add", "br0", "type", "bridge", ns="lan")
    sh("ip", "link", "set", "br0", "up", ns="lan")
    for role in ("gw", *NODES, "cl"):
        peer = f"p-{role}"
        sh(
            "ip",
            "link",
            "add",
            peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            NS[role],
            ns="lan",
        )
        sh("ip", "link", "set", peer, "master", "br0", "up", ns="lan")
        sh("ip", "link", "set", "lo", "up", ns=role)
        sh("ip", "link", "set", "eth0", "up", ns=role)
        sh("ip", "addr", "add", f"{V4[role]}/24", "dev", "eth0", ns=role)
        sh("ip", "addr", "add", f"{V6[role]}/64", "dev", "eth0", "nodad", ns=role)
    for n in NODES:
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "lo", ns=n)
        sh("ip", "addr", "add", f"{VIP6}/128", "dev", "lo", ns=n)
        # The usual DSR node settings: never answer ARP for the VIP, never use it in ARP.
        sh(
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            ns=n,
        )
    sh("ip", "route", "add", "198.18.211.0/24", "via", V4["gw"], ns="cl")
    sh("ip", "-6", "route", "add", "fd00:211::/64", "via", V6["gw"], ns="cl")


@pytest.fixture
def net() -> Iterator[Driver]:
    servers: list[subprocess.Popen[bytes]] = []
    driver: Driver | None = None
    try:
        _build()
        for n in NODES:
            for port in SERVER_PORTS:
                argv = ["ip", "netns", "exec", NS[n], sys.executable, "-S", "-c", _SERVER, n]
                servers.append(subprocess.Popen([*argv, str(port)], stdout=subprocess.DEVNULL))
        for n in NODES:
            wait_listening(n)
        wait_ipv6_settled()
        driver = Driver()
        yield driver
    finally:
        if driver is not None:
            driver.stop()
        for p in servers:
            p.kill()
            p.wait(timeout=10)
        for ns in NS.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def nodes_of(got: dict[int, str]) -> Counter[str]:
    return Counter(got.values())


def test_flows_are_forwarded_stably_and_survive_node_loss_and_reload(net: Driver) -> None:
    slots = [V4[n] for n in ("n1", "n2", "n3", "n1", "n2", "n3", "n1")]  # shares 3/7 2/7 2/7
    first = net.apply(fwd_port(VIP, 8080, slots))
    assert first == {"mode": "replace", "commands": first["commands"], "in_kernel": True}

    before = flows(VIP)
    assert set(before.values()) <= set(NODES), Counter(before.values())  # every flow answered
    shares = nodes_of(before)
    for n, k in (("n1", 3), ("n2", 2), ("n3", 2)):
        expected = len(SPORTS) * k / SIZE
        assert shares[n] > expected / 2, shares
    assert flows(VIP) == before  # same source port, same node

    # a port the Service does not have is refused at once by the gateway (a TCP reset)
    refused = "error: [Errno 111] Connection refused"
    assert set(flows(VIP, 9090, SPORTS[:3], timeout=0.5).values()) == {refused}

    # n3 leaves: its two slots go to n1 and n2; only its flows move
    after_slots = [V4[n] for n in ("n1", "n2", "n1", "n1", "n2", "n2", "n1")]
    change = net.apply(fwd_port(VIP, 8080, after_slots))
    # slot elements out and in; n3 out of the nodes map and of the port's est set
    assert change == {"mode": "incremental", "commands": 4, "in_kernel": True}
    after = flows(VIP)
    assert set(after.values()) <= {"n1", "n2"}, Counter(after.values())
    moved = {sp for sp in SPORTS if after[sp] != before[sp]}
    assert moved == {sp for sp in SPORTS if before[sp] == "n3"}

    # a restart: the first apply is a full replace, and with the fixed seed no flow moves
    net("restart")
    again = net.apply(fwd_port(VIP, 8080, after_slots))
    assert again["mode"] == "replace" and again["in_kernel"] is True
    assert flows(VIP) == after

    # someone flushes the table: no flow reaches a node (the gateway's own stack has no route
    # for the VIP); verify restores the table, and every flow is back on its node
    sh("nft", "flush", "table", "netdev", "portico-gw", ns="gw")
    assert not set(flows(VIP, sports=SPORTS[:3], timeout=0.5).values()) & set(NODES)
    assert net("verify") == {"restored": True, "in_kernel": True}
    assert net("verify") == {"restored": False, "in_kernel": True}
    assert flows(VIP) == after

    # no healthy node: dropped (fail closed)
    assert net.apply(fwd_port(VIP, 8080, []))["in_kernel"] is True
    assert set(flows(VIP, sports=SPORTS[:3], timeout=0.5).values()) == {"timeout"}

    assert net("delete") == {"in_kernel": None}


def test_ipv6_affinity_and_source_ranges(net: Driver) -> None:
    slots6 = [V6[n] for n in ("n1", "n2", "n3", "n1", "n2", "n3", "n1")]
    slots4 = [V4[n] for n in ("n1", "n2", "n3", "n1", "n2", "n3", "n1")]
    res = net.apply(
        fwd_port(VIP6, 8080, slots6),
        fwd_port(VIP, 8080, slots4, affinity=True),
        fwd_port(VIP, 8081, slots4, service="ns/closed", ranges=["203.0.113.0/24"]),
    )
    assert res["in_kernel"] is True
    sports = SPORTS[:60]
    six = flows(VIP6, sports=sports)
    assert set(six.values()) <= set(NODES) and len(set(six.values())) >= 2, six
    assert flows(VIP6, sports=sports) == six
    # ClientIP affinity: one client, one node, whatever its source port
    aff = flows(VIP, sports=sports)
    assert len(set(aff.values())) == 1 and set(aff.values()) <= set(NODES), Counter(aff.values())
    # the client is outside the Service's source ranges: dropped
    assert set(flows(VIP, 8081, SPORTS[:3], timeout=0.5).values()) == {"timeout"}
    wider = fwd_port(VIP, 8081, slots4, service="ns/closed", ranges=["198.18.210.0/24"])
    res = net.apply(fwd_port(VIP6, 8080, slots6), fwd_port(VIP, 8080, slots4, affinity=True), wider)
    assert res == {"mode": "incremental", "commands": 2, "in_kernel": True}  # set elements only
    assert set(flows(VIP, 8081, SPORTS[:3]).values()) <= set(NODES)

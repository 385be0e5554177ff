"""Requests/s to one VIP through a node with 10 vs 10,000 LoadBalancer Services in its table:
the per-packet cost must not grow with the number of Services (verdict-map lookups), goal
ratio >= 0.95. Measured in one run, alternating the two table sizes, on a lab node (real
nftables, real veths, the echo pods), with a new TCP connection per request (so every request
goes through the NAT lookup, not only an established flow's conntrack entry).

    .venv/bin/python bench/nodeagent_rps.py [--small 10] [--large 10000] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from portico_common.model import LBService, NodeInfo, ServicePort
from portico_lab.lab import Lab, LabConfig
from portico_nodeagent.render import render_node_rules
from portico_operator.slices import endpoints_from_slices

AGENT = [sys.executable, "-m", "portico_nodeagent"]
PODS = {"echo-1-1", "echo-1-2"}

# Load from a client: PROCS processes, each a loop of connect, one line, its answer, close.
_LOAD = r"""
import json, multiprocessing, socket, sys, time
host, seconds, procs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def run(q):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.create_connection((host, 80), timeout=2)
        s.sendall(b"x\n"); s.makefile().readline(); s.close(); n += 1
    q.put(n)
q = multiprocessing.Queue()
ps = [multiprocessing.Process(target=run, args=(q,)) for _ in range(procs)]
for p in ps: p.start()
total = sum(q.get() for _ in ps)
for p in ps: p.join()
print(json.dumps({"rps": total / seconds}))
"""


def table(lab: Lab, slices: list, count: int, vip: str) -> dict:
    eps = endpoints_from_slices(slices)
    ports = (ServicePort("http", "TCP", 80, None, "http"),)
    real = LBService("bench", "a-real", (vip,), ports, eps)
    base = lab.plan.vip_range_v4.network_address + 4096
    others = [LBService("bench", f"s{i}", (str(base + i),), ports, eps) for i in range(count - 1)]
    host = lab.host("node-1")
    return render_node_rules([real, *others], NodeInfo("node-1", "zone-a", (str(host.ipv4),)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    cfg = LabConfig(nodes=1, pods_per_node=2, zones=1, gateways=1, clients=1)
    with Lab.up(cfg) as lab, tempfile.TemporaryDirectory() as tmp:
        slices = lab.wait_endpoints(PODS)
        vip = str(lab.plan.vip_range_v4.network_address + 10)
        files = {}
        for n in (args.small, args.large):
            files[n] = Path(tmp) / f"rules-{n}.json"
            files[n].write_text(json.dumps(table(lab, slices, n, vip)))
        # Tens of thousands of short connections from one client to one VIP:port: without
        # reusing TIME_WAIT ports the client runs out of them and measures itself.
        for knob in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"):
            lab.exec("client-1", ["sysctl", "-qw", knob], check=True)
        via = str(lab.host("node-1").ipv4)
        lab.exec("client-1", ["ip", "route", "replace", f"{vip}/32", "via", via], check=True)
        rates: dict[int, list[float]] = {args.small: [], args.large: []}
        try:
            for _ in range(args.rounds):
                for n in (args.small, args.large):
                    res = lab.exec(
                        "node-1", [*AGENT, "--rules", str(files[n]), "--once"], timeout=600
                    )
                    assert res.returncode == 0, res.stderr
                    out = lab.exec(
                        "client-1",
                        [sys.executable, "-c", _LOAD, vip, str(args.seconds), str(args.procs)],
                        timeout=args.seconds + 60,
                    )
                    assert out.returncode == 0, out.stderr
                    rates[n].append(json.loads(out.stdout)["rps"])
        finally:
            lab.exec("node-1", [*AGENT, "--cleanup"])
    small, large = statistics.mean(rates[args.small]), statistics.mean(rates[args.large])
    print("| Services in the table | requests/s (each round) | mean |\n|---|---|---|")
    for n in (args.small, args.large):
        each = ", ".join(f"{r:.0f}" for r in rates[n])
        print(f"| {n} | {each} | {statistics.mean(rates[n]):.0f} |")
    print(f"\nratio {args.large} / {args.small}: {large / small:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

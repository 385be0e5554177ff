"""One node's table at scale: what an endpoint change costs the agent with 10 vs 10,000
LoadBalancer Services loaded, next to a full reload, and where the time goes (render, diff,
the nftables transaction). Runs in a network namespace of its own (root needed), no lab.

    .venv/bin/python bench/nodeagent_apply.py [--services 10 10000] [--changes 20]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from dataclasses import replace

from portico_common.model import Endpoint, EndpointPort, LBService, NodeInfo, ServicePort
from portico_nodeagent.incremental import NodeRenderer
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import replace_table

NETNS = "ptc-bench-nodeagent"
NODE = NodeInfo("node-1", "zone-a", ("198.18.0.10",))


def services(n: int) -> list[LBService]:
    ports = tuple(ServicePort(f"p{k}", "TCP", 80 + k, None, 8080) for k in range(3))
    eps = tuple(
        Endpoint(
            f"198.19.{node}.{2 + k}",
            f"node-{node}",
            "zone-a",
            ports=(EndpointPort("p0", "TCP", 8080),),
        )
        for node in (1, 2, 3)
        for k in range(2)
    )
    out = []
    for i in range(n):
        vip = f"198.18.{32 + i // 250}.{1 + i % 250}"
        out.append(LBService("bench", f"s{i}", (vip,), ports, eps))
    return out


def ms(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def measure(n: int, changes: int) -> dict[str, float]:
    from portico_nodeagent.nft import NftTable

    table = NftTable()
    renderer = NodeRenderer()
    svcs = services(n)
    renderer.render(svcs, NODE)  # the agent's cache, warm after its first apply
    t0 = time.perf_counter()
    doc = render_node_rules(svcs, NODE)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.apply(doc)
    first_s = time.perf_counter() - t0
    renders, diffs, txns, wholes = [], [], [], []
    for c in range(changes):
        # One endpoint of one Service goes not-ready, then ready again.
        i = (c // 2) % n
        eps = list(svcs[i].endpoints)
        eps[0] = replace(eps[0], ready=c % 2 == 1, serving=c % 2 == 1)
        svcs[i] = replace(svcs[i], endpoints=tuple(eps))
        t0 = time.perf_counter()
        render = renderer.render(svcs, NODE)  # as the agent does: cached per Service
        renders.append(time.perf_counter() - t0)
        result = table.apply(render)
        diffs.append(result.seconds - result.transaction_seconds)
        txns.append(result.transaction_seconds)
        wholes.append(renders[-1] + result.seconds)
        doc = render.document()
    t0 = time.perf_counter()
    table.run(replace_table(doc))
    reload_s = time.perf_counter() - t0
    table.cleanup()
    return {
        "commands": len(doc["nftables"]),
        "render_full": render_s,
        "first": first_s,
        "reload": reload_s,
        "render50": ms(renders, 50),
        "whole50": ms(wholes, 50),
        "whole99": ms(wholes, 99),
        "diff50": ms(diffs, 50),
        "txn50": ms(txns, 50),
        "txn99": ms(txns, 99),
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", type=int, nargs="+", default=[10, 10000])
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            argv = [sys.executable, __file__, "--inside", "--changes", str(args.changes)]
            argv += ["--services", *map(str, args.services)]
            return subprocess.run(["ip", "netns", "exec", NETNS, *argv]).returncode
        finally:
            subprocess.run(["ip", "netns", "del", NETNS])
    print(
        "| Services (x3 ports, 6 endpoints) | commands | first load | full reload "
        "| one endpoint change: transaction p50 / p99 | render | diff "
        "| render + diff + transaction p50 / p99 | max RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.services:
        r = measure(n, args.changes)
        print(
            f"| {n} | {r['commands']} | {r['first'] * 1000:.0f} ms | {r['reload'] * 1000:.0f} ms "
            f"| {r['txn50']:.1f} / {r['txn99']:.1f} ms | {r['render50']:.1f} ms "
            f"| {r['diff50']:.1f} ms | {r['whole50']:.1f} / {r['whole99']:.1f} ms "
            f"| {r['rss']:.0f} MiB |"
        )
    print("goal: one endpoint change at 10,000 Services, transaction < 20 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

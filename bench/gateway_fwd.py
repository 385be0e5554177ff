"""The gateway's forwarding table at scale: render and apply times of a full load of 1,000
Service ports over 3 nodes (one shared slot map) and over distinct node sets (a map each), and
what one node of 10 leaving costs (commands, milliseconds). Runs in a network namespace of its
own with a veth as the LAN device (root needed), no lab.

    .venv/bin/python bench/gateway_fwd.py [--ports 1000] [--size 251]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence

from portico_lbnode.fwddiff import diff_fwd
from portico_lbnode.fwdrules import FwdPort, render_fwd

NETNS = f"ptcT-bench-gwfwd-{os.getpid()}"
DEVICE = "eth0"


def maglev(nodes: Sequence[str], size: int) -> list[str]:
    """Maglev's population (Eisenbud et al., 2016), enough for realistic slot movement; the
    gateway's own table comes from its Maglev module, not from here."""
    import hashlib

    def h(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    prefs = [(h(n + "#o") % size, h(n + "#s") % (size - 1) + 1) for n in nodes]
    nxt = [0] * len(nodes)
    table: list[str | None] = [None] * size
    filled = 0
    while filled < size:
        for i, (offset, skip) in enumerate(prefs):
            while True:
                slot = (offset + nxt[i] * skip) % size
                nxt[i] += 1
                if table[slot] is None:
                    break
            table[slot] = nodes[i]
            filled += 1
            if filled == size:
                break
    return [t for t in table if t is not None]


def node_ip(k: int) -> str:
    return f"198.18.{200 + k // 250}.{1 + k % 250}"


def ports(n: int, node_sets: list[list[str]], size: int) -> list[FwdPort]:
    slots_of = {
        tuple(s): tuple(ipaddress.ip_address(a) for a in maglev(s, size)) for s in node_sets
    }
    out = []
    for i in range(n):
        nodes = node_sets[i % len(node_sets)]
        vip = ipaddress.ip_address(f"198.18.{100 + i // 250}.{1 + i % 250}")
        out.append(FwdPort(f"bench/s{i}", vip, "TCP", 80, False, (), slots_of[tuple(nodes)]))
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def full_load(name: str, svc_ports: list[FwdPort], size: int) -> list[str]:
    from portico_lbnode.fwdnft import FwdTable

    table = FwdTable()
    t0 = time.perf_counter()
    rules = render_fwd(svc_ports, [DEVICE], size)
    render_s = time.perf_counter() - t0
    res = table.apply(rules)
    c = rules.counts()
    table.delete()
    maps = str(c["maps"] - 2)  # less the two dispatch vmaps
    return [name, str(len(svc_ports)), maps, str(c["elements"]), ms(render_s), ms(res.seconds),
            str(res.commands)]  # fmt: skip


def node_leaves(name: str, n: int, sets: list[list[str]], size: int) -> list[str]:
    """Loads ``n`` ports over ``sets``, then node-1 leaves every set it is in."""
    from portico_lbnode.fwdnft import FwdTable

    table = FwdTable()
    old = render_fwd(ports(n, sets, size), [DEVICE], size)
    table.apply(old)
    after = [[x for x in s if x != node_ip(1)] for s in sets]
    new_ports = ports(n, after, size)
    t0 = time.perf_counter()
    new = render_fwd(new_ports, [DEVICE], size, previous=old)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cmds = diff_fwd(old, new)
    diff_s = time.perf_counter() - t0
    res = table.apply(new)
    assert res.mode == "incremental", res
    bodies = [next(iter(c.values())) for c in cmds]
    elements = sum(len(b["element"]["elem"]) for b in bodies if "element" in b)
    in_kernel = table.current()
    assert in_kernel is not None and in_kernel.same_as(new)
    table.delete()
    return [name, str(n), str(len(cmds)), str(elements), ms(render_s), ms(diff_s),
            ms(res.transaction_seconds)]  # fmt: skip


def table_md(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports", type=int, default=1000)
    ap.add_argument("--size", type=int, default=251, help="Maglev table size (prime)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            link = ["ip", "-n", NETNS, "link"]
            subprocess.run(
                [*link, "add", DEVICE, "type", "veth", "peer", "name", "peer0"], check=True
            )
            subprocess.run([*link, "set", DEVICE, "up"], check=True)
            argv = [sys.executable, __file__, "--inside", "--ports", str(args.ports)]
            argv += ["--size", str(args.size)]
            return subprocess.run(["ip", "netns", "exec", NETNS, *argv]).returncode
        finally:
            subprocess.run(["ip", "netns", "del", NETNS])
    n, size = args.ports, args.size
    rng = random.Random(1)
    pool = [node_ip(k) for k in range(1, 21)]
    three = [pool[:3]]
    distinct = [sorted(rng.sample(pool, 3)) for _ in range(n)]
    ten = [pool[:10]]
    distinct10 = [[node_ip(1), *sorted(rng.sample(pool[1:], 9))] for _ in range(n)]
    print(f"Maglev table size M = {size}; one ingress device; times in ms\n")
    table_md(
        ["full load", "ports", "slot maps", "elements", "render", "apply (replace)", "commands"],
        [
            full_load("3 nodes, one shared map", ports(n, three, size), size),
            full_load("3 of 20 nodes, distinct sets", ports(n, distinct, size), size),
        ],
    )
    print()
    table_md(
        ["one node of 10 leaves", "ports", "commands", "elements", "render", "diff", "transaction"],
        [
            node_leaves("shared map (Cluster)", n, ten, size),
            node_leaves("a map per port, node in every set", n, distinct10, size),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

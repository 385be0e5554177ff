"""The gateway's flow pins at scale, in a network namespace of their own (no lab): kernel memory
per pinned flow, the time to fill the map, and what the control plane would pay to find and
delete a dead node's pins itself (a netlink dump of the map, the deletes) instead of the
per-packet liveness check the gateway uses (``flowrules``: a pin whose node left the port's est
set is ignored at once, with no control-plane work).

The table is the gateway's own (``render_fwd`` + ``FwdTable``); the pins are written as element
adds (what ``pin-add`` does from the packet path), ``--flows`` per family, spread over 50 nodes.
Memory: the kernel's unreclaimable slab (``SUnreclaim`` in /proc/meminfo) before and after, on
a machine where other work runs too: each figure is the median of ``--reps`` fills.

    .venv/bin/python bench/gateway_flows.py [--flows 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time

from portico_common import nftnetlink
from portico_lbnode.flowrules import FLOW_MAP, node_ids
from portico_lbnode.fwdnft import FwdTable
from portico_lbnode.fwdrules import FAMILY, TABLE, FwdPort, render_fwd

NETNS = f"pgw-flows-{os.getpid()}"
NODES4 = [ipaddress.ip_address(f"198.18.200.{i}") for i in range(1, 51)]
NODES6 = [ipaddress.ip_address(f"fd00:200::{i:x}") for i in range(1, 51)]
BATCH = 50_000


def slab_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1])
    raise RuntimeError("no SUnreclaim in /proc/meminfo")


def elements_text(family: int, n: int, offset: int) -> list[str]:
    """``n`` pins as nft text elements, each to one of 50 nodes."""
    nodes = NODES4 if family == 4 else NODES6
    ids = node_ids(nodes)
    out = []
    for i in range(offset, offset + n):
        node = ids[nodes[i % len(nodes)]]
        sport, client = 1024 + i % 60000, i // 60000
        if family == 4:
            key = f"10.{client >> 8 & 255}.{client & 255}.1 . {sport} . 198.18.210.10 . 80"
        else:
            key = f"{(i * 2654435761) & 0x7FFFFFFF} . {sport} . 80"
        out.append(f"{key} : {node}")
    return out


def fill(table: FwdTable, family: int, n: int) -> float:
    name = FLOW_MAP[(family, "tcp")]
    t0 = time.perf_counter()
    for at in range(0, n, BATCH):
        elems = ", ".join(elements_text(family, min(BATCH, n - at), at))
        table.run(f"add element {FAMILY} {TABLE} {name} {{ {elems} }}\n")
    return time.perf_counter() - t0


def dead_node_sweep(table: FwdTable, family: int) -> tuple[float, float, int]:
    """The control-plane alternative: dump the map by netlink, delete one node's pins."""
    name = FLOW_MAP[(family, "tcp")]
    listing = table.listing() or {}
    decl = next(i["map"] for i in listing["nftables"] if i.get("map", {}).get("name") == name)
    dead = str(node_ids(NODES4 if family == 4 else NODES6)[(NODES4 if family == 4 else NODES6)[0]])
    t0 = time.perf_counter()
    keys = [k for k, v in nftnetlink.map_elements(FAMILY, TABLE, decl) if _value(v) == dead]
    t_list = time.perf_counter() - t0
    t0 = time.perf_counter()
    for at in range(0, len(keys), BATCH):
        part = ", ".join(_key_text(k) for k in keys[at : at + BATCH])
        table.run(f"delete element {FAMILY} {TABLE} {name} {{ {part} }}\n")
    return t_list, time.perf_counter() - t0, len(keys)


def _value(canon_value: str) -> str:
    """A pin's node id: netlink decoding lists an element with a timeout as
    ``{"netlink": [<its other attributes>], "value": <id>}``."""
    v = json.loads(canon_value)
    return str(v["value"] if isinstance(v, dict) else v)


def _key_text(canon_key: str) -> str:
    fields = json.loads(canon_key)["concat"]
    return " . ".join(str(f) for f in fields)


def one_rep(n: int) -> dict[str, float]:
    def body() -> dict[str, float]:
        table = FwdTable()
        ports = [
            FwdPort(
                "b/v4",
                ipaddress.ip_address("198.18.210.10"),
                "TCP",
                80,
                False,
                (),
                tuple(NODES4[:7]),
            ),
            FwdPort(
                "b/v6",
                ipaddress.ip_address("fd00:210::10"),
                "TCP",
                80,
                False,
                (),
                tuple(NODES6[:7]),
            ),
        ]
        table.apply(render_fwd(ports, ["dummy0"], 7))
        res: dict[str, float] = {}
        for fam in (4, 6):
            before = slab_kib()
            res[f"fill{fam}_s"] = fill(table, fam, n)
            time.sleep(1.0)  # RCU-freed batches settle
            res[f"mem{fam}_kib"] = slab_kib() - before
            lst, dele, k = dead_node_sweep(table, fam)
            res[f"list{fam}_s"], res[f"delete{fam}_s"], res[f"dead{fam}"] = lst, dele, k
            # a re-render and a full replace keep every pin
            table2 = FwdTable()
            table2.apply(render_fwd(ports, ["dummy0"], 7))
            res[f"kept{fam}"] = _count(table2, fam)
        before = slab_kib()
        table.delete()
        time.sleep(1.0)
        res["freed_kib"] = before - slab_kib()
        return res

    return body()


def _count(table: FwdTable, family: int) -> float:
    name = FLOW_MAP[(family, "tcp")]
    listing = table.listing() or {}
    decl = next(i["map"] for i in listing["nftables"] if i.get("map", {}).get("name") == name)
    return float(sum(1 for _ in nftnetlink.map_elements(FAMILY, TABLE, decl)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:  # one rep, in the bench's namespace (libnftables works in the process's)
        print(json.dumps(one_rep(args.flows)))
        return 0
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(
            ["ip", "-n", NETNS, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"],
            check=True,
        )
        argv = ["ip", "netns", "exec", NETNS, sys.executable, __file__, "--inside"]
        argv += ["--flows", str(args.flows)]
        reps = []
        for _ in range(args.reps):
            res = subprocess.run(argv, check=True, capture_output=True, text=True)
            reps.append(json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    n = args.flows
    print(f"| {n:,} pins per family, median of {args.reps} | IPv4 | IPv6 |")
    print("|---|---|---|")
    for fam_row, key, fmt in (
        ("kernel memory (SUnreclaim delta)", "mem{}_kib", lambda v: f"{v / 1024:.0f} MiB"),
        ("  per pin", "mem{}_kib", lambda v: f"{v * 1024 / n:.0f} B"),
        ("fill by element adds", "fill{}_s", lambda v: f"{v:.1f} s"),
        ("dead-node sweep: netlink dump of the map", "list{}_s", lambda v: f"{v:.2f} s"),
        ("dead-node sweep: delete its pins", "delete{}_s", lambda v: f"{v:.2f} s"),
        ("  pins deleted (1 node of 50)", "dead{}", lambda v: f"{v:,.0f}"),
        ("pins kept by a restart's full replace", "kept{}", lambda v: f"{v:,.0f}"),
    ):
        print(f"| {fam_row} | {fmt(med[key.format(4)])} | {fmt(med[key.format(6)])} |")
    freed = med["freed_kib"] / 1024
    print(f"| table deleted: memory given back (both families) | {freed:.0f} MiB | |")
    print("| per-packet liveness check instead (est set lookup) | no control-plane work | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

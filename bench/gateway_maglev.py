"""The gateway's Maglev table against plain modulo hashing: how many flows move when one of N
nodes fails, how even the split is, and what building a table costs. Pure Python, no root, no lab.

Flows are random (saddr, sport) pairs from 198.18.0.0/15 (fixed seed), each mapped through one
stable 32-bit hash to a slot of an M-slot table; the same slot feeds both tables, so the two
columns differ only in how slots are given to nodes. For each N every node fails in turn and the
flows whose node changed are counted (mean and worst over the N failures); "ideal" is 1/N, the
failed node's own flows.

    .venv/bin/python bench/gateway_maglev.py [--flows 100000] [--nodes 3 10 20] [--size 4093]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections import Counter

from portico_lbnode.maglev import DEFAULT_TABLE_SIZE, maglev_table, modulo_table

# Every loop below is bounded in count; this bounds the whole run in time as well.
BUDGET_S = 50.0


class OutOfTime(RuntimeError):
    pass


def flow_slots(count: int, size: int, seed: int = 1) -> list[int]:
    """The table slot of each of `count` random flows (blake2b, so the same on every run)."""
    rng = random.Random(seed)
    base = int.from_bytes(bytes([198, 18, 0, 0]), "big")
    slots = []
    for _ in range(count):
        saddr = base + rng.randrange(1 << 17)  # 198.18.0.0/15
        sport = rng.randrange(1024, 65536)
        key = saddr.to_bytes(4, "big") + sport.to_bytes(2, "big")
        h = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big")
        slots.append(h % size)
    return slots


def moved_flows(slots: list[int], before: tuple[str, ...], after: tuple[str, ...]) -> float:
    """Share of the flows whose node differs between the two tables."""
    return sum(1 for s in slots if before[s] != after[s]) / len(slots)


def failures(
    slots: list[int], n: int, size: int, deadline: float
) -> dict[str, tuple[float, float]]:
    """(mean, worst) share of flows moved when one of n nodes fails, per scheme."""
    names = [f"node-{i}" for i in range(n)]
    out: dict[str, list[float]] = {"maglev": [], "modulo": [], "maglev-survivors": []}
    maglev_before = maglev_table(dict.fromkeys(names, 1), size)
    modulo_before = modulo_table(names, size)
    for gone in names:
        if time.monotonic() > deadline:
            raise OutOfTime(f"out of time at N={n}")
        rest = [x for x in names if x != gone]
        maglev_after = maglev_table(dict.fromkeys(rest, 1), size)
        out["maglev"].append(moved_flows(slots, maglev_before, maglev_after))
        out["modulo"].append(moved_flows(slots, modulo_before, modulo_table(rest, size)))
        # Flows of the nodes that stayed up and still moved: Maglev's only extra disruption.
        kept = [s for s in slots if maglev_before[s] != gone]
        out["maglev-survivors"].append(moved_flows(kept, maglev_before, maglev_after))
    return {k: (statistics.mean(v), max(v)) for k, v in out.items()}


def imbalance(slots: list[int], n: int, size: int) -> tuple[float, float]:
    """(slots, flows): the largest node's share over the ideal 1/N, minus one."""
    table = maglev_table({f"node-{i}": 1 for i in range(n)}, size)
    by_slot = Counter(table)
    by_flow = Counter(table[s] for s in slots)
    return (
        max(by_slot.values()) / size * n - 1,
        max(by_flow.values()) / len(slots) * n - 1,
    )


def build_ms(n: int, size: int, runs: int, deadline: float) -> tuple[float, float]:
    """(median, max) milliseconds to build one table for n equal-weight nodes."""
    backends = {f"node-{i}": 1 for i in range(n)}
    times = []
    for _ in range(runs):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        maglev_table(backends, size)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--build-nodes", type=int, nargs="+", default=[3, 10, 40])
    ap.add_argument("--size", type=int, default=DEFAULT_TABLE_SIZE)
    ap.add_argument("--build-runs", type=int, default=30)
    args = ap.parse_args()
    started = time.monotonic()
    deadline = started + BUDGET_S

    slots = flow_slots(args.flows, args.size)
    print(f"M = {args.size} slots, {args.flows:,} flows; one of N nodes fails (each in turn)\n")
    print(
        "| N | ideal 1/N | Maglev moved, mean / worst | modulo moved, mean / worst "
        "| Maglev survivors' flows moved, worst | largest node over 1/N: slots / flows |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.nodes:
        r = failures(slots, n, args.size, deadline)
        slot_imb, flow_imb = imbalance(slots, n, args.size)
        print(
            f"| {n} | {1 / n:.1%} "
            f"| {r['maglev'][0]:.1%} / {r['maglev'][1]:.1%} "
            f"| {r['modulo'][0]:.1%} / {r['modulo'][1]:.1%} "
            f"| {r['maglev-survivors'][1]:.2%} "
            f"| {slot_imb:+.2%} / {flow_imb:+.2%} |"
        )
    print(
        f"\n(the flows column adds sampling noise: each node's count of {args.flows:,} random flows"
        " varies by about sqrt(flows/N))\n"
    )
    print(f"| build one table, M = {args.size} | median | max |\n|---|---|---|")
    for n in args.build_nodes:
        med, worst = build_ms(n, args.size, args.build_runs, deadline)
        print(f"| N = {n} | {med:.2f} ms | {worst:.2f} ms |")
    print(f"\n(ran {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()

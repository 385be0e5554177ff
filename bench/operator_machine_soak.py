"""Soak: the operator's whole reconcile loop against the in-memory API of the unit tests
(random users, restarts, failovers, frozen leaders, lagging watches, conflicts), over many
seeds. Prints how many walks broke an invariant (an address carried by two Services that may
not share, or moved while its Service still wanted it), and the first failures.

    .venv/bin/python bench/operator_machine_soak.py --seeds 200 --steps 60
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portico_operator import controller as controller_module
from portico_operator import rules_writer, workers

from tests.unit.operator.test_machine import scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)
    workers.RETRY_SECONDS = (0.001,) * 7
    workers.CONFLICT_RETRY_SECONDS = 0.001
    controller_module.POOL_FLUSH_SECONDS = 0.005
    rules_writer.RULES_GATHER_SECONDS = 0.001
    rules_writer.RULES_MIN_INTERVAL = 0.002
    failures: list[tuple[int, str]] = []
    t0 = time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        try:
            asyncio.run(scenario(seed, args.steps))
        except AssertionError as e:
            failures.append((seed, str(e).splitlines()[0]))
    took = time.monotonic() - t0
    print("| walks | steps | broken | seconds |\n|---|---|---|---|")
    print(f"| {args.seeds} | {args.steps} | {len(failures)} | {took:.0f} |")
    for seed, what in failures[:10]:
        print(f"seed {seed}: {what}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

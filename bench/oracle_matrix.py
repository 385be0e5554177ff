"""kube-proxy as the oracle, the full matrix: every Service shape of tests/lab/oracle_harness.py
(family x externalTrafficPolicy x sessionAffinity x loadBalancerSourceRanges x protocols x
endpoints) from every client location, once through Portico's node agents and once through
kube-proxy's own rules; prints how many cells agree, the differences Portico means to have and
the defects (both behaviours).

    .venv/bin/python bench/oracle_matrix.py [--mode nftables|iptables] [--sample] [--slot N]
        [--only v4/Local] [--save run.json] [--load run.json]

Without --slot it brings up a lab of its own (3 nodes, 2 pods each) and tears it down after;
with --slot it uses a running one (`portico-lab up --no-portico`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import install_crds

from tests.lab import oracle_harness as oracle
from tests.lab.operator_harness import Api


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=("nftables", "iptables"), default="nftables")
    ap.add_argument("--sample", action="store_true", help="only the test's subset")
    ap.add_argument("--slot", type=int, default=None, help="use this running lab")
    ap.add_argument("--save", default="", help="write the observations to this JSON file")
    ap.add_argument("--load", default="", help="compare the observations of this file again")
    ap.add_argument(
        "--only", default="", help="only the shapes with all these values, e.g. v4/Local/none"
    )
    args = ap.parse_args()

    shapes = oracle.sampled() if args.sample else oracle.full_matrix()
    if args.only:
        shapes = [
            s for s in shapes if all(part in s.id.split("/") for part in args.only.split("/"))
        ]
    if args.load:
        r = oracle.load_run(json.loads(Path(args.load).read_text()))
        print(oracle.table(oracle.compare(r)))
        return 0
    t0 = time.monotonic()
    own = args.slot is None
    lab = (
        Lab.up(LabConfig(nodes=3, pods_per_node=2, zones=2, gateways=1, clients=2))
        if own
        else Lab.attach(args.slot)
    )
    try:
        install_crds(lab)
        api = Api(lab)
        r = oracle.run(
            lab,
            api,
            shapes,
            mode=args.mode,
            log=lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True),
        )
    finally:
        if own:
            lab.down()
    if args.save:
        Path(args.save).write_text(json.dumps(oracle.dump_run(r)))
    verdicts = oracle.compare(r)
    print()
    print(f"kube-proxy {args.mode} as the oracle: {len(shapes)} Service shapes")
    print(oracle.table(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lab start-up and control-plane footprint.

Prints, for each lab size: seconds from `Lab.up()` to the network built, /readyz ok, every Node
and Pod registered, and the echo Service's EndpointSlices listing every pod; and the resident
memory of etcd, kube-apiserver and kube-controller-manager once the lab is up. The control plane
binaries must be built already (the build's own times are read from the cache's log).

    sudo .venv/bin/python bench/lab_start.py [--nodes 3 20] [--pods-per-node 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from portico_lab.binaries import bin_dir
from portico_lab.lab import Lab, LabConfig

GOAL_N3_S = 20.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--pods-per-node", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()

    bins = bin_dir()
    rows = []
    for n in args.nodes:
        for _ in range(args.runs):
            lab = Lab.up(LabConfig(nodes=n, pods_per_node=args.pods_per_node))
            try:
                time.sleep(2)  # let the controllers settle before reading memory
                assert lab.control_plane is not None
                rss = lab.control_plane.rss_kib()
                rows.append((n, n * args.pods_per_node, dict(lab.timings), rss))
            finally:
                t1 = time.monotonic()
                lab.down()
                rows[-1][2]["down"] = time.monotonic() - t1

    print()
    print("warm lab start (seconds since Lab.up(); control plane already built)")
    hdr = (
        f"{'nodes':>5} {'pods':>5} {'network':>8} {'readyz':>7} {'registered':>10} "
        f"{'slices':>7} {'down':>6} {'etcd MB':>8} {'apiserver MB':>12} {'kcm MB':>7} {'goal':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for n, pods, t, rss in rows:
        goal = f"<= {GOAL_N3_S:.0f} s" if n == 3 else "-"
        print(
            f"{n:>5} {pods:>5} {t['network']:>8.2f} {t['readyz']:>7.2f} {t['registered']:>10.2f} "
            f"{t['endpointslices']:>7.2f} {t['down']:>6.2f} {rss.get('etcd', 0) / 1024:>8.0f} "
            f"{rss.get('kube-apiserver', 0) / 1024:>12.0f} "
            f"{rss.get('kube-controller-manager', 0) / 1024:>7.0f} {goal:>10}"
        )
    if args.runs > 1:
        for n in args.nodes:
            ts = [t["endpointslices"] for m, _, t, _ in rows if m == n]
            print(f"N={n}: median {statistics.median(ts):.2f} s over {len(ts)} runs")
    log = bins.parent / "build-times.txt"
    print()
    print(f"control-plane builds recorded in {log}:")
    print(log.read_text().strip() if log.exists() else "  (none recorded)")


if __name__ == "__main__":
    main()

"""Service created -> status.loadBalancer.ingress seen by a watch, and where the time goes.

Brings up a lab, starts one real portico-operator (with --trace-timings) and measures:
  A. latency over N Services created one by one (p50 / p99), with a timeline of medians: the
     POST's response, a bare watch of ours, the operator's handler, its status PATCH sent and
     answered, and our watch seeing the ingress
  B. BULK Services created at once: time until all have an address, operator RSS
  C. A again with BULK Services already allocated (the figure must not grow)
  and the in-memory handler time at ~100 vs ~BULK Services (the ratio must stay near 1).

    .venv/bin/python bench/operator_latency.py [--n 200] [--bulk 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import IngressWatch, Operator, install_portico, pct, wait_idle, wait_serving
from _common import service as lb_service
from kubernetes import client
from portico_lab.lab import Lab, LabConfig
from portico_lab.procs import rss_kib

NS = "bench"


def service(name: str) -> dict[str, Any]:
    return lb_service(name, NS)


def read_timings(log: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("logger") != "portico.timing":
            continue
        t = json.loads(rec["msg"])
        name = t["key"].split("/", 1)[1]
        # The first reconcile that wrote the status is the one on the latency path.
        if name not in out and t.get("patched"):
            out[name] = t
    return out


def one_by_one(core: client.CoreV1Api, watch: IngressWatch, prefix: str, n: int) -> dict[str, Any]:
    sent: dict[str, float] = {}
    lat: dict[str, float] = {}
    created: dict[str, float] = {}
    for i in range(n):
        name = f"{prefix}-{i:04d}"
        sent[name] = time.time()
        core.create_namespaced_service(NS, service(name))
        created[name] = time.time()
        lat[name] = watch.wait(name) - sent[name]
    return {"sent": sent, "lat": lat, "created": created}


def breakdown(
    run: dict[str, Any], timings: dict[str, dict[str, Any]], watch: IngressWatch
) -> dict[str, Any]:
    parts: dict[str, list[float]] = {
        k: [] for k in ("create", "watch", "delivery", "patch_sent", "patch_done", "seen")
    }
    handler_only: list[float] = []
    for name, t0 in run["sent"].items():
        t = timings.get(name)
        if not t or not t.get("received"):
            continue
        parts["create"].append(run["created"][name] - t0)
        parts["watch"].append(watch.added[name] - t0)
        parts["delivery"].append(t["received"] - t0)
        parts["patch_sent"].append(t["patch"] - t0)
        parts["patch_done"].append(t["patched"] - t0)
        parts["seen"].append(watch.seen[name] - t0)
        handler_only.append(t["patch"] - t["start"])
    lat = list(run["lat"].values())
    return {
        "p50": pct(lat, 50) * 1000,
        "p99": pct(lat, 99) * 1000,
        **{k: statistics.median(v) * 1000 for k, v in parts.items() if v},
        "handler_only_ms": statistics.median(handler_only) * 1000 if handler_only else 0,
        "matched": len(handler_only),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--bulk", type=int, default=5000)
    args = ap.parse_args()

    lab = Lab.up(LabConfig(nodes=3, pods_per_node=1, gateways=0, clients=0))
    op: Operator | None = None
    watch: IngressWatch | None = None
    try:
        install_portico(lab, [NS], [str(lab.plan.vip_range_v4)])
        core = client.CoreV1Api(lab.api)
        watch = IngressWatch(lab, NS)
        watch.start()
        watch.ready.wait(30)
        op = Operator(lab, "bench", "--trace-timings")
        log = op.log

        def check() -> None:
            if op is not None and not op.alive():
                raise RuntimeError(f"the operator exited:\n{op.log_tail(60)}")

        wait_serving(core, watch, NS, "probe", check=check)
        time.sleep(1)
        rss_start = rss_kib(op.pid)

        # warm-up (first connections, code paths), not counted
        one_by_one(core, watch, "warm", 10)
        a = one_by_one(core, watch, "a", args.n)

        t0 = time.time()
        names = [f"bulk-{i:05d}" for i in range(args.bulk)]
        with ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(lambda n: core.create_namespaced_service(NS, service(n)), names))
        created = time.time() - t0
        for n in names:
            watch.wait(n, timeout=600)
        bulk_all = max(watch.seen[n] for n in names) - t0
        # The LoadBalancer CRs (stage two) trail the addresses; measure C in a settled cluster.
        settled = wait_idle(op) - t0
        rss_bulk = rss_kib(op.pid)

        c = one_by_one(core, watch, "c", args.n)
        timings = read_timings(log)
        ra = breakdown(a, timings, watch)
        rc = breakdown(c, timings, watch)
        first100 = {
            "sent": dict(list(a["sent"].items())[:100]),
            "lat": a["lat"],
            "created": a["created"],
        }
        r100 = breakdown(first100, timings, watch)
    finally:
        if watch is not None:
            watch.close()
        if op is not None:
            op.stop()
        lab.down()

    print()
    print(f"Service created -> ingress seen by a watch, {args.n} Services one by one (ms)")
    hdr = (
        f"{'run':<26} {'p50':>5} {'p99':>5} | {'POST':>5} {'watch':>5} {'oper.':>5} "
        f"{'PATCH>':>6} {'PATCH<':>6} {'seen':>5} | {'goal':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for label, r in (("empty cluster", ra), (f"{args.bulk} already allocated", rc)):
        print(
            f"{label:<26} {r['p50']:>5.1f} {r['p99']:>5.1f} | {r['create']:>5.1f} "
            f"{r['watch']:>5.1f} {r['delivery']:>5.1f} {r['patch_sent']:>6.1f} "
            f"{r['patch_done']:>6.1f} {r['seen']:>5.1f} | {'40 / 80':>10}"
        )
    print("  Timeline, median ms since the POST was sent: POST = its response is back; watch = a")
    print("  bare watch of ours has the new Service; oper. = the operator's handler has it;")
    print("  PATCH> = the operator sends the status PATCH; PATCH< = its response is back;")
    print("  seen = our watch sees the ingress.")
    print()
    print(f"{args.bulk} Services created at once (8 client threads)")
    print(
        f"  creates took {created:.1f} s; all had an address {bulk_all:.1f} s after the first "
        f"POST ({args.bulk / bulk_all:.0f} Services/s); every LoadBalancer CR written "
        f"{settled:.1f} s after it"
    )
    print(
        f"  operator RSS: {rss_start / 1024:.0f} MB at start, {rss_bulk / 1024:.0f} MB with "
        f"{args.bulk + 2 * args.n + 11} Services (goal <= 250 MB)"
    )
    print()
    ratio = rc["handler_only_ms"] / r100["handler_only_ms"] if r100["handler_only_ms"] else 0
    print("in-memory handler time per Service (allocate + render, median)")
    print(
        f"  ~100 Services: {r100['handler_only_ms']:.3f} ms   ~{args.bulk} Services: "
        f"{rc['handler_only_ms']:.3f} ms   ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()

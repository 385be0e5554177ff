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
import os
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import operator_argv
from portico_lab.procs import rss_kib

REPO = Path(__file__).resolve().parents[1]
NS = "bench"
METRICS_PORT = 19464


def wait_idle(timeout: float = 900) -> float:
    """Waits until both of the operator's work queues stay empty for 2 s; returns when."""
    deadline = time.time() + timeout
    idle_since = None
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics").text
        depth = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("portico_work_queue_depth{")
        )
        if depth == 0:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 2:
                return idle_since
        else:
            idle_since = None
        time.sleep(0.2)
    raise TimeoutError("the operator never went idle")


class IngressWatch(threading.Thread):
    """A raw watch on the namespace's Services: first time each one shows an ingress."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        cp = lab.control_plane
        assert cp is not None and cp.files is not None
        self.http = httpx.Client(
            base_url=cp.server, verify=cp.ssl_context(), timeout=httpx.Timeout(10, read=None)
        )
        self.seen: dict[str, float] = {}
        self.added: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False

    def run(self) -> None:
        rv = self.http.get(f"/api/v1/namespaces/{NS}/services").json()["metadata"][
            "resourceVersion"
        ]
        while not self.stop:
            params = {
                "watch": "1",
                "resourceVersion": rv,
                "timeoutSeconds": "300",
                "allowWatchBookmarks": "true",
            }
            with self.http.stream("GET", f"/api/v1/namespaces/{NS}/services", params=params) as r:
                for line in r.iter_lines():
                    if not line:
                        continue
                    ev = json.loads(line)
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    ing = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
                    name = obj["metadata"].get("name")
                    self.added.setdefault(name, time.time())
                    if ing and name not in self.seen:
                        with self.cond:
                            self.seen[name] = time.time()
                            self.cond.notify_all()

    def wait(self, name: str, timeout: float = 30) -> float:
        deadline = time.time() + timeout
        with self.cond:
            while name not in self.seen:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"{name} got no ingress in {timeout}s")
                self.cond.wait(left)
            return self.seen[name]


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "LoadBalancer",
            # 5,000 Services would exhaust the 2,768 default nodePorts; DSR does not need them.
            "allocateLoadBalancerNodePorts": False,
            "selector": {"app": "echo"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


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


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


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
    op: subprocess.Popen[bytes] | None = None
    try:
        lab.kubectl(
            "apply",
            "-f",
            str(REPO / "crds" / "portico.dev_ippools.yaml"),
            "-f",
            str(REPO / "crds" / "portico.dev_loadbalancers.yaml"),
        )
        lab.kubectl("create", "namespace", "portico-system")
        lab.kubectl("create", "namespace", NS)
        time.sleep(1)
        pool = {
            "apiVersion": "portico.dev/v1alpha1",
            "kind": "IPPool",
            "metadata": {"name": "bench"},
            "spec": {"addresses": [str(lab.plan.vip_range_v4)]},
        }
        client.CustomObjectsApi(lab.api).create_cluster_custom_object(
            "portico.dev", "v1alpha1", "ippools", pool
        )
        log = lab.workdir / "logs" / "operator-bench.log"
        env = dict(os.environ, KUBECONFIG=str(lab.kubeconfig))
        op = subprocess.Popen(
            operator_argv(lab, "bench", "--trace-timings", "--metrics-port", str(METRICS_PORT)),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        while "first full listing" not in log.read_text():
            if op.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1)
        core = client.CoreV1Api(lab.api)
        watch = IngressWatch(lab)
        watch.start()
        time.sleep(0.5)
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
        settled = wait_idle() - t0
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
        if "watch" in locals():
            watch.stop = True
        if op is not None:
            op.terminate()
            try:
                op.wait(timeout=30)
            except subprocess.TimeoutExpired:
                op.kill()
                op.wait()
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
        f"{args.bulk + 2 * args.n + 10} Services (goal <= 250 MB)"
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

"""A node's link goes down under 20 requests/s (ETP Cluster, one echo pod on each of 3 nodes,
node-2 cut off while its endpoints stay ready in the EndpointSlice): how long requests keep
failing and what share of them fails, with the gateway's ARP signal and the operator's
exclusion (`after`, the defaults) and with the health probes alone (`before`:
`--neighbour-interval 0`, no GatewayReport, so no exclusion either); runs alternate between the
two. Then the false-positive check: two busy loops in node-2's namespace for 30 s (the lab's
nodes share the machine's 2 cores, so they saturate every node and the gateway too) under the
same request loop: verdicts and failed requests.

  .venv/bin/python bench/deadnode.py --runs 3

Columns: `verdict` link down -> the gateway's ARP verdict (its log; `after` only); `status`
link down -> the LoadBalancer's status shows node-2 unhealthy (polled every 25 ms); `rules`
link down -> node-1's table no longer DNATs to node-2's pod (polled every 50 ms); `last fail`
link down -> the start of the last request that failed; `failed` share of the requests started
during the outage (from the link going down to the end of the loop: 20 s by default, the
outage the issue measured; the failures all come in its first half second, so a shorter
outage shows a larger share).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab, LabConfig
from portico_lab.load import Request, finish, start_request_loop
from portico_lab.portico import install, start_gateway
from portico_lab.procs import Proc, netns_argv

NS = "default"
NAME = "dead-bench"
GATEWAY = "gw-1"
RATE = 20.0
LEAD = 2.0  # seconds of requests before the link goes down


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def lb_status(lab: Lab) -> dict[str, Any]:
    try:
        obj = client.CustomObjectsApi(lab.api).get_namespaced_custom_object(
            "portico.dev", "v1alpha1", NS, "loadbalancers", NAME
        )
    except ApiException:
        return {}
    return obj.get("status") or {}


def healthy(lab: Lab) -> set[str]:
    return {n["node"] for n in lb_status(lab).get("nodes") or [] if n.get("healthy")}


def unreachable_reported(lab: Lab) -> list[str]:
    try:
        obj = client.CustomObjectsApi(lab.api).get_cluster_custom_object(
            "portico.dev", "v1alpha1", "gatewayreports", GATEWAY
        )
    except ApiException:
        return []
    return list((obj.get("status") or {}).get("unreachableNodes") or [])


def node1_targets(lab: Lab) -> str:
    res = lab.exec("node-1", ["nft", "-j", "list", "map", "inet", "portico", "endpoint-addrs4"])
    return res.stdout if res.returncode == 0 else ""


def verdicts(lab: Lab, since: float) -> list[dict[str, Any]]:
    """The gateway's ARP verdicts (node, reachable, at) logged after ``since``."""
    out = []
    for line in (lab.workdir / "logs" / f"lbnode-{GATEWAY}.log").read_text().splitlines():
        if '"reachable"' not in line:
            continue
        try:
            t = json.loads(line)["timing"]
        except (ValueError, KeyError):
            continue
        if t["at"] >= since:
            out.append(t)
    return out


class Poller(threading.Thread):
    """Calls ``check`` every ``every`` s until it is true or stopped; ``at`` is when."""

    def __init__(self, check: Callable[[], bool], every: float) -> None:
        super().__init__(daemon=True)
        self.check, self.every = check, every
        self.at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.check():
                self.at = time.time()
                return
            self.done.wait(self.every)


def restart_gateway(lab: Lab, gateway: list[Proc], *extra: str) -> None:
    for p in gateway:
        p.stop()
        lab.procs.remove(p)
    gateway[:] = [start_gateway(lab, GATEWAY, *extra)]
    lab.procs.append(gateway[0])


def ready(lab: Lab, pod2: str) -> None:
    wait_until(lambda: healthy(lab) == {"node-1", "node-2", "node-3"}, "3 healthy nodes")
    wait_until(lambda: pod2 in node1_targets(lab), "node-1 DNATs to node-2's pod")


def one_run(lab: Lab, vip: str, pod2: str, seconds: float) -> dict[str, float]:
    loop = start_request_loop(lab.netns_of("client-1"), vip, RATE, int(RATE * seconds))
    status = Poller(lambda: "node-2" not in healthy(lab), 0.025)
    rules = Poller(lambda: pod2 not in node1_targets(lab), 0.05)
    try:
        time.sleep(LEAD)  # the loop's schedule
        down = time.time()
        lab.fail_node("node-2", stop_heartbeat=False)
        status.start()
        rules.start()
        requests = finish(loop)
    finally:
        if loop.poll() is None:
            loop.kill()
        status.done.set()
        rules.done.set()
        lab.restore_node("node-2")
    during = [r for r in requests if r.at >= down]
    failed = [r for r in requests if r.node is None and r.at >= down - 1.0]
    arp = [v["at"] for v in verdicts(lab, down) if v["node"] == "node-2" and not v["reachable"]]
    nan = float("nan")
    return {
        "verdict": (min(arp) - down) if arp else nan,
        "status": (status.at - down) if status.at else nan,
        "rules": (rules.at - down) if rules.at else nan,
        "last_fail": (max(r.at for r in failed) - down) if failed else 0.0,
        "failed": sum(1 for r in during if r.node is None) / len(during),
        "n_failed": float(sum(1 for r in requests if r.node is None)),
        "n": float(len(requests)),
    }


def cpu_load(lab: Lab, vip: str, seconds: float) -> dict[str, float]:
    """Two busy loops in node-2's namespace, bounded to ``seconds``, under the request loop."""
    busy = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    procs = [
        subprocess.Popen(netns_argv(lab.netns_of("node-2"), [sys.executable, "-c", busy]))
        for _ in range(2)
    ]
    start = time.time()
    unhealthy = Poller(lambda: "node-2" not in healthy(lab), 0.1)
    unhealthy.start()
    try:
        requests: list[Request] = finish(
            start_request_loop(lab.netns_of("client-1"), vip, RATE, int(RATE * seconds)),
            timeout=seconds + 60,
        )
    finally:
        unhealthy.done.set()
        for p in procs:
            p.wait(timeout=seconds + 30)
    false_arp = [v for v in verdicts(lab, start) if not v["reachable"]]
    return {
        "arp_false": float(len(false_arp)),
        "status_unhealthy": 1.0 if unhealthy.at else 0.0,
        "n_failed": float(sum(1 for r in requests if r.node is None)),
        "n": float(len(requests)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="link-down runs per mode")
    ap.add_argument(
        "--seconds", type=float, default=22.0, help="each request loop: 2 s, then the outage"
    )
    ap.add_argument("--load-seconds", type=float, default=30.0, help="busy loops and requests")
    args = ap.parse_args()
    lab = Lab.up(LabConfig(nodes=3, pods_per_node=1, zones=2, gateways=1, clients=1))
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        install(lab)
        gateway = [p for p in lab.procs if p.name == f"portico-lbnode-{GATEWAY}"]
        core = client.CoreV1Api(lab.api)
        core.create_namespaced_service(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME},
                "spec": {
                    "type": "LoadBalancer",
                    "externalTrafficPolicy": "Cluster",
                    "selector": {"app": "echo"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            },
        )
        wait_until(
            lambda: core.read_namespaced_service(NAME, NS).status.load_balancer.ingress, "IP"
        )
        vip = core.read_namespaced_service(NAME, NS).status.load_balancer.ingress[0].ip
        pod2 = next(str(p.ipv4) for p in lab.pods() if p.node == "node-2")
        for run in range(args.runs):
            for mode, extra in (("before", ["--neighbour-interval", "0"]), ("after", [])):
                restart_gateway(lab, gateway, *extra)
                ready(lab, pod2)
                r = one_run(lab, vip, pod2, args.seconds)
                # The next gateway starts from this one's report: node-2 back in it first.
                wait_until(lambda: not unreachable_reported(lab), "node-2 reachable again")
                results[mode].append(r)
                print(f"run {run + 1} {mode}: {json.dumps(r)}", flush=True)
        restart_gateway(lab, gateway)
        ready(lab, pod2)
        load = cpu_load(lab, vip, args.load_seconds)
        print(f"cpu load: {json.dumps(load)}", flush=True)
    finally:
        lab.down()

    def cell(xs: list[float], pct: bool = False) -> str:
        xs = [x for x in xs if x == x]
        if not xs:
            return "-"
        f = (lambda x: f"{100 * x:.1f} %") if pct else (lambda x: f"{x:.2f} s")
        return f"{f(statistics.median(xs))} ({f(min(xs))}-{f(max(xs))})"

    print(f"\nnode-2 link down under {RATE:.0f} req/s, ETP Cluster, 1 of 3 nodes; median (range)")
    print("| mode | runs | verdict | status | rules | last fail | failed | failed/total |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, rs in results.items():
        print(
            f"| {mode} | {len(rs)} | {cell([r['verdict'] for r in rs])} | "
            f"{cell([r['status'] for r in rs])} | {cell([r['rules'] for r in rs])} | "
            f"{cell([r['last_fail'] for r in rs])} | {cell([r['failed'] for r in rs], True)} | "
            f"{sum(int(r['n_failed']) for r in rs)}/{sum(int(r['n']) for r in rs)} |"
        )
    print(f"\nnode-2 CPU saturated ({args.load_seconds:.0f} s, 2 busy loops), default settings")
    print("| ARP verdicts 'unreachable' | probe verdict unhealthy | failed requests |")
    print("|---|---|---|")
    print(
        f"| {int(load['arp_false'])} | {'yes' if load['status_unhealthy'] else 'no'} | "
        f"{int(load['n_failed'])}/{int(load['n'])} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Portico and MetalLB's controller side by side: Service POSTed -> ingress seen by a watch.

One lab runs one portico-operator replica (default flags) and MetalLB's controller (v0.15.2, built
once by hack/build-metallb.sh), each with a pool on its own half of the lab's VIP range. MetalLB
is configured as its Helm chart configures it (charts/metallb, default values):

  - the CRDs, the namespace metallb-system, a Deployment `metallb-controller` (zero replicas: the
    binary runs as a process here; it owns the memberlist Secret, as in the chart),
  - env METALLB_ML_SECRET_NAME=metallb-memberlist, METALLB_DEPLOYMENT=metallb-controller and
    METALLB_NAMESPACE=metallb-system (the chart leaves the namespace to the service account's
    file, which a process outside a pod does not have),
  - args --port (a free one instead of 7472) --log-level=info --lb-class,
  - an IPAddressPool and an L2Advertisement naming it.
  Only the webhook is off (--webhook-mode=disabled): the apiserver could not reach it (no
  kube-proxy for its Service here), and it validates MetalLB's own CRs, never a Service.

Then, A: Services one at a time, alternating (Portico first on even rounds, MetalLB first on
odd ones): Portico's with no loadBalancerClass, MetalLB's with its class; each create waits for
its ingress, and --gap seconds (0.25) of quiet, before the next: one Service's latency, p50 /
p99 from the POST's answer (and from the POST sent) to the watch event showing the ingress.
B: bursts of --burst Services of one controller POSTed back to back (not waiting for
ingresses), the controllers alternating, 3 s of quiet before each: the sustained rate.

Why not back to back in A (what this bench did before, and reported MetalLB at 67 / 94 ms
against Portico's 5.5 / 50): MetalLB's clients have controller-runtime's default client-side
rate limit (20 requests/s, burst 30) and it makes two Service status writes per Service (the
apiserver defaults ipMode: VIP in the ingress MetalLB wrote; MetalLB's next look at the Service
sees its desired ingress, without ipMode, differ and writes again, a no-op). Back to back, the
two controllers alternating made ~11 MetalLB Services/s: once the burst of 30 was spent, each
MetalLB create waited for a token, and A measured that queue, not MetalLB's latency.
`--pacing spaced,back-to-back` still runs that too (in blocks of --block rounds interleaved with
the spaced ones); B measures the limit itself.

    .venv/bin/python bench/metallb_latency.py [--n 200] [--gap 0.25] [--burst 100]
                         [--burst-reps 2] [--pacing spaced[,back-to-back]] [--block 100]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    REPO,
    IngressWatch,
    Operator,
    create_and_time,
    free_port,
    install_portico,
    pct,
    service,
    wait_serving,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab, LabConfig
from portico_lab.procs import Proc

NS = "bench"
METALLB_VERSION = "v0.15.2"
METALLB_NS = "metallb-system"
METALLB_CLASS = "metallb.io/bench"
# The Helm chart's names for release "metallb": {{ fullname }}-controller, -memberlist.
METALLB_DEPLOYMENT = "metallb-controller"
METALLB_ML_SECRET = "metallb-memberlist"
PACINGS = ("spaced", "back-to-back")


def build_metallb() -> tuple[Path, Path]:
    """The controller binary and the directory of MetalLB's CRDs (built once, minutes)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "build-metallb.sh")],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, METALLB_VERSION=METALLB_VERSION),
    )
    bin_dir = Path(out.stdout.strip().splitlines()[-1])
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True
    ).stdout.strip()
    crds = Path(modcache) / f"go.universe.tf/metallb@{METALLB_VERSION}" / "config/crd/bases"
    return bin_dir / "controller", crds


def _create_custom(lab: Lab, plural: str, body: dict) -> None:
    custom = client.CustomObjectsApi(lab.api)
    # Right after Established the new resource may still 404 for a moment.
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.create_namespaced_custom_object(
                "metallb.io", "v1beta1", METALLB_NS, plural, body
            )
            return
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def install_metallb(lab: Lab, crds: Path, addresses: list[str]) -> None:
    """What the Helm chart installs for the controller: the CRDs, its namespace, the Deployment
    that owns the memberlist Secret (zero replicas), an IPAddressPool and an L2Advertisement."""
    lab.kubectl("apply", "--server-side", "-f", str(crds))
    lab.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/ipaddresspools.metallb.io",
        "crd/l2advertisements.metallb.io",
        "--timeout=60s",
    )
    lab.kubectl("create", "namespace", METALLB_NS, check=False)
    labels = {
        "app.kubernetes.io/name": "metallb",
        "app.kubernetes.io/instance": "metallb",
        "app.kubernetes.io/component": "controller",
    }
    client.AppsV1Api(lab.api).create_namespaced_deployment(
        METALLB_NS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": METALLB_DEPLOYMENT, "namespace": METALLB_NS, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "controller",
                                "image": f"quay.io/metallb/controller:{METALLB_VERSION}",
                            }
                        ]
                    },
                },
            },
        },
    )
    meta = {"name": "bench", "namespace": METALLB_NS}
    _create_custom(
        lab,
        "ipaddresspools",
        {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": meta,
         "spec": {"addresses": addresses}},
    )  # fmt: skip
    _create_custom(
        lab,
        "l2advertisements",
        {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": meta,
         "spec": {"ipAddressPools": ["bench"]}},
    )  # fmt: skip


def start_metallb(lab: Lab, binary: Path) -> Proc:
    env = dict(
        os.environ,
        KUBECONFIG=str(lab.kubeconfig),
        METALLB_NAMESPACE=METALLB_NS,
        METALLB_ML_SECRET_NAME=METALLB_ML_SECRET,
        METALLB_DEPLOYMENT=METALLB_DEPLOYMENT,
    )
    argv = [
        str(binary),
        f"--port={free_port()}",
        "--log-level=info",
        f"--lb-class={METALLB_CLASS}",
        "--webhook-mode=disabled",
    ]
    ml_env = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("METALLB_"))
    print(f"  MetalLB: {ml_env} {' '.join(argv)}", file=sys.stderr)
    return Proc("metallb-controller", argv, lab.workdir / "logs" / "metallb.log", env=env).start()


Sample = dict[str, float]  # ans, sent (ms), first (1.0 when first in its round), t (wall time)


def run_rounds(
    core: client.CoreV1Api,
    watch: IngressWatch,
    classes: dict[str, str | None],
    pacing: str,
    rounds: range,
    gap: float,
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {who: [] for who in classes}
    for i in rounds:
        order = list(classes) if i % 2 == 0 else list(reversed(classes))
        for k, who in enumerate(order):
            if pacing == "spaced":
                time.sleep(gap)
            name = f"{who.lower()}-{i:04d}"
            t0 = time.time()
            sent, ans = create_and_time(core, watch, service(name, NS, lb_class=classes[who]))
            out[who].append({"ans": ans, "sent": sent, "first": float(k == 0), "t": t0})
    return out


def burst(
    core: client.CoreV1Api, watch: IngressWatch, who: str, lb_class: str | None, k: int, tag: str
) -> dict[str, float]:
    """POSTs k Services of one controller back to back, then waits for every ingress."""
    names, answered = [], {}
    t0 = time.time()
    for j in range(k):
        name = f"{who.lower()}-{tag}-{j:04d}"
        core.create_namespaced_service(NS, service(name, NS, lb_class=lb_class))
        answered[name] = time.time()
        names.append(name)
    posted = time.time()
    seen = {n: watch.wait(n, 120) for n in names}
    last = max(seen.values())
    lat = [(seen[n] - answered[n]) * 1000 for n in names]
    return {
        "post_s": posted - t0,
        "last_s": last - t0,
        "lag_s": last - posted,
        "rate": k / (last - t0),
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="A: Services per controller")
    ap.add_argument("--warmup", type=int, default=10, help="A: rounds before the measured ones")
    ap.add_argument("--gap", type=float, default=0.25, help="A: seconds of quiet before a create")
    ap.add_argument("--burst", type=int, default=100, help="B: Services per burst (0: no B)")
    ap.add_argument("--burst-reps", type=int, default=2, help="B: bursts per controller")
    ap.add_argument(
        "--pacing", default="spaced", help="A: comma-separated, of " + ", ".join(PACINGS)
    )
    ap.add_argument("--block", type=int, default=100, help="A: rounds per block of one pacing")
    ap.add_argument(
        "--binary", type=Path, help="another MetalLB controller binary (a diagnostic build)"
    )
    args = ap.parse_args()
    pacings = [p for p in args.pacing.split(",") if p]
    assert pacings and all(p in PACINGS for p in pacings), args.pacing

    binary, crds = build_metallb()
    binary = args.binary or binary
    lab = Lab.up(LabConfig(nodes=3, pods_per_node=1, gateways=0, clients=0))
    op: Operator | None = None
    mlb: Proc | None = None
    watch: IngressWatch | None = None
    classes: dict[str, str | None] = {"Portico": None, "MetalLB": METALLB_CLASS}
    lat: dict[str, dict[str, list[Sample]]] = {p: {w: [] for w in classes} for p in pacings}
    took: dict[str, float] = dict.fromkeys(pacings, 0.0)
    bursts: dict[str, list[dict[str, float]]] = {w: [] for w in classes}
    try:
        v4 = lab.plan.vip_range_v4
        halves_v4 = list(v4.subnets(prefixlen_diff=1))
        install_portico(lab, [NS], [str(halves_v4[0])])
        install_metallb(lab, crds, [str(halves_v4[1])])
        core = client.CoreV1Api(lab.api)
        watch = IngressWatch(lab, NS)
        watch.start()
        watch.ready.wait(30)
        op = Operator(lab, "bench")
        mlb = start_metallb(lab, binary)
        lab.procs.append(mlb)  # lab.down() stops it for sure

        def check() -> None:
            if op is not None and not op.alive():
                raise RuntimeError(f"the operator exited:\n{op.log_tail(60)}")
            if mlb is not None and not mlb.alive():
                raise RuntimeError(f"MetalLB's controller exited:\n{mlb.log_tail(60)}")

        ready_p = wait_serving(core, watch, NS, "probe-portico", check=check)
        ready_m = wait_serving(
            core, watch, NS, "probe-metallb", lb_class=METALLB_CLASS, check=check
        )
        print(
            f"  serving after {ready_p:.1f} s (Portico), {ready_m:.1f} s (MetalLB)", file=sys.stderr
        )
        run_rounds(core, watch, classes, "spaced", range(-args.warmup, 0), args.gap)
        # A. Blocks of one pacing, alternating; 2 s of quiet before each block (MetalLB's token
        # bucket refills in 1.5 s) so that one block's backlog does not spill into the next.
        done = dict.fromkeys(pacings, 0)
        i = 0
        while any(done[p] < args.n for p in pacings):
            for p in pacings:
                k = min(args.block, args.n - done[p])
                if k <= 0:
                    continue
                time.sleep(2.0)
                t = time.time()
                got = run_rounds(core, watch, classes, p, range(i, i + k), args.gap)
                took[p] += time.time() - t
                for who, xs in got.items():
                    lat[p][who].extend(xs)
                done[p] += k
                i += k
            check()
        # B. Bursts, the controllers alternating which goes first.
        for r in range(args.burst_reps if args.burst > 0 else 0):
            order = list(classes) if r % 2 == 0 else list(reversed(classes))
            for who in order:
                time.sleep(3.0)
                bursts[who].append(burst(core, watch, who, classes[who], args.burst, f"b{r}"))
                check()
        # Each Service got its address from its own controller's pool.
        halves = {"Portico": halves_v4[0], "MetalLB": halves_v4[1]}
        for s in core.list_namespaced_service(NS).items:
            name = s.metadata.name
            who = "MetalLB" if s.spec.load_balancer_class == METALLB_CLASS else "Portico"
            ips = [i.ip for i in (s.status.load_balancer.ingress or [])]
            assert ips and all(ipaddress.ip_address(ip) in halves[who] for ip in ips), (name, ips)
    finally:
        if watch is not None:
            watch.close()
        if op is not None:
            op.stop()
        lab.down()

    labels = {
        "Portico": "Portico (no class)",
        "MetalLB": f"MetalLB {METALLB_VERSION} (--lb-class, Helm)",
    }
    print()
    print(
        "A. Service POSTed -> ingress seen by a watch, one Service at a time, the controllers "
        "alternating, one lab (ms)"
    )
    print()
    print(
        "| pacing | controller | n | p50 | p99 | max | mean | p50 from sent | p99 from sent "
        "| p50 when 1st / 2nd in its round |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in pacings:
        total = sum(len(xs) for xs in lat[p].values())
        label = (
            f"{args.gap * 1000:.0f} ms quiet before each"
            if p == "spaced"
            else f"back to back ({total / took[p]:.1f} Services/s)"
        )
        for who, xs in lat[p].items():
            ans = [x["ans"] for x in xs]
            sent = [x["sent"] for x in xs]
            first = [x["ans"] for x in xs if x["first"]]
            second = [x["ans"] for x in xs if not x["first"]]
            print(
                f"| {label} | {labels[who]} | {len(xs)} | {pct(ans, 50):.1f} | {pct(ans, 99):.1f} "
                f"| {max(ans):.1f} | {statistics.mean(ans):.1f} | {pct(sent, 50):.1f} "
                f"| {pct(sent, 99):.1f} | {pct(first, 50):.1f} / {pct(second, 50):.1f} |"
            )
    print()
    print("| A. pacing | MetalLB p50 / Portico p50 | MetalLB p99 / Portico p99 |")
    print("|---|---|---|")
    for p in pacings:
        m = [x["ans"] for x in lat[p]["MetalLB"]]
        q = [x["ans"] for x in lat[p]["Portico"]]
        print(f"| {p} | {pct(m, 50) / pct(q, 50):.2f} | {pct(m, 99) / pct(q, 99):.2f} |")
    if any(bursts.values()):
        print()
        print(
            f"| B. burst of {args.burst} Services POSTed back to back, one client | POSTs took "
            "| last ingress after | ... after the last POST | Services/s "
            "| p50 / p99 from its POST answered |"
        )
        print("|---|---|---|---|---|---|")
        for who, bs in bursts.items():
            for b in bs:
                print(
                    f"| {labels[who]} | {b['post_s']:.2f} s | {b['last_s']:.2f} s "
                    f"| {b['lag_s']:.2f} s | {b['rate']:.1f} | {b['p50']:.0f} / {b['p99']:.0f} ms |"
                )


if __name__ == "__main__":
    main()

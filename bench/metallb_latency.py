"""Portico and MetalLB's controller side by side: Service POSTed -> ingress seen by a watch.

Brings up one lab and runs in it both one portico-operator replica (default flags) and MetalLB's
controller (v0.15.2, built once by hack/build-metallb.sh) with `--lb-class`, each with a pool on
its own half of the lab's VIP range. Then N Services for each, one at a time, alternating
(Portico first on even rounds, MetalLB first on odd ones): Portico's with no loadBalancerClass,
MetalLB's with its class. The latency is from the POST's answer (and, second, from the POST
sent) to our watch's event that shows the ingress.

    .venv/bin/python bench/metallb_latency.py [--n 200]
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
METALLB_DEPLOYMENT = "controller"  # what MetalLB's manifests call it


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


def install_metallb(lab: Lab, crds: Path, addresses: list[str]) -> None:
    """MetalLB's CRDs, its namespace, the zero-replica Deployment that owns its memberlist
    Secret, and an IPAddressPool."""
    lab.kubectl("apply", "--server-side", "-f", str(crds))
    lab.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/ipaddresspools.metallb.io",
        "crd/l2advertisements.metallb.io",
        "--timeout=60s",
    )
    lab.kubectl("create", "namespace", METALLB_NS, check=False)
    apps = client.AppsV1Api(lab.api)
    labels = {"app": "metallb", "component": "controller"}
    apps.create_namespaced_deployment(
        METALLB_NS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": METALLB_DEPLOYMENT, "namespace": METALLB_NS},
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
    pool = {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": "bench", "namespace": METALLB_NS},
        "spec": {"addresses": addresses},
    }
    custom = client.CustomObjectsApi(lab.api)
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.create_namespaced_custom_object(
                "metallb.io", "v1beta1", METALLB_NS, "ipaddresspools", pool
            )
            return
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_metallb(lab: Lab, binary: Path) -> Proc:
    env = dict(
        os.environ,
        KUBECONFIG=str(lab.kubeconfig),
        METALLB_NAMESPACE=METALLB_NS,
        METALLB_ML_SECRET_NAME="memberlist",
        METALLB_DEPLOYMENT=METALLB_DEPLOYMENT,
    )
    argv = [
        str(binary),
        f"--lb-class={METALLB_CLASS}",
        "--webhook-mode=disabled",
        f"--port={free_port()}",
    ]
    return Proc("metallb-controller", argv, lab.workdir / "logs" / "metallb.log", env=env).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    binary, crds = build_metallb()
    lab = Lab.up(LabConfig(nodes=3, pods_per_node=1, gateways=0, clients=0))
    op: Operator | None = None
    mlb: Proc | None = None
    watch: IngressWatch | None = None
    lat: dict[str, list[tuple[float, float]]] = {"Portico": [], "MetalLB": []}
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
        classes = {"Portico": None, "MetalLB": METALLB_CLASS}
        for i in range(args.warmup + args.n):
            order = ["Portico", "MetalLB"] if i % 2 == 0 else ["MetalLB", "Portico"]
            for who in order:
                name = f"{who.lower()}-{i:04d}"
                t = create_and_time(core, watch, service(name, NS, lb_class=classes[who]))
                if i >= args.warmup:
                    lat[who].append(t)
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

    print()
    print(
        f"Service POSTed -> ingress seen by a watch, one at a time, alternating, "
        f"{args.n} Services each, one lab (ms)"
    )
    hdr = (
        f"{'controller':<28} {'n':>4} | {'p50':>6} {'p99':>6} {'max':>6} {'mean':>6} | "
        f"{'p50':>6} {'p99':>6}"
    )
    print(f"{'':<28} {'':>4} | {'from the POST answered':^27} | {'from sent':^13}")
    print(hdr)
    print("-" * len(hdr))
    labels = {
        "Portico": "Portico (no class)",
        "MetalLB": f"MetalLB {METALLB_VERSION} (--lb-class)",
    }
    for who, xs in lat.items():
        ans = [a for _, a in xs]
        sent = [s for s, _ in xs]
        print(
            f"{labels[who]:<28} {len(xs):>4} | {pct(ans, 50):>6.1f} {pct(ans, 99):>6.1f} "
            f"{max(ans):>6.1f} {statistics.mean(ans):>6.1f} | {pct(sent, 50):>6.1f} "
            f"{pct(sent, 99):>6.1f}"
        )


if __name__ == "__main__":
    main()

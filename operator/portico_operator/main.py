"""portico-operator: gives LoadBalancer Services their external IPs.

Watches Services (of type LoadBalancer with no loadBalancerClass or Portico's), VIPPools,
Namespaces, Nodes and EndpointSlices; allocates addresses from VIPPools, writes
status.loadBalancer.ingress, and keeps a LoadBalancer CR per Service that says what was done and
why. Several replicas may run: one leads (a Lease) and allocates, the others stand by warm.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import kopf
from portico_common.flagenv import EnvArgumentParser
from portico_common.kube import KubeClient, load_credentials
from portico_common.logs import setup_json_logging

from .controller import Controller
from .handlers import build_registry
from .leader import LeaderElector
from .metrics import Metrics
from .settings import DEFAULT_CLASS, OperatorSettings
from .values_sync import parse_configmap_ref


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = EnvArgumentParser(
        prog="portico-operator", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG or in-cluster")
    ap.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "portico-system"),
        help="namespace of the leader Lease (default: $POD_NAMESPACE)",
    )
    ap.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the Lease (default: $POD_NAME or hostname)",
    )
    ap.add_argument(
        "--load-balancer-class",
        default=DEFAULT_CLASS,
        help=f"the spec.loadBalancerClass served besides none (default {DEFAULT_CLASS})",
    )
    ap.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off)")
    ap.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    ap.add_argument("--lease-seconds", type=float, default=15.0)
    ap.add_argument("--renew-deadline", type=float, default=10.0)
    ap.add_argument("--retry-seconds", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument(
        "--resync-seconds",
        type=float,
        default=300.0,
        help="full relist that prunes what a watch gap hid (default 300)",
    )
    ap.add_argument(
        "--pools-configmap",
        default="",
        metavar="NAMESPACE/NAME",
        help="a ConfigMap whose pools.yaml lists VIPPools to keep in the cluster (the chart's "
        "`pools`): the leader creates, updates and deletes the pools it made from it "
        "(label portico.dev/managed-by-values=true) and never touches others (default: none)",
    )
    ap.add_argument("--log-level", default="info")
    ap.add_argument(
        "--trace-timings",
        action="store_true",
        help="log one JSON line per Service reconcile with its timings (benchmarks)",
    )
    return ap.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    settings = OperatorSettings(
        load_balancer_class=args.load_balancer_class,
        namespace=args.namespace,
        identity=args.identity,
        lease_seconds=args.lease_seconds,
        renew_deadline_seconds=args.renew_deadline,
        retry_seconds=args.retry_seconds,
        workers=args.workers,
        metrics_port=args.metrics_port,
        resync_seconds=args.resync_seconds,
        pools_configmap=args.pools_configmap,
    )
    creds = load_credentials(args.kubeconfig)
    kube = KubeClient(creds)
    # The Lease has a connection pool of its own: a renewal never waits behind bulk writes.
    lease_kube = KubeClient(creds, timeout=settings.renew_deadline_seconds)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    elector: LeaderElector | None = None
    ctl = Controller(
        settings, kube, metrics, may_write=lambda: elector is not None and elector.valid()
    )
    registry = build_registry(ctl, creds)
    elector = LeaderElector(
        lease_kube,
        settings.namespace,
        settings.lease_name,
        settings.identity,
        lease_seconds=settings.lease_seconds,
        renew_deadline=settings.renew_deadline_seconds,
        retry_seconds=settings.retry_seconds,
        on_change=ctl.set_leading,
    )
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.posting.enabled = False
    kopf_settings.scanning.disabled = True
    kopf_settings.watching.server_timeout = 300
    kopf_settings.queueing.idle_timeout = 60.0

    stop_kopf = asyncio.Event()
    background = [asyncio.create_task(ctl.run()), asyncio.create_task(elector.run())]

    async def hand_over() -> None:
        """On SIGTERM/SIGINT: stop renewing, stop every worker, then release the Lease, so a
        standby takes over within a retry of its watch; only then does kopf wind down."""
        background[1].cancel()
        await asyncio.gather(background[1], return_exceptions=True)
        await ctl.stop_leading()
        await elector.release()
        stop_kopf.set()

    signals = asyncio.create_task(_own_signals(lambda: asyncio.ensure_future(hand_over())))
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            clusterwide=True,
            liveness_endpoint=args.liveness,
            stop_flag=stop_kopf,
        )
    finally:
        signals.cancel()
        if not stop_kopf.is_set():
            await hand_over()
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await kube.close()
        await lease_kube.close()


async def _own_signals(on_signal: Callable[[], object]) -> None:
    """kopf installs SIGTERM/SIGINT handlers that start its own (seconds long) shutdown; ours
    must run first, to hand the Lease over at once. Wait for kopf's, then take them over."""
    loop = asyncio.get_running_loop()
    installed = getattr(loop, "_signal_handlers", None)
    for _ in range(1500):
        if installed is None or signal.SIGTERM in installed:
            break
        await asyncio.sleep(0.02)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pools_configmap:
        try:
            parse_configmap_ref(args.pools_configmap)
        except ValueError as e:
            print(f"portico-operator: {e}", file=sys.stderr)
            return 2
    setup_json_logging(args.log_level)
    # kopf logs every handler call at INFO: at thousands of Services that is most of the CPU.
    logging.getLogger("kopf").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("portico.timing").setLevel(
        logging.INFO if args.trace_timings else logging.WARNING
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

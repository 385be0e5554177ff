"""portico-operator: gives LoadBalancer Services their external IPs.

Watches Services (of type LoadBalancer with no loadBalancerClass or Portico's), IPPools,
Namespaces, Nodes and EndpointSlices; allocates addresses from IPPools, writes
status.loadBalancer.ingress, and keeps a LoadBalancer CR per Service that says what was done and
why. Several replicas may run: one leads (a Lease) and allocates, the others stand by warm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from typing import Any

import kopf
from portico_common.kube import KubeClient, load_credentials

from .controller import Controller
from .handlers import build_registry
from .leader import LeaderElector
from .metrics import Metrics
from .settings import DEFAULT_CLASS, OperatorSettings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
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
    )
    creds = load_credentials(args.kubeconfig)
    kube = KubeClient(creds)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    ctl = Controller(settings, kube, metrics)
    registry = build_registry(ctl, creds)
    elector = LeaderElector(
        kube,
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

    # kopf installs the SIGTERM/SIGINT handlers itself and returns when one arrives; then the
    # Lease is handed over (so a standby takes over at once) and the workers stop.
    workers = asyncio.create_task(ctl.run())
    leading = asyncio.create_task(elector.run())
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            clusterwide=True,
            liveness_endpoint=args.liveness,
        )
    finally:
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)
    await kube.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
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

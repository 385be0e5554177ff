"""portico-lbnode: the gateway. On a host on the nodes' L2 segment it turns every LoadBalancer
CR into a working VIP: it answers ARP (IPv4) and neighbour solicitations (IPv6) for the VIPs on
``--interface``, health-checks every backend node over HTTP, and forwards each packet for
``VIP:port`` unchanged to a healthy node chosen by a Maglev table over the flow's hash (direct
server return: the node's Portico rules do the NAT, the reply goes straight to the client).

It owns one nftables table, ``netdev portico-gw``, and never touches another. Stopping it
withdraws the announcements, marks its GatewayReport stopped and leaves the table, so a restart
keeps established flows on their nodes; ``--cleanup`` removes the table, for uninstalling.

Examples:
  portico-lbnode --kubeconfig ~/.kube/config --name gw-1 --interface eth0
  portico-lbnode --cleanup
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time

from portico_common.flagenv import EnvArgumentParser
from portico_common.kube import KubeClient, load_credentials
from portico_common.logs import setup_json_logging
from portico_common.ports import AGENT_HEALTH_PORT, KUBE_PROXY_HEALTHZ_PORT
from portico_common.tasks import run_together, run_until_signalled

from .flowrules import DEFAULT_FLOW_LIMIT
from .maglev import DEFAULT_TABLE_SIZE
from .neighbours import NeighbourSettings
from .prober import ProbeSettings

log = logging.getLogger("portico.lbnode")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = EnvArgumentParser(
        prog="portico-lbnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--name", default=os.environ.get("GATEWAY_NAME") or socket.gethostname())
    p.add_argument("--interface", action="append", default=[], help="the LAN device (repeatable)")
    p.add_argument("--zone", default="", help="this gateway's zone: prefer its nodes")
    p.add_argument("--table-size", type=int, default=DEFAULT_TABLE_SIZE, help="Maglev M, prime")
    p.add_argument(
        "--flow-limit",
        type=int,
        default=DEFAULT_FLOW_LIMIT,
        help="pinned flows per family and protocol (a full map pins no more: new flows go "
        "by the hash alone); a change drops the pins once",
    )
    p.add_argument("--probe-interval", type=float, default=1.0)
    p.add_argument("--probe-timeout", type=float, default=1.0)
    p.add_argument("--rise", type=int, default=2)
    p.add_argument("--fall", type=int, default=2)
    p.add_argument(
        "--node-health-port",
        type=int,
        default=AGENT_HEALTH_PORT,
        help="the node agents' port, where they offer the aggregate view (default "
        f"{AGENT_HEALTH_PORT}; without it there, a node is probed per Service)",
    )
    p.add_argument(
        "--neighbour-interval",
        type=float,
        default=0.1,
        help="seconds between ARP requests to each node (0: off, the probes alone judge)",
    )
    p.add_argument(
        "--neighbour-misses",
        type=int,
        default=3,
        help="unanswered ARP requests in a row that make a node unreachable",
    )
    p.add_argument(
        "--verify-interval",
        type=float,
        default=10.0,
        help="seconds between checks that the kernel's tables are as rendered (restored if"
        " not) and re-reads of the host's own addresses",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics (0: off)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--cleanup", action="store_true", help="remove the table and exit")
    args = p.parse_args(argv)
    if not args.cleanup and not args.interface:
        p.error("--interface (or PORTICO_INTERFACE) is required")
    return args


def serve_metrics(port: int) -> None:
    """Serves the default registry (0: not at all), where the prober's metrics (gateway.py) and
    the announcer's module-level counters are and prometheus_client put the runtime collectors,
    with the gateway's build_info."""
    if port:
        from portico_common.metrics import program_registry, serve
        from prometheus_client import REGISTRY

        serve(program_registry("gateway", REGISTRY), port)


async def run(args: argparse.Namespace) -> int:
    from .gateway import Gateway, GatewaySettings, rfc3339

    settings = GatewaySettings(
        name=args.name,
        interfaces=tuple(args.interface),
        zone=args.zone,
        table_size=args.table_size,
        flow_limit=args.flow_limit,
        probe=ProbeSettings(
            interval=args.probe_interval,
            timeout=args.probe_timeout,
            rise=args.rise,
            fall=args.fall,
            node_port=args.node_health_port,
            # Where a node has no aggregate view: kube-proxy's /healthz for Cluster Services.
            node_healthz_port=KUBE_PROXY_HEALTHZ_PORT,
        ),
        neighbour=NeighbourSettings(
            interval=args.neighbour_interval,
            timeout=1.5 * args.neighbour_interval,
            misses=args.neighbour_misses,
        ),
    )
    kube = KubeClient(load_credentials(args.kubeconfig))
    gw = Gateway(settings, kube)
    serve_metrics(args.metrics_port)  # once Gateway registered its prober's metrics
    try:
        if await run_until_signalled(
            run_together(
                gw.watch_loop(),
                gw.reconcile_loop(),
                gw.status_loop(),
                gw.verify_loop(args.verify_interval),
                gw.prober.run(),
                gw.neighbours.run(),
                gw.report.run(),
                *(a.run() for a in gw.announcers),
            )
        ):
            log.info("stopping: announcements withdrawn, the forwarding table stays in force")
    finally:
        await gw.withdraw()
        await gw.report.mark_stopped(rfc3339(time.time()))
        await gw.prober.close()
        await kube.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_json_logging(args.log_level)
    # httpx logs every request at INFO: one line per probe would drown the gateway's own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.cleanup:
        from .fwdnft import FwdTable
        from .natnft import NatTable

        FwdTable().delete()
        NatTable().delete()
        log.info("removed tables netdev portico-gw and inet portico-gw-nat")
        return 0
    log.info("portico-lbnode %s starting on %s (pid %d)", args.name, args.interface, os.getpid())
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

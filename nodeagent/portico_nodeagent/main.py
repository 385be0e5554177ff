"""portico-node-agent: programs this node's nftables NAT rules for Portico's LoadBalancer
Services.

It owns one table, ``inet portico``, and never touches another. Its rules come from the
cluster (``--kubeconfig``/in-cluster credentials and ``--node-name``): it watches every NodeRules
object the operator writes and its own Node, and renders what applies to this node (its Local
endpoints, its zone's hints, masquerade only toward other nodes). For tests and debugging they
can come from a file instead: a rendered ruleset (``--rules``, libnftables JSON) or the
renderer's input (``--input``: this node and its Services), re-read when it changes.

Each change is applied in one transaction through one long-lived libnftables handle, as
map-element and per-Service-chain changes rather than a reload. Every ``--verify-interval``
seconds the table is compared with what was applied and restored if someone flushed or edited
it. Stopping the agent leaves the rules in force (a restart re-applies idempotently: nothing
changes if the table is right); ``--cleanup`` removes the table, for uninstalling.

From the cluster it also serves, as kube-proxy does where kube-proxy does not run:
  * every externalTrafficPolicy=Local Service's healthCheckNodePort (any path): 200 with the
    count of this node's ready endpoints, 503 when there are none or the rules are stale;
  * --health-port (default 10262), the agent's own: /healthz as kube-proxy's, and
    /portico/v1/services, every Local Service's local endpoint counts and the rules' freshness
    in one answer (what the gateways probe);
  * --kube-proxy-healthz-port (default 10256): the same, where kube-proxy would answer /healthz.
A port another program holds (kube-proxy: 10256 and the healthCheckNodePorts, where it runs) is
left to it, logged, reported in the NodeAgent status, and retried.
Metrics (Prometheus) on --metrics-port; logs are JSON lines on stderr.

Examples:
  portico-node-agent --kubeconfig ~/.kube/config --node-name node-1
  NODE_NAME=node-1 portico-node-agent            # in a DaemonSet pod (in-cluster credentials)
  portico-node-agent --input /etc/portico/node.json --status /run/portico/status.json
  portico-node-agent --rules rules.json --once
  portico-node-agent --cleanup
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from portico_common.flagenv import EnvArgumentParser
from portico_common.logs import setup_json_logging
from portico_common.model import NodeRulesError

from .inputfile import input_from_json
from .nft import NftError, NftTable
from .render import render_node_rules
from .settings import AgentSettings
from .statusfile import write_status

log = logging.getLogger("portico.nodeagent")
DEFAULTS = AgentSettings()


def parse_args(argv: list[str] | None = None) -> AgentSettings:
    p = EnvArgumentParser(
        prog="portico-node-agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--kubeconfig",
        help="take rules from the cluster with these credentials (default without --rules or "
        "--input: in-cluster, or $KUBECONFIG)",
    )
    src.add_argument("--rules", type=Path, help="a rendered ruleset (libnftables JSON)")
    src.add_argument("--input", type=Path, help="the renderer's input: this node and its Services")
    src.add_argument(
        "--cleanup", action="store_true", help="remove Portico's table and exit (uninstall)"
    )
    p.add_argument("--once", action="store_true", help="apply once, then exit")
    p.add_argument(
        "--verify-interval",
        type=float,
        default=DEFAULTS.verify_interval,
        help="seconds between checks that the table is as applied (default 5)",
    )
    p.add_argument(
        "--render-check-interval",
        type=float,
        default=DEFAULTS.render_check_interval,
        help="seconds between checks that the rules in force equal a render from scratch of "
        "the same Services; 0 turns them off (default 60)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULTS.poll_interval,
        help="seconds between checks of the rules file for changes (default 0.1)",
    )
    p.add_argument(
        "--status",
        type=Path,
        help="write a JSON status here after every apply: content hash, time, counts, error",
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (default $NODE_NAME): whose endpoints are local",
    )
    p.add_argument(
        "--health-port",
        # --healthz-port: its name before the agent had a port of its own (it named the one
        # port where both were served, so it still sets that one).
        "--healthz-port",
        dest="health_port",
        type=int,
        default=DEFAULTS.health_port,
        help="the agent's own port: node health (/healthz) and the aggregate view the gateways "
        f"probe; 0 turns it off (default {DEFAULTS.health_port})",
    )
    p.add_argument(
        "--kube-proxy-healthz-port",
        type=int,
        default=DEFAULTS.kube_proxy_healthz_port,
        help="also answer node health here, as kube-proxy would, while no other program holds "
        f"it; 0 turns it off (default {DEFAULTS.kube_proxy_healthz_port})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULTS.metrics_port,
        help="Prometheus metrics port (default off)",
    )
    p.add_argument(
        "--log-level", default=DEFAULTS.log_level, choices=["debug", "info", "warning", "error"]
    )
    args = p.parse_args(argv)
    settings = AgentSettings(
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        rules=args.rules,
        input=args.input,
        cleanup=args.cleanup,
        once=args.once,
        verify_interval=args.verify_interval,
        render_check_interval=args.render_check_interval,
        poll_interval=args.poll_interval,
        status=args.status,
        health_port=args.health_port,
        kube_proxy_healthz_port=args.kube_proxy_healthz_port,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
    )
    if settings.from_cluster and not settings.node_name:
        p.error(
            "--node-name (or PORTICO_NODE_NAME or NODE_NAME) is required to take rules from "
            "the cluster"
        )
    return settings


def load_rules(settings: AgentSettings) -> tuple[dict[str, Any], str]:
    """The render to apply and the hash of the file it came from."""
    path = settings.rules_file
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    obj = json.loads(raw)
    if settings.input:
        node, services = input_from_json(obj)
        return render_node_rules(services, node), digest
    if not isinstance(obj, dict) or not isinstance(obj.get("nftables"), list):
        raise NodeRulesError(f"{path}: not a libnftables JSON document")
    return obj, digest


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.table = NftTable()
        self.stop = threading.Event()
        self.status: dict[str, Any] = {"hash": None, "applied": None, "error": None}
        self._seen: tuple[float, int, int] | None = None

    def _file_key(self) -> tuple[float, int, int] | None:
        try:
            st = self.settings.rules_file.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def apply_file(self) -> bool:
        """Applies the file if it changed since last time; True on success or no change."""
        key = self._file_key()
        if key is not None and key == self._seen:
            return True
        try:
            doc, digest = load_rules(self.settings)
            result = self.table.apply(doc)
        except (OSError, ValueError, NftError) as e:
            # Bad input or a failed transaction: the rules in force stay; say so. Bad input is
            # retried when the file changes, a failed transaction at the next poll.
            log.error("cannot apply rules: %s", e)
            self.status["error"] = str(e)
            write_status(self.settings.status, self.status)
            if not isinstance(e, NftError):
                self._seen = key
            return False
        self._seen = key
        self.status = {
            "hash": digest,
            "applied": time.time(),
            "error": None,
            "mode": result.mode,
            "commands": result.commands,
            "seconds": round(result.seconds, 6),
            "counts": self.table.stats.counts,
            "restores": self.table.stats.restores,
        }
        write_status(self.settings.status, self.status)
        log.info(
            "applied %s: %s, %d commands in %.2f ms",
            digest,
            result.mode,
            result.commands,
            result.seconds * 1000,
        )
        return True

    def verify(self) -> None:
        try:
            if self.table.verify():
                self.status["restores"] = self.table.stats.restores
                write_status(self.settings.status, self.status)
        except NftError as e:
            log.error("verify failed: %s", e)

    def run(self) -> int:
        ok = self.apply_file()
        if self.settings.once:
            return 0 if ok else 1
        next_verify = time.monotonic() + self.settings.verify_interval
        while not self.stop.wait(self.settings.poll_interval):
            self.apply_file()
            if time.monotonic() >= next_verify:
                self.verify()
                next_verify = time.monotonic() + self.settings.verify_interval
        return 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    setup_json_logging(settings.log_level)
    if settings.cleanup:
        try:
            NftTable().cleanup()
        except NftError as e:
            log.error("cleanup failed: %s", e)
            return 1
        log.info("removed table inet portico")
        return 0
    if settings.from_cluster:
        from .kubeagent import run_kube_agent

        log.info(
            "portico-node-agent starting for node %s (pid %d)", settings.node_name, os.getpid()
        )
        return run_kube_agent(settings)
    agent = Agent(settings)

    def _stop(signum: int, _frame: Any) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("portico-node-agent starting (pid %d)", os.getpid())
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())

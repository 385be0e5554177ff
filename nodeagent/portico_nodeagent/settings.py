"""Every knob of the node agent, in one place: what its command line sets (``main.parse_args``
builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portico_common.ports import AGENT_HEALTH_PORT, KUBE_PROXY_HEALTHZ_PORT


@dataclass(frozen=True)
class AgentSettings:
    node_name: str = ""  # whose endpoints are local; required to take rules from the cluster
    kubeconfig: str | None = None  # None: in-cluster credentials, or $KUBECONFIG
    rules: Path | None = None  # a rendered ruleset (libnftables JSON) instead of the cluster
    input: Path | None = None  # the renderer's input (this node and its Services) instead
    cleanup: bool = False  # remove Portico's table and exit
    once: bool = False  # apply once, then exit
    verify_interval: float = 5.0  # seconds between checks that the table is as applied
    # Seconds between checks that the applied rules equal a render from scratch of the same
    # Services (an incremental render that went wrong); 0: never.
    render_check_interval: float = 60.0
    poll_interval: float = 0.1  # seconds between checks of the rules file for changes
    status: Path | None = None  # a JSON status file, written after every apply
    health_port: int = AGENT_HEALTH_PORT  # node /healthz and the aggregate view; 0: off
    # kube-proxy's node /healthz port, answered as kube-proxy does while no other program (kube-
    # proxy) holds it; 0: off.
    kube_proxy_healthz_port: int = KUBE_PROXY_HEALTHZ_PORT
    metrics_port: int = 0  # Prometheus; 0: off
    log_level: str = "info"

    @property
    def from_cluster(self) -> bool:
        return not (self.cleanup or self.rules or self.input)

    @property
    def rules_file(self) -> Path:
        """The file the rules come from (``--rules`` or ``--input``), when not the cluster."""
        path = self.rules or self.input
        assert path is not None, "no --rules or --input"
        return path

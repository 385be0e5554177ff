"""Prometheus metrics of the node agent (``portico_nodeagent_*``; docs/metrics.md lists them)."""

from __future__ import annotations

from portico_common.metrics import program_registry, serve
from prometheus_client import Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = program_registry("nodeagent")
        self.applies = Counter(
            "portico_nodeagent_applies_total",
            "nftables transactions by mode (none, incremental, replace)",
            ["mode"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "portico_nodeagent_apply_seconds",
            "Time of one nftables transaction",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.errors = Counter(
            "portico_nodeagent_apply_errors_total",
            "Renders or transactions that failed",
            registry=r,
        )
        self.restores = Counter(
            "portico_nodeagent_table_restores_total",
            "Times the table was found changed by someone else and restored",
            registry=r,
        )
        self.render_drifts = Counter(
            "portico_nodeagent_render_drifts_total",
            "Times the rules in force differed from a render from scratch of the same Services "
            "(an incremental render went wrong; the table is rebuilt from scratch)",
            registry=r,
        )
        self.conntrack_deleted = Counter(
            "portico_nodeagent_conntrack_deleted_total",
            "Conntrack entries of UDP/SCTP flows to endpoints that left the rules",
            registry=r,
        )
        self.objects = Gauge(
            "portico_nodeagent_table_objects",
            "Objects in the table by kind (rules, elements...)",
            ["kind"],
            registry=r,
        )

    def observe_apply(self, mode: str, seconds: float, counts: dict[str, int]) -> None:
        self.applies.labels(mode).inc()
        if mode != "none":
            self.apply_seconds.observe(seconds)
        for kind, n in counts.items():
            self.objects.labels(kind).set(n)

    def serve(self, port: int) -> None:
        serve(self.registry, port)

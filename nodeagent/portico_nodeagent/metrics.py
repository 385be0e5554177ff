"""Prometheus metrics of the node agent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.applies = Counter(
            "portico_node_applies_total",
            "nftables transactions by mode (none, incremental, replace)",
            ["mode"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "portico_node_apply_seconds",
            "Time of one nftables transaction",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.errors = Counter(
            "portico_node_apply_errors_total", "Renders or transactions that failed", registry=r
        )
        self.restores = Counter(
            "portico_node_table_restores_total",
            "Times the table was found changed by someone else and restored",
            registry=r,
        )
        self.render_drifts = Counter(
            "portico_node_render_drifts_total",
            "Times the rules in force differed from a render from scratch of the same Services "
            "(an incremental render went wrong; the table is rebuilt from scratch)",
            registry=r,
        )
        self.conntrack_deleted = Counter(
            "portico_node_conntrack_deleted_total",
            "Conntrack entries of UDP/SCTP flows to endpoints that left the rules",
            registry=r,
        )
        self.objects = Gauge(
            "portico_node_rules",
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
        if port:
            start_http_server(port, registry=self.registry)

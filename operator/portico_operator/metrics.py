"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pool_addresses = Gauge(
            "portico_pool_addresses",
            "Addresses of a VIPPool by family and state (capacity, used, free)",
            ["pool", "family", "state"],
            registry=r,
        )
        self.allocations = Counter(
            "portico_allocations_total", "Addresses given to Services", ["family"], registry=r
        )
        self.releases = Counter(
            "portico_releases_total", "Addresses returned to their pool", ["family"], registry=r
        )
        self.failures = Counter(
            "portico_allocation_failures_total",
            "Services left without an address, by reason",
            ["reason"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "portico_reconcile_seconds",
            "Time to reconcile one object (in-memory work plus API writes)",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.api_writes = Counter(
            "portico_api_writes_total", "Writes to the apiserver by kind", ["kind"], registry=r
        )
        self.api_write_bytes = Counter(
            "portico_api_write_bytes_total",
            "Bytes of request bodies written to the apiserver by kind (NodeRules only so far)",
            ["kind"],
            registry=r,
        )
        self.is_leader = Gauge(
            "portico_leader", "1 when this replica is the allocating leader", registry=r
        )
        self.queue_depth = Gauge(
            "portico_work_queue_depth", "Keys waiting in a work queue", ["queue"], registry=r
        )
        self.services = Gauge(
            "portico_services", "LoadBalancer Services served by Portico", registry=r
        )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)

"""Prometheus metrics of the operator (``portico_operator_*``; docs/metrics.md lists them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from portico_common.kube import ApiError
from portico_common.metrics import program_registry, serve
from prometheus_client import Counter, Gauge, Histogram

from .errors import NotLeading

# An API write's result label, by the HTTP status of its refusal.
_RESULT_BY_STATUS = {404: "not_found", 409: "conflict", 422: "invalid"}


def write_result(error: BaseException | None) -> str:
    """The ``result`` label of a write that raised ``error`` (None: it succeeded)."""
    if error is None:
        return "success"
    if isinstance(error, NotLeading):
        return "not_leading"  # refused here, before it left: the Lease may have passed on
    if isinstance(error, ApiError):
        return _RESULT_BY_STATUS.get(error.status, "error")
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"  # the task was stopped (shutdown, leadership lost) mid-write
    return "error"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = program_registry("operator")
        # Capacity and used as two gauges, not one with a state label: every label of each can
        # be summed (over pools, over families) and free is their difference; a state label
        # would hold capacity too and double what a sum over it says.
        self.pool_addresses = Gauge(
            "portico_operator_pool_addresses",
            "Addresses a VIPPool holds (its capacity), by family",
            ["pool", "family"],
            registry=r,
        )
        self.pool_addresses_used = Gauge(
            "portico_operator_pool_addresses_used",
            "Addresses of a VIPPool given to Services, by family",
            ["pool", "family"],
            registry=r,
        )
        self.allocations = Counter(
            "portico_operator_allocations_total",
            "Addresses given to Services",
            ["family"],
            registry=r,
        )
        self.releases = Counter(
            "portico_operator_releases_total",
            "Addresses returned to their pool",
            ["family"],
            registry=r,
        )
        self.failures = Counter(
            "portico_operator_allocation_failures_total",
            "Services left without an address, by reason",
            ["reason"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "portico_operator_reconcile_seconds",
            "Time to reconcile one object (in-memory work plus API writes)",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.api_writes = Counter(
            "portico_operator_api_writes_total",
            "Writes to the apiserver by kind and result (success, conflict, not_found, invalid, "
            "not_leading, cancelled, error)",
            ["kind", "result"],
            registry=r,
        )
        self.api_write_bytes = Counter(
            "portico_operator_api_write_bytes_total",
            "Bytes of request bodies written to the apiserver by kind (NodeRules only so far)",
            ["kind"],
            registry=r,
        )
        self.is_leader = Gauge(
            "portico_operator_leader", "1 when this replica is the allocating leader", registry=r
        )
        self.queue_depth = Gauge(
            "portico_operator_work_queue_depth",
            "Keys waiting in a work queue",
            ["queue"],
            registry=r,
        )
        self.services = Gauge(
            "portico_operator_services", "LoadBalancer Services served by Portico", registry=r
        )

    @contextmanager
    def api_write(self, kind: str) -> Iterator[None]:
        """Counts the write made inside, by its result; what it raises goes on."""
        try:
            yield
        except BaseException as e:
            self.api_writes.labels(kind, write_result(e)).inc()
            raise
        self.api_writes.labels(kind, "success").inc()

    def serve(self, port: int) -> None:
        serve(self.registry, port)

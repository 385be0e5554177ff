"""The VIPPools' status: usage by family, and the Valid and Conflicting conditions, written when
they change, with a Warning Event when a pool becomes invalid or conflicting. What the status
says is pure (``lbspec.render_pool_status``); the controller's flusher calls ``flush`` at most
once a second, since usage changes with every allocation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from portico_common.clock import now_rfc3339 as now
from portico_common.kube import ApiError

from .cache import ClusterCache
from .lbspec import pool_status_differs, render_pool_status
from .metrics import Metrics
from .pools import Pool
from .term import Term
from .writes import Writes

log = logging.getLogger("portico.operator")


class PoolStatus:
    def __init__(self, term: Term, cache: ClusterCache, writes: Writes, metrics: Metrics) -> None:
        self.term = term
        self.alloc = term.alloc
        self.cache = cache
        self.writes = writes
        self.metrics = metrics

    async def flush(self) -> None:
        """Every pool's status, if the term's allocations changed since the last flush."""
        if not self.term.dirty_pools:
            return
        self.term.dirty_pools = False
        for name in list(self.cache.pool_objs):
            try:
                await self.reconcile(name)
            except ApiError as e:
                self.term.dirty_pools = True
                if e.status not in (404, 409):
                    log.warning("pool %s status: %s", name, e)

    def status(self, pool: Pool, obj: Mapping[str, Any]) -> dict[str, Any]:
        used = {f: self.alloc.used(pool, f) for f in (4, 6)}
        status = render_pool_status(
            pool, obj, used, self.alloc.conflicts.get(pool.name) or [], now()
        )
        for f in (4, 6):
            family = f"ipv{f}"
            self.metrics.pool_addresses.labels(pool.name, family).set(pool.capacity(f))
            self.metrics.pool_addresses_used.labels(pool.name, family).set(used[f])
        return status

    async def reconcile(self, name: str) -> None:
        obj = self.cache.pool_objs.get(name)
        if obj is None:
            return
        pool = self.alloc.pools.get(name)
        if pool is None:
            return
        desired = self.status(pool, obj)
        current = obj.get("status") or {}
        if not pool_status_differs(current, desired):
            return
        old_conditions = {c.get("type"): c for c in current.get("conditions") or []}
        updated = await self.writes.patch_pool_status(
            name, obj["metadata"]["resourceVersion"], desired
        )
        for c in desired["conditions"]:
            bad = (c["type"] == "Valid" and c["status"] == "False") or (
                c["type"] == "Conflicting" and c["status"] == "True"
            )
            prev = old_conditions.get(c["type"]) or {}
            if bad and (prev.get("status") != c["status"] or prev.get("message") != c["message"]):
                self.writes.pool_event(updated, c["reason"], c["message"])

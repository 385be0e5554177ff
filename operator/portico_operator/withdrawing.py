"""Withdrawing a Service that is gone, or no longer ours: the node rules, the Service status,
the LoadBalancer CR and the finalizer, in the order that keeps an address out of its pool until
nothing announces it. What is held and what is released is ``withdrawals`` (pure); this does the
writes, reports the releases and queues the Services a release may let in.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import decisions
from .cache import ClusterCache
from .metrics import Metrics
from .pools import IP
from .rules_writer import NodeRulesWriter
from .service import ServiceView
from .settings import OUR_SERVICE_CONDITIONS
from .term import Term
from .withdrawals import Released
from .writes import Writes


class Withdrawing:
    def __init__(
        self,
        term: Term,
        cache: ClusterCache,
        writes: Writes,
        rules: NodeRulesWriter,
        metrics: Metrics,
    ) -> None:
        self.term = term
        self.withdrawals = term.withdrawals
        self.cache = cache
        self.writes = writes
        self.rules = rules
        self.metrics = metrics

    async def forget_gone(self, key: str) -> None:
        """The Service no longer exists (deleted without our finalizer, or while nobody led)."""
        self.term.forget(key)
        self.rules.want(key, None)
        self.withdrawals.withdraw(key)
        if key in self.cache.lbs or self.withdrawals.holding(key):
            ns, _, name = key.partition("/")
            await self.writes.delete_lb(ns, name)  # its owner reference would have it collected
        self._finish_unless_publishing(key, None)

    async def withdraw(self, view: ServiceView) -> None:
        """The Service is going away, or is no longer ours: withdraw, clean up, let it go. The
        address returns to the pool only once neither the CR nor the Service carries it."""
        key = view.key
        self.term.forget(key)
        self.rules.want(key, None)  # nodes stop forwarding it before the address is free
        had = self.withdrawals.withdraw(key)
        ours = [c for c in view.conditions if c.get("type") in OUR_SERVICE_CONDITIONS]
        if (had or ours) and not view.deleting:
            # Clear only what we wrote: another implementation's status is not ours to touch.
            await self.writes.patch_service_status(
                view, decisions.withdrawal_status(view.conditions, OUR_SERVICE_CONDITIONS)
            )
        if key in self.cache.lbs or self.withdrawals.holding(key):
            await self.writes.delete_lb(view.namespace, view.name)
        if view.has_finalizer:
            # Before the address is free: a Service being deleted still shows it in its status
            # (what external-dns and users read) until the finalizer lets it go.
            await self.writes.remove_finalizer(view)
        self._finish_unless_publishing(key, view)

    def _finish_unless_publishing(self, key: str, view: ServiceView | None) -> None:
        """A publish of this key in flight may still write the CR with the old addresses: it
        sees the outcome gone, deletes the CR and finishes the withdrawal itself."""
        publishing = self.term.publish.active(key)
        self.report(self.withdrawals.finish_unless_publishing(key, publishing), view)

    async def abandon(self, key: str, view: ServiceView | None) -> None:
        """A publish found the Service withdrawn: the CR it may have written goes, and the
        withdrawal ends."""
        ns, _, name = key.partition("/")
        await self.writes.delete_lb(ns, name)
        self.report(self.withdrawals.published(key), view)

    def published(self, key: str, announced: Iterable[IP], view: ServiceView) -> None:
        """The CR carries exactly ``announced`` now: whatever else the Service gave up is free."""
        self.report(self.withdrawals.published(key, announced), view)

    def finish(self, key: str, view: ServiceView | None) -> None:
        """Nothing announces what the Service gave up any more (its CR is gone)."""
        self.report(self.withdrawals.finish(key), view)

    def report(self, released: Released, view: ServiceView | None) -> None:
        if not released:
            return
        self.term.dirty_pools = True
        for ip in released.freed:
            self.metrics.releases.labels(f"ipv{ip.version}").inc()
        if view is not None and released.freed:
            freed = ", ".join(map(str, released.freed))
            self.writes.service_event(view, "Normal", "Released", f"Released {freed}")
        for key in released.retry:
            self.term.queue.add(key)

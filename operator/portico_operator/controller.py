"""The operator's coordinator: its view of the cluster, leadership, and the workers.

kopf feeds ``apply_event`` from its watches: the caches (``cache.ClusterCache``, which every
replica keeps warm) record the event, and the leader queues what depends on it. A periodic fresh
listing (``resync``) makes the caches converge even across watch gaps. Only a leader allocates:
when it takes the lead it lists everything afresh and starts a new ``term.Term`` from the
cluster's state (``restore.build_allocator``) before any worker runs, and when it loses the lead
its workers are cancelled and the term is dropped. Every write is gated on the Lease still being
valid (``writes.GatedKube``).

The workers' jobs have modules of their own: ``allocating`` (stage one: addresses and the
Service status), ``publishing`` (stage two: the finalizer, the LoadBalancer CR, the node rules),
``withdrawing`` (a Service gone or no longer ours), ``pool_status`` (the VIPPools' status),
``rules_writer`` (the NodeRules shards) and ``values_sync`` (the chart's pools ConfigMap, made
VIPPools). What to decide is pure (decisions, withdrawals, ipam,
restore, resync, service, lbspec, noderules_push).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from portico_common.kube import ApiError, KubeClient
from portico_common.tasks import run_together

from . import ipam
from .allocating import Allocating
from .cache import LISTINGS, OPTIONAL_LISTINGS, ClusterCache, object_key
from .metrics import Metrics
from .pool_status import PoolStatus
from .pools import Pool
from .publishing import Publishing
from .reachability import decide
from .restore import build_allocator
from .rules_writer import NodeRulesWriter
from .settings import OperatorSettings
from .term import Term
from .values_sync import ValuesPools
from .withdrawing import Withdrawing
from .workers import run_worker
from .workqueue import WorkQueue
from .writes import GatedKube, Writes

log = logging.getLogger("portico.operator")

POOL_FLUSH_SECONDS = 1.0
REACHABILITY_CHECK_SECONDS = 5.0  # how often reports are checked for age


class Controller:
    def __init__(
        self,
        settings: OperatorSettings,
        kube: KubeClient,
        metrics: Metrics,
        *,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        self.reader = kube
        self.kube = GatedKube(kube, may_write)
        self.metrics = metrics
        # The view of the cluster (every replica keeps it warm); these names are its dicts.
        self.cache = ClusterCache()
        self.services = self.cache.services
        self.namespaces = self.cache.namespaces
        self.nodes = self.cache.nodes
        self.slices = self.cache.slices
        self.lbs = self.cache.lbs  # our LoadBalancer CRs, as last seen
        self.writes = Writes(self.kube, self.cache, metrics, settings.identity)
        # What the node agents program (NodeRules), and what they report (NodeAgent).
        self.rules = NodeRulesWriter(
            self.kube,
            self.metrics,
            on_written=lambda key: self.publish.add(key) if key in self.services else None,
            recheck_after=lambda key, delay: self.publish.add_after(key, delay),
        )
        self._start_term(ipam.Allocator())  # a standby's: idle, trusted by nobody
        self.synced = asyncio.Event()  # set once the first full listing is in the view
        self.leading = False  # True only while this replica leads *and* has rebuilt its view
        self._lead_task: asyncio.Task[None] | None = None
        self._want_lead = False
        # Gateway -> when its report was last written (this replica's monotonic clock).
        self.report_seen: dict[str, float] = {}
        # The chart's pools (--pools-configmap), made VIPPools by the leader.
        self.values_pools = (
            ValuesPools(kube, self.writes, settings.pools_configmap)
            if settings.pools_configmap
            else None
        )

    def _start_term(self, alloc: ipam.Allocator) -> None:
        """A new term, and the workers' jobs bound to it."""
        self.term = term = Term(alloc)
        self.withdrawing = Withdrawing(term, self.cache, self.writes, self.rules, self.metrics)
        self.allocating = Allocating(
            term, self.cache, self.writes, self.withdrawing, self.settings, self.metrics
        )
        self.publishing = Publishing(
            term, self.cache, self.writes, self.rules, self.withdrawing, self.settings
        )
        self.pool_status = PoolStatus(term, self.cache, self.writes, self.metrics)

    # The term's parts, by the names the rest of the controller uses.
    @property
    def alloc(self) -> ipam.Allocator:
        return self.term.alloc

    @property
    def queue(self) -> WorkQueue:
        return self.term.queue

    @property
    def publish(self) -> WorkQueue:
        return self.term.publish

    def parsed_pools(self) -> list[Pool]:
        return self.cache.parsed_pools()

    def _set_pools(self) -> None:
        self.alloc.set_pools(self.parsed_pools())
        self.term.dirty_pools = True

    # =========================================================================================
    # converging to a fresh listing
    # =========================================================================================
    async def list_everything(self) -> dict[str, list[dict[str, Any]]]:
        paths = list(LISTINGS.items())

        async def listing(kind: str, path: str) -> dict[str, Any]:
            try:
                return await self.reader.get(path)
            except ApiError as e:
                if e.status == 404 and kind in OPTIONAL_LISTINGS:
                    return {"items": []}
                raise

        replies = await asyncio.gather(*(listing(kind, path) for kind, path in paths))
        return {
            kind: list(r.get("items") or []) for (kind, _), r in zip(paths, replies, strict=True)
        }

    async def resync(self) -> list[tuple[str, str]]:
        """Lists everything afresh and makes the caches agree: takes what the watch missed,
        forgets what vanished unseen. Returns the (kind, key) pairs that changed."""
        since = self.cache.stamp
        listing = await self.list_everything()
        changed: list[tuple[str, str]] = []
        for kind, event_type, obj in self.cache.corrections(listing, since):
            self.apply_event(kind, event_type, obj)
            changed.append((kind, object_key(obj)))
        return changed

    def apply_event(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """One watch event (or a listing's correction): update the view and, on the leader,
        queue what depends on it. kopf's handlers and ``resync`` both come through here."""
        change = self.cache.apply(kind, event_type, obj)
        if change is None:
            return
        key = change.key
        if kind == "services":
            if change.deleted:
                st = self.term.states.get(key)
                if st is not None:
                    st.received = None
            elif self.leading:
                self.term.state(key).received = time.time()
            if self.leading:
                self.queue.add(key)
        elif kind == "namespaces":
            if change.changed and not change.deleted and self.leading:
                self.enqueue_namespace(key)
        elif kind == "pools":
            if change.changed:
                self._set_pools()
                if self.leading:
                    self.enqueue_all()
        elif kind == "nodes":
            if change.changed and self.leading:
                self.publish_all()  # backends changed: the CRs, not the allocations
        elif kind == "slices":
            if change.changed and self.leading and key in self.services:
                self.publish.add(key)
        elif kind == "agents":
            changed = self.rules.observe_agent(key, None if change.deleted else obj)
            if changed and self.leading:
                for k in self.rules.keys_in(changed):
                    if k in self.services:
                        self.publish.add(k)  # Programmed may have changed
        elif kind == "reports":
            if change.deleted:
                self.report_seen.pop(key, None)
            else:
                self.report_seen[key] = time.monotonic()
            self.update_reachability()
        elif kind == "lbs" and change.deleted and self.leading:
            view = self.services.get(key)
            if view is None or not view.has_finalizer:
                # Nothing announces what the CR carried any more. While our finalizer holds
                # the Service, its status may still show the address: the withdrawal finishes
                # it then.
                self.withdrawing.finish(key, view)
            if key in self.services:
                self.publish.add(key)  # someone deleted our CR: put it back

    def update_reachability(self) -> None:
        """Judges the gateways' reports again; a change republishes every Service (those that
        have no endpoint on the nodes concerned write nothing)."""
        now = time.monotonic()
        reach = decide(
            ((v, self.report_seen.get(k, now)) for k, v in self.cache.reports.items()), now
        )
        if reach == self.cache.reachability:
            return
        old, self.cache.reachability = self.cache.reachability, reach
        if reach.unreachable != old.unreachable:
            log.warning(
                "unreachable nodes (their endpoints are out of the other nodes' rules): %s",
                ", ".join(sorted(reach.unreachable)) or "none",
            )
        for gateway, (nodes, why) in reach.ignored.items():
            if old.ignored.get(gateway) != (nodes, why):
                log.warning("gateway %s: verdicts on %s ignored: %s", gateway, sorted(nodes), why)
        if self.leading:
            self.publish_all()

    async def _reachability_ticker(self) -> None:
        while True:
            await asyncio.sleep(REACHABILITY_CHECK_SECONDS)
            self.update_reachability()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                changed = await self.resync()
            except (ApiError, OSError, TimeoutError) as e:
                log.warning("resync: %s", e)
                continue
            if changed:
                log.info("resync: %d objects the watches had missed", len(changed))
                if self.leading:
                    self.enqueue_all()  # cheap: reconciles that change nothing write nothing
            if self.leading and self.values_pools is not None:
                self.values_pools.poke()  # a values pool deleted by hand comes back

    # =========================================================================================
    # triggers
    # =========================================================================================
    def served_keys(self) -> list[str]:
        cls = self.settings.load_balancer_class
        return [k for k, v in self.services.items() if v.served_by(cls) or v.has_finalizer]

    def enqueue_all(self) -> None:
        for key in self.served_keys():
            self.queue.add(key)
        # Services that vanished while nobody led still hold addresses or CRs: let them go.
        for key in set(self.alloc.by_service) | set(self.lbs):
            if not key.startswith(ipam.WITHDRAWING) and key not in self.services:
                self.queue.add(key)

    def publish_all(self) -> None:
        for key in self.served_keys():
            self.publish.add(key)

    def enqueue_namespace(self, namespace: str) -> None:
        for key, view in self.services.items():
            if view.namespace == namespace:
                self.queue.add(key)

    # =========================================================================================
    # leadership
    # =========================================================================================
    def set_leading(self, leading: bool) -> None:
        """The elector's callback. Taking the lead starts ``_lead`` (rebuild, then workers);
        losing it cancels every worker, in-flight reconciles included, at once."""
        if leading == self._want_lead:
            return
        self._want_lead = leading
        if leading:
            # A previous term may still be unwinding: the new one waits for it to end.
            self._lead_task = asyncio.create_task(self._lead(self._lead_task), name="lead")
        else:
            self.leading = False
            if self._lead_task is not None:
                self._lead_task.cancel()

    async def stop_leading(self) -> None:
        """Stops acting as leader and waits until every worker has stopped."""
        self.set_leading(False)
        if self._lead_task is not None:
            await asyncio.gather(self._lead_task, return_exceptions=True)
            self._lead_task = None

    async def take_over(self) -> None:
        """Starts a term whose allocator is rebuilt from a fresh, complete listing: what the
        previous leader wrote just before it went may not have reached this replica's watch."""
        t0 = time.perf_counter()
        await self.resync()
        # Built from the listing itself, with no await in between: a lagging watch's older
        # event applied meanwhile (a deleted Service's last update, say) would count.
        alloc = build_allocator(
            self.parsed_pools(),
            self.services.values(),
            self.lbs,
            self.namespaces,
            self.settings.load_balancer_class,
        )
        self._start_term(alloc)  # pool changes from now on reach the new allocator
        await self.rules.load(self.services, self.settings.load_balancer_class)
        log.info(
            "took the lead: %d Services, %d addresses restored in %.0f ms",
            len(self.services),
            len(alloc.holdings),
            (time.perf_counter() - t0) * 1000,
        )

    async def _lead(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            while True:
                try:
                    await self.take_over()
                    break
                except (ApiError, OSError, TimeoutError) as e:
                    log.warning("take-over listing: %s", e)
                    await asyncio.sleep(1)
            self.leading = True
            self.metrics.is_leader.set(1)
            self.enqueue_all()
            await self._run_workers()
        finally:
            self.leading = False
            self.metrics.is_leader.set(0)
            # A standby trusts nothing it computed as leader.
            standby = ipam.Allocator()
            standby.set_pools(self.parsed_pools())
            self._start_term(standby)

    # =========================================================================================
    # the workers
    # =========================================================================================
    async def run(self) -> None:
        """What every replica runs: a first full listing (a standby's view is complete before it
        may take over), then the periodic resync that keeps the view converged."""
        while not self.synced.is_set():
            try:
                await self.resync()
                self.synced.set()
                log.info("first full listing indexed: %d Services", len(self.services))
            except (ApiError, OSError, TimeoutError) as e:
                log.warning("first listing: %s", e)
                await asyncio.sleep(1)
        await self._resync_loop()

    async def _run_workers(self) -> None:
        n = self.settings.workers
        await run_together(
            *(self._worker(self.queue, self.allocating.reconcile, "service") for _ in range(n)),
            *(
                self._worker(self.publish, self.publishing.publish, "publish")
                for _ in range(max(1, n // 2))
            ),
            self._pool_flusher(),
            self.rules.flusher(),
            self._reachability_ticker(),
            *([] if self.values_pools is None else [self.values_pools.run()]),
        )

    async def _worker(
        self, queue: WorkQueue, fn: Callable[[str], Awaitable[None]], kind: str
    ) -> None:
        await run_worker(
            queue,
            fn,
            kind,
            leading=lambda: self.leading,
            step_down=lambda: self.set_leading(False),
            failures=self.term,
            depth=self.metrics.queue_depth.labels(kind),
            seconds=self.metrics.reconcile_seconds.labels(kind),
        )

    async def _pool_flusher(self) -> None:
        """Writes VIPPool status (usage, conditions) at most once a second: usage changes with
        every allocation, and a write per allocation would double the write load."""
        pools = self.pool_status  # this term's
        while True:
            await asyncio.sleep(POOL_FLUSH_SECONDS)
            if self.leading:
                await pools.flush()

"""The operator's I/O shell: its view of the cluster, leadership, and the reconcilers' writes.

kopf feeds ``apply_event`` from its watches: the caches (``cache.ClusterCache``, which every
replica keeps warm) record the event, and the leader queues what depends on it. A periodic fresh
listing (``resync``) makes the caches converge even across watch gaps. Only a
leader allocates: when it takes the lead it lists everything afresh and rebuilds its allocator
from the cluster's state (``restore.build_allocator``) before any worker runs, and when it loses
the lead its workers are cancelled and the allocator is dropped. Every write is gated on the
Lease still being valid. What to decide is pure (decisions, ipam, restore, resync, service,
lbspec, noderules_push); what the node agents get is written by ``rules_writer``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from portico_common import API_GROUP, API_VERSION
from portico_common.clock import now_rfc3339 as now
from portico_common.kube import ApiError, KubeClient, core_path, group_path
from portico_common.model import Endpoint
from portico_common.tasks import run_together

from . import decisions, ipam
from .cache import LISTINGS, OPTIONAL_LISTINGS, ClusterCache, object_key, slim
from .decisions import Outcome
from .errors import NotLeading
from .lbspec import (
    lb_conditions,
    lb_spec_body,
    lb_status_body,
    lb_status_current,
    pool_status_differs,
    render_pool_status,
    render_spec,
    service_status,
    status_differs,
)
from .metrics import Metrics
from .noderules_push import node_rules_entry
from .pools import Pool
from .restore import build_allocator
from .rules_writer import NodeRulesWriter
from .service import ServiceView, parse_service
from .settings import FIELD_MANAGER, FINALIZER, OUR_SERVICE_CONDITIONS, OperatorSettings
from .workers import run_worker
from .workqueue import WorkQueue

log = logging.getLogger("portico.operator")
# One JSON line per reconcile with where the time went (enabled by --trace-timings).
timing_log = logging.getLogger("portico.timing")

POOL_FLUSH_SECONDS = 1.0
# Allocation errors that are the user's typo, not the cluster's state: an addressed Service
# keeps its address through them.
BAD_INPUT_REASONS = (ipam.INVALID_REQUEST, ipam.WRONG_FAMILY)


def lb_path(namespace: str, name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "loadbalancers", namespace, name)


def pool_path(name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "ippools", None, name)


WRITE_METHODS = ("create", "replace", "patch", "delete")


class GatedKube:
    """The client the reconcilers write through: every write first checks that this replica
    still leads (its renew deadline has not passed), so a leader that was frozen or cut off
    never writes over its successor."""

    def __init__(self, kube: KubeClient, may_write: Callable[[], bool]) -> None:
        self._kube = kube
        self.may_write = may_write

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._kube, name)
        if name not in WRITE_METHODS:
            return attr

        async def gated(*args: Any, **kwargs: Any) -> Any:
            if not self.may_write():
                raise NotLeading(name)
            return await attr(*args, **kwargs)

        return gated


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
        self.alloc = ipam.Allocator()  # the leader's only: rebuilt at every take-over
        # Two stages: ``queue`` allocates and writes the Service status (what a user's
        # `kubectl apply` waits for); ``publish`` adds the finalizer and writes the LoadBalancer
        # CR. Splitting them keeps CR writes from delaying the next Service's address.
        self.queue = WorkQueue()
        self.publish = WorkQueue()
        self.outcomes: dict[str, Outcome] = {}
        # Withdrawals a publish in flight must finish: it may still write the old addresses.
        self.deferred_finish: set[str] = set()
        # What the node agents program (NodeRules), and what they report (NodeAgent).
        self.rules = NodeRulesWriter(
            self.kube,
            self.metrics,
            on_written=lambda key: self.publish.add(key) if key in self.services else None,
            recheck_after=lambda key, delay: self.publish.add_after(key, delay),
        )
        # The view of the cluster (every replica keeps it warm); these names are its dicts.
        self.cache = ClusterCache()
        self.services = self.cache.services
        self.good: dict[str, ServiceView] = {}  # each Service's last valid configuration
        self.namespaces = self.cache.namespaces
        self.nodes = self.cache.nodes
        self.slices = self.cache.slices
        self.lbs = self.cache.lbs  # our LoadBalancer CRs, as last seen
        self.pending: set[str] = set()  # Services waiting for an address
        self.last_reason: dict[str, str] = {}  # last failure reported, to not repeat Events
        self.dirty_pools = True
        self.synced = asyncio.Event()  # set once the first full listing is in the view
        self.leading = False  # True only while this replica leads *and* has rebuilt its view
        self.failures: dict[str, int] = {}
        self.received: dict[str, float] = {}  # key -> wall time its last event arrived
        self._lead_task: asyncio.Task[None] | None = None
        self._want_lead = False

    def parsed_pools(self) -> list[Pool]:
        return self.cache.parsed_pools()

    def _set_pools(self) -> None:
        self.alloc.set_pools(self.parsed_pools())
        self.dirty_pools = True

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
                self.received.pop(key, None)
            elif self.leading:
                self.received[key] = time.time()
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
        elif kind == "lbs" and change.deleted and self.leading:
            view = self.services.get(key)
            if view is None or not view.has_finalizer:
                # Nothing announces what the CR carried any more. While our finalizer holds
                # the Service, its status may still show the address: the withdrawal finishes
                # it then.
                self._finish_withdrawal(key, (), view)
            if key in self.services:
                self.publish.add(key)  # someone deleted our CR: put it back

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

    def retry_pending(self) -> None:
        for key in list(self.pending):
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
        """Rebuilds the allocator from a fresh, complete listing: what the previous leader
        wrote just before it went may not have reached this replica's watch yet."""
        t0 = time.perf_counter()
        await self.resync()
        self.alloc = build_allocator(
            self.parsed_pools(),
            self.services.values(),
            self.lbs,
            self.namespaces,
            self.settings.load_balancer_class,
        )
        await self.rules.load(self.services, self.settings.load_balancer_class)
        self.outcomes.clear()
        self.deferred_finish.clear()
        self.pending.clear()
        self.last_reason.clear()
        self.failures.clear()
        self.queue = WorkQueue()
        self.publish = WorkQueue()
        self.dirty_pools = True
        log.info(
            "took the lead: %d Services, %d addresses restored in %.0f ms",
            len(self.services),
            len(self.alloc.holdings),
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
            self.alloc = ipam.Allocator()  # a standby trusts nothing it computed as leader
            self.alloc.set_pools(self.parsed_pools())

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
            *(self._worker(self.queue, self.reconcile_service, "service") for _ in range(n)),
            *(
                self._worker(self.publish, self.publish_service, "publish")
                for _ in range(max(1, n // 2))
            ),
            self._pool_flusher(),
            self.rules.flusher(),
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
            failures=self.failures,
            depth=self.metrics.queue_depth.labels(kind),
            seconds=self.metrics.reconcile_seconds.labels(kind),
        )

    # =========================================================================================
    # reconciling one Service
    # =========================================================================================
    async def reconcile_service(self, key: str) -> None:
        t_start = time.time()
        t_received = self.received.get(key)  # the event that queued this reconcile
        view = self.services.get(key)
        step = decisions.reconcile_step(view, self.settings.load_balancer_class)
        if step is decisions.Step.FORGET:
            await self._forget_gone(key)
            return
        assert view is not None
        if step is decisions.Step.WITHDRAW:
            await self._withdraw(view)
            return
        self.metrics.services.set(
            sum(1 for k in self.alloc.by_service if not k.startswith(ipam.WITHDRAWING))
        )

        input_error = view.input_error()
        if input_error is not None:
            await self._bad_input(view, input_error)
            return
        mode = view.forwarding_mode()
        try:
            result = self.alloc.assign(view.claim(self.namespaces.get(view.namespace, {})))
        except ipam.AllocationError as e:
            if e.reason in BAD_INPUT_REASONS:
                await self._bad_input(view, str(e), e.reason)
            else:
                await self._fail(view, mode, e.reason, str(e))
            return
        self.good[key] = view
        self.pending.discard(key)
        self.last_reason.pop(key, None)
        old = set(view.ingress_ips())
        vips = result.ips
        pools = sorted(set(result.pools))
        message = decisions.allocation_message(vips, pools, (w.message for w in result.warnings))
        desired = service_status(view, vips, mode, True, "Allocated", message, now())
        t_patch = time.time()
        patched = status_differs(view, desired)
        if patched:
            updated = await self._patch_service_status(view, desired)
            view = self._observed(updated)
        t_patched = time.time()
        if set(vips) != old:
            self.dirty_pools = True
            for ip in set(vips) - old:
                self.metrics.allocations.labels(f"ipv{ip.version}").inc()
            self._event(view, "Normal", "Allocated", f"Allocated {message}")
        self.outcomes[key] = decisions.allocated(vips, pools, mode, message)
        self.publish.add(key)
        if timing_log.isEnabledFor(logging.INFO):
            timing_log.info(
                "%s",
                json.dumps(
                    {
                        "key": key,
                        "received": t_received,
                        "start": t_start,
                        "patch": t_patch,
                        "patched": t_patched if patched else None,
                        "end": time.time(),
                        "services": len(self.services),
                    }
                ),
            )

    def _observed(self, obj: Mapping[str, Any]) -> ServiceView:
        """Takes our own write's answer as the newest view (the watch brings it again)."""
        self.cache.apply("services", "MODIFIED", obj)
        return self.services.get(object_key(obj)) or parse_service(obj)

    async def _bad_input(
        self, view: ServiceView, error: str, reason: str = ipam.INVALID_REQUEST
    ) -> None:
        """An annotation or field that cannot be used. A Service that has addresses keeps them
        and its last valid configuration; one that has none waits, as for any unmet request."""
        key = view.key
        kept = decisions.kept_on_bad_input(
            view.ingress_ips(),
            self.alloc.holds(key),
            self.outcomes.get(key),
            self._announced_mode(view),
            error,
            self.alloc.pool_of,
        )
        if kept is None:
            await self._fail(view, self._announced_mode(view), reason, error, input_error=error)
            return
        vips, mode, message = kept.vips, kept.mode, kept.message
        desired = service_status(view, vips, mode, True, "Allocated", message, now(), error)
        if status_differs(view, desired):
            view = self._observed(await self._patch_service_status(view, desired))
        if decisions.reason_changed(self.last_reason.get(key), reason, error):
            self.last_reason[key] = f"{reason}:{error}"
            self._event(
                view,
                "Warning",
                reason,
                f"{error}; the Service keeps {', '.join(map(str, vips))} and its last valid "
                "configuration until this is fixed",
            )
        self.outcomes[key] = kept
        self.publish.add(key)

    def _announced_mode(self, view: ServiceView) -> str:
        """The forwarding mode in force: the CR's, or else what the ingress says."""
        return decisions.mode_in_force((self.lbs.get(view.key) or {}).get("spec"), view.ingress)

    async def _fail(
        self,
        view: ServiceView,
        mode: str,
        reason: str,
        message: str,
        input_error: str | None = None,
    ) -> None:
        key = view.key
        if self.alloc.holds(key):
            # The address stays out of the pool until the CR no longer carries it (publish).
            self.alloc.begin_withdrawal(key)
        self.pending.add(key)  # met as soon as possible: any release or pool change retries it
        self.metrics.failures.labels(reason).inc()
        desired = service_status(view, (), mode, False, reason, message, now(), input_error)
        if status_differs(view, desired):
            view = self._observed(await self._patch_service_status(view, desired))
        if decisions.reason_changed(self.last_reason.get(key), reason, message):
            self.last_reason[key] = f"{reason}:{message}"
            self._event(view, "Warning", reason, message)
        self.outcomes[key] = decisions.failed(mode, reason, message, input_error)
        self.publish.add(key)

    async def publish_service(self, key: str) -> None:
        """Stage two: the finalizer and the LoadBalancer CR, from the last allocation outcome."""
        view = self.services.get(key)
        outcome = self.outcomes.get(key)
        if outcome is None:
            if key in self.deferred_finish:
                # The publish the withdrawal waited for failed before it could finish it (a
                # conflict, say): this retry does, once the CR is surely gone.
                ns, _, name = key.partition("/")
                await self._delete_lb(ns, name)
                self.deferred_finish.discard(key)
                self._finish_withdrawal(key, (), view)
            return
        if view is None or view.deleting:
            return
        if not view.served_by(self.settings.load_balancer_class):
            return
        if not view.has_finalizer:
            await self._add_finalizer(view)
            view = self.services[key]
        basis = self.good.get(key, view) if outcome.input_error else view
        # One reading of the endpoints for the CR and the node rules (a slice that changes
        # meanwhile queues this publish again).
        endpoints = [ep for eps in self.slices.get(key, {}).values() for ep in eps]
        await self._apply_lb(view, basis, outcome, endpoints)
        if key not in self.outcomes:
            # Withdrawn (stage one) while this wrote: do not leave a CR behind.
            self.rules.want(key, None)
            await self._delete_lb(view.namespace, view.name)
            self.deferred_finish.discard(key)
            self._finish_withdrawal(key, (), view)
            return
        self.rules.want(
            key,
            node_rules_entry(basis, outcome.vips, outcome.mode, endpoints)
            if outcome.vips
            else None,
        )
        # The CR carries exactly these now: whatever else the Service gave up is free.
        self.deferred_finish.discard(key)
        self._finish_withdrawal(key, outcome.vips, view)
        if outcome.mode == "NAT":
            await self._check_node_ports(view)

    def _finish_withdrawal(
        self, key: str, announced: tuple[Any, ...], view: ServiceView | None = None
    ) -> None:
        gone = set(self.alloc.withdrawing(key)) - set(announced)
        if not gone:
            return
        freed = self.alloc.finish_withdrawal(key, announced)
        self.dirty_pools = True
        for ip in freed:
            self.metrics.releases.labels(f"ipv{ip.version}").inc()
        if view is not None and freed:
            self._event(view, "Normal", "Released", f"Released {', '.join(map(str, freed))}")
        # Even when a sharer still holds the address, the ports or the sharing constraint that
        # kept a pending Service out may be gone with this one.
        self.retry_pending()

    def _finish_unless_publishing(self, key: str, view: ServiceView | None) -> None:
        """A publish of this key in flight may still write the CR with the old addresses: it
        sees the outcome gone, deletes the CR and finishes the withdrawal itself."""
        if self.publish.active(key):
            self.deferred_finish.add(key)
        else:
            self._finish_withdrawal(key, (), view)

    def _forget_state(self, key: str) -> None:
        self.outcomes.pop(key, None)
        self.good.pop(key, None)
        self.pending.discard(key)
        self.failures.pop(f"service:{key}", None)
        self.last_reason.pop(key, None)
        self.last_reason.pop(f"NodePortsMissing:{key}", None)

    async def _forget_gone(self, key: str) -> None:
        """The Service no longer exists (deleted without our finalizer, or while nobody led)."""
        self._forget_state(key)
        self.rules.want(key, None)
        self.alloc.begin_withdrawal(key)
        if key in self.lbs or self.alloc.withdrawing(key):
            ns, _, name = key.partition("/")
            await self._delete_lb(ns, name)  # its owner reference would have it collected too
        self._finish_unless_publishing(key, None)

    async def _withdraw(self, view: ServiceView) -> None:
        """The Service is going away, or is no longer ours: withdraw, clean up, let it go. The
        address returns to the pool only once neither the CR nor the Service carries it."""
        key = view.key
        self._forget_state(key)
        self.rules.want(key, None)  # nodes stop forwarding it before the address is free
        had = self.alloc.begin_withdrawal(key)
        ours = [c for c in view.conditions if c.get("type") in OUR_SERVICE_CONDITIONS]
        if (had or ours) and not view.deleting:
            # Clear only what we wrote: another implementation's status is not ours to touch.
            await self._patch_service_status(
                view, decisions.withdrawal_status(view.conditions, OUR_SERVICE_CONDITIONS)
            )
        if key in self.lbs or self.alloc.withdrawing(key):
            await self._delete_lb(view.namespace, view.name)
        if view.has_finalizer:
            # Before the address is free: a Service being deleted still shows it in its status
            # (what external-dns and users read) until the finalizer lets it go.
            await self._remove_finalizer(view)
        self._finish_unless_publishing(key, view)

    async def _delete_lb(self, namespace: str, name: str) -> None:
        try:
            await self.kube.delete(lb_path(namespace, name))
            self.metrics.api_writes.labels("loadbalancer_delete").inc()
        except ApiError as e:
            if e.status != 404:
                raise
        self.lbs.pop(f"{namespace}/{name}", None)

    # -- writes ----------------------------------------------------------------------------------
    async def _patch_service_status(
        self, view: ServiceView, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {"metadata": {"resourceVersion": view.resource_version}, "status": status}
        self.metrics.api_writes.labels("service_status").inc()
        return await self.kube.patch(
            core_path("services", view.namespace, view.name) + "/status", body
        )

    async def _add_finalizer(self, view: ServiceView) -> None:
        body = {
            "metadata": {
                "resourceVersion": view.resource_version,
                "finalizers": [*view.finalizers, FINALIZER],
            }
        }
        self.metrics.api_writes.labels("service_finalizer").inc()
        updated = await self.kube.patch(core_path("services", view.namespace, view.name), body)
        self._observed(updated)

    async def _remove_finalizer(self, view: ServiceView) -> None:
        body = {
            "metadata": {
                "resourceVersion": view.resource_version,
                "finalizers": [f for f in view.finalizers if f != FINALIZER],
            }
        }
        self.metrics.api_writes.labels("service_finalizer").inc()
        try:
            await self.kube.patch(core_path("services", view.namespace, view.name), body)
        except ApiError as e:
            if e.status != 404:
                raise

    async def _apply_lb(
        self, view: ServiceView, basis: ServiceView, outcome: Outcome, endpoints: list[Endpoint]
    ) -> None:
        """The CR: identity from ``view``, configuration from ``basis`` (the last valid one)."""
        vips, pool, mode = outcome.vips, outcome.pool, outcome.mode
        allocated, reason, message = outcome.allocated, outcome.reason, outcome.message
        spec = render_spec(basis, vips, pool, mode, self.nodes.values(), endpoints)
        current = self.lbs.get(view.key) or {}
        generation = (current.get("metadata") or {}).get("generation")
        if current.get("spec") != spec:
            self.metrics.api_writes.labels("loadbalancer_spec").inc()
            applied = await self.kube.patch(
                lb_path(view.namespace, view.name),
                lb_spec_body(view, spec),
                kind="apply",
                field_manager=FIELD_MANAGER,
                force=True,
            )
            current = self.lbs[view.key] = slim(applied)
            generation = applied["metadata"].get("generation")
        previous = (current.get("status") or {}).get("conditions") or []
        t, gen = now(), generation or 0
        programmed = self.rules.programmed_condition(view.key, vips, spec, gen, t, previous)
        conds = lb_conditions(
            basis,
            allocated,
            reason,
            message,
            outcome.input_error,
            mode,
            gen,
            t,
            previous,
            programmed,
        )
        if lb_status_current(current.get("status"), conds, generation):
            return
        self.metrics.api_writes.labels("loadbalancer_status").inc()
        applied = await self.kube.patch(
            lb_path(view.namespace, view.name) + "/status",
            lb_status_body(view, generation, conds),
            kind="apply",
            field_manager=FIELD_MANAGER,
            force=True,
        )
        self.lbs[view.key] = slim(applied)

    async def _check_node_ports(self, view: ServiceView) -> None:
        missing = [p for p in view.ports if not p.node_port]
        if missing and not view.allocate_node_ports:
            key = f"NodePortsMissing:{view.key}"
            if self.last_reason.get(key) is None:
                self.last_reason[key] = "reported"
                self._event(
                    view,
                    "Warning",
                    "NodePortsMissing",
                    "forwarding mode NAT sends traffic to nodePorts, but "
                    "allocateLoadBalancerNodePorts is false and ports "
                    f"{', '.join(str(p.port) for p in missing)} have none: set it to true or "
                    "give those ports a nodePort",
                )

    def _event(self, view: ServiceView, kind: str, reason: str, message: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{view.name}.", "namespace": view.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "name": view.name,
                "namespace": view.namespace,
                "uid": view.uid,
                "resourceVersion": view.resource_version,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "portico-operator"},
            "reportingComponent": "portico.dev/operator",
            "reportingInstance": self.settings.identity,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        self._background(self.kube.create(core_path("events", view.namespace), body), "event")

    def _background(self, coro: Any, what: str) -> None:
        task = asyncio.ensure_future(coro)

        def done(t: asyncio.Future[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s: %s", what, t.exception())

        task.add_done_callback(done)

    # =========================================================================================
    # pools
    # =========================================================================================
    async def _pool_flusher(self) -> None:
        """Writes IPPool status (usage, conditions) at most once a second: usage changes with
        every allocation, and a write per allocation would double the write load."""
        while True:
            await asyncio.sleep(POOL_FLUSH_SECONDS)
            if not (self.dirty_pools and self.leading):
                continue
            self.dirty_pools = False
            for name in list(self.cache.pool_objs):
                try:
                    await self.reconcile_pool(name)
                except ApiError as e:
                    self.dirty_pools = True
                    if e.status not in (404, 409):
                        log.warning("pool %s status: %s", name, e)

    def pool_status(self, pool: Pool, obj: Mapping[str, Any]) -> dict[str, Any]:
        used = {f: self.alloc.used(pool, f) for f in (4, 6)}
        status = render_pool_status(
            pool, obj, used, self.alloc.conflicts.get(pool.name) or [], now()
        )
        for f in (4, 6):
            for state, v in status[f"ipv{f}"].items():
                self.metrics.pool_addresses.labels(pool.name, f"ipv{f}", state).set(v)
        return status

    async def reconcile_pool(self, name: str) -> None:
        obj = self.cache.pool_objs.get(name)
        if obj is None:
            return
        pool = self.alloc.pools.get(name)
        if pool is None:
            return
        desired = self.pool_status(pool, obj)
        current = obj.get("status") or {}
        if not pool_status_differs(current, desired):
            return
        old_conditions = {c.get("type"): c for c in current.get("conditions") or []}
        self.metrics.api_writes.labels("ippool_status").inc()
        updated = await self.kube.patch(
            pool_path(name) + "/status",
            {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": desired,
            },
        )
        self.cache.pool_objs[name] = updated
        for c in desired["conditions"]:
            bad = (c["type"] == "Valid" and c["status"] == "False") or (
                c["type"] == "Conflicting" and c["status"] == "True"
            )
            prev = old_conditions.get(c["type"]) or {}
            if bad and (prev.get("status") != c["status"] or prev.get("message") != c["message"]):
                self._pool_event(updated, c["reason"], c["message"])

    def _pool_event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": "default"},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "IPPool",
                "name": meta["name"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "portico-operator"},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        self._background(self.kube.create(core_path("events", "default"), body), "pool event")

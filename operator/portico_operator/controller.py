"""The operator's brain: its view of the cluster, and the reconcilers that act on it.

kopf feeds ``observe_*`` (from indexers, so the whole first listing is seen before any handler
runs) and ``forget_*``; the leader's workers run ``reconcile_*`` from a keyed queue. Everything
that decides is pure (ipam, service, lbspec); this module does the bookkeeping and the writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from portico_common import API_GROUP, API_VERSION
from portico_common.kube import ApiError, KubeClient, core_path, group_path

from . import ipam
from .lbspec import (
    EndpointView,
    NodeView,
    condition,
    node_ports_condition,
    parse_endpoint_slice,
    parse_node,
    render_spec,
    same_conditions,
    service_status,
    status_differs,
)
from .metrics import Metrics
from .pools import INT64_MAX, Pool, parse_pool
from .service import BadServiceInput, ServiceView, parse_service
from .settings import FIELD_MANAGER, FINALIZER, SERVICE_CONDITION, OperatorSettings
from .workqueue import WorkQueue

log = logging.getLogger("portico.operator")
# One JSON line per reconcile with where the time went (enabled by --trace-timings).
timing_log = logging.getLogger("portico.timing")

POOL_FLUSH_SECONDS = 1.0
OPERATOR_CONDITIONS = ("Allocated", "NodePorts")  # the LoadBalancer conditions written here
RETRY_SECONDS = (0.2, 0.5, 1, 2, 5, 10, 30)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lb_path(namespace: str, name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "loadbalancers", namespace, name)


def pool_path(name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "ippools", None, name)


def _slice_service_key(obj: Mapping[str, Any]) -> str | None:
    """'namespace/service' of the Service an EndpointSlice belongs to, or None."""
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    return f"{meta.get('namespace')}/{svc}" if svc else None


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator needs of its own CRs: a full object with managedFields is ~10x larger,
    and there is one per Service."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {"generation": meta.get("generation")},
        "spec": obj.get("spec"),
        "status": obj.get("status"),
    }


class Outcome(NamedTuple):
    """The last allocation result of a Service, for stage two (the CR)."""

    vips: tuple[Any, ...]
    pool: str | None
    mode: str
    allocated: bool
    reason: str
    message: str


class Controller:
    def __init__(self, settings: OperatorSettings, kube: KubeClient, metrics: Metrics) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.alloc = ipam.Allocator()
        # Two stages: ``queue`` allocates and writes the Service status (what a user's
        # `kubectl apply` waits for); ``publish`` adds the finalizer and writes the LoadBalancer
        # CR. Splitting them keeps CR writes from delaying the next Service's address.
        self.queue = WorkQueue()
        self.publish = WorkQueue()
        self.outcomes: dict[str, Outcome] = {}
        self.services: dict[str, ServiceView] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.nodes: dict[str, NodeView] = {}
        self.slices: dict[str, dict[str, tuple[EndpointView, ...]]] = {}  # service -> slices
        self.lbs: dict[str, dict[str, Any]] = {}  # our LoadBalancer CRs, as last seen
        self.pool_objs: dict[str, dict[str, Any]] = {}
        self.pending: set[str] = set()  # Services waiting for an address
        self.last_reason: dict[str, str] = {}  # last failure reported, to not repeat Events
        self.dirty_pools = True
        self.synced = asyncio.Event()  # set once kopf's first full listing is indexed
        self.leading = False
        self.failures: dict[str, int] = {}
        self.received: dict[str, float] = {}  # key -> wall time its last event arrived

    # =========================================================================================
    # observation (cheap, synchronous, called for every watch event)
    # =========================================================================================
    def observe_service(self, obj: Mapping[str, Any]) -> None:
        view = parse_service(obj)
        self.services[view.key] = view
        # A standby, and any replica before the first full listing is indexed, takes the
        # cluster's word for who holds what. A synced leader does not: its own allocations are
        # ahead of the status it has written. (The Lease may be won before the listing ends.)
        restoring = not (self.leading and self.synced.is_set())
        if restoring and view.served_by(self.settings.load_balancer_class):
            self._restore(view)

    def _restore(self, view: ServiceView) -> None:
        ips = view.ingress_ips()
        if ips and set(self.alloc.holds(view.key)) != set(ips):
            try:
                claim = view.claim(self.namespaces.get(view.namespace, {}))
            except BadServiceInput:
                claim = ipam.Claim(service=view.key)
            self.alloc.restore(claim, ips)
            self.dirty_pools = True

    def forget_service(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self.services.pop(key, None)
        self.slices.pop(key, None)
        self.received.pop(key, None)
        self.queue.add(key)

    def observe_namespace(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        changed = self.namespaces.get(meta.get("name", "")) != labels
        self.namespaces[meta.get("name", "")] = labels
        return changed

    def observe_node(self, obj: Mapping[str, Any]) -> bool:
        view = parse_node(obj)
        changed = self.nodes.get(view.name) != view
        self.nodes[view.name] = view
        return changed

    def forget_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def observe_slice(self, obj: Mapping[str, Any]) -> str | None:
        key = _slice_service_key(obj)
        if key is not None:
            name = (obj.get("metadata") or {}).get("name", "")
            self.slices.setdefault(key, {})[name] = parse_endpoint_slice(obj)
        return key

    def forget_slice(self, obj: Mapping[str, Any]) -> str | None:
        key = _slice_service_key(obj)
        if key is not None:
            self.slices.get(key, {}).pop((obj.get("metadata") or {}).get("name", ""), None)
        return key

    def observe_lb(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.lbs[f"{meta.get('namespace')}/{meta.get('name')}"] = slim(obj)

    def forget_lb(self, namespace: str, name: str) -> None:
        self.lbs.pop(f"{namespace}/{name}", None)

    def observe_pool(self, obj: Mapping[str, Any]) -> bool:
        """Records the pool; True when its spec changed (not for our own status writes, which
        happen every second while addresses change and must not re-examine every Service)."""
        name = obj["metadata"]["name"]
        old = self.pool_objs.get(name)
        self.pool_objs[name] = dict(obj)
        if old is not None and old.get("spec") == obj.get("spec"):
            return False
        self._set_pools()
        return True

    def forget_pool(self, name: str) -> None:
        self.pool_objs.pop(name, None)
        self._set_pools()

    def _set_pools(self) -> None:
        pools = [parse_pool(n, o.get("spec")) for n, o in self.pool_objs.items()]
        self.alloc.set_pools(pools)
        self.dirty_pools = True

    # =========================================================================================
    # triggers
    # =========================================================================================
    def served_keys(self) -> list[str]:
        cls = self.settings.load_balancer_class
        return [k for k, v in self.services.items() if v.served_by(cls) or v.has_finalizer]

    def enqueue_all(self) -> None:
        for key in self.served_keys():
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

    def set_leading(self, leading: bool) -> None:
        self.leading = leading
        self.metrics.is_leader.set(1 if leading else 0)
        if leading and self.synced.is_set():
            self.enqueue_all()

    def mark_synced(self) -> None:
        if not self.synced.is_set():
            self.synced.set()
            log.info("first full listing indexed: %d Services", len(self.services))
            if self.leading:
                self.enqueue_all()

    # =========================================================================================
    # the workers
    # =========================================================================================
    async def run(self) -> None:
        n = self.settings.workers
        tasks = [
            *(
                asyncio.create_task(self._worker(self.queue, self.reconcile_service, "service"))
                for _ in range(n)
            ),
            *(
                asyncio.create_task(self._worker(self.publish, self.publish_service, "publish"))
                for _ in range(max(1, n // 2))
            ),
            asyncio.create_task(self._pool_flusher()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _worker(
        self, queue: WorkQueue, fn: Callable[[str], Awaitable[None]], kind: str
    ) -> None:
        depth = self.metrics.queue_depth.labels(kind)
        while True:
            depth.set(len(queue))
            key = await queue.get()
            depth.set(len(queue))
            fkey = f"{kind}:{key}"
            try:
                if self.leading and self.synced.is_set():
                    t0 = time.perf_counter()
                    await fn(key)
                    self.metrics.reconcile_seconds.labels(kind).observe(time.perf_counter() - t0)
                self.failures.pop(fkey, None)
            except ApiError as e:
                n = self.failures[fkey] = self.failures.get(fkey, 0) + 1
                delay = RETRY_SECONDS[min(n, len(RETRY_SECONDS)) - 1]
                if e.status != 409:
                    log.warning("%s %s: %s (retry in %ss)", kind, key, e, delay)
                # A conflict means our view was stale: the watch brings the new one at once.
                queue.add_after(key, 0.05 if e.status == 409 and n < 3 else delay)
            except Exception:
                n = self.failures[fkey] = self.failures.get(fkey, 0) + 1
                log.exception("%s %s failed", kind, key)
                queue.add_after(key, RETRY_SECONDS[min(n, len(RETRY_SECONDS)) - 1])
            finally:
                queue.done(key)

    # =========================================================================================
    # reconciling one Service
    # =========================================================================================
    async def reconcile_service(self, key: str) -> None:
        t_start = time.time()
        t_received = self.received.get(key)  # the event that queued this reconcile
        view = self.services.get(key)
        cls = self.settings.load_balancer_class
        if view is None:
            self._release(key, None)
            return
        if not view.served_by(cls) or view.deleting:
            await self._withdraw(view)
            return
        self.metrics.services.set(len(self.alloc.by_service))

        mode = "DSR"
        try:
            mode = view.forwarding_mode()
            claim = view.claim(self.namespaces.get(view.namespace, {}))
            result = self.alloc.assign(claim)
        except (BadServiceInput, ipam.AllocationError) as e:
            reason = getattr(e, "reason", ipam.INVALID_REQUEST)
            await self._fail(view, mode, reason, str(e))
            return
        self.pending.discard(key)
        self.last_reason.pop(key, None)
        old = set(view.ingress_ips())
        vips = result.ips
        pools = sorted(set(result.pools))
        message = f"{', '.join(map(str, vips))} from IPPool {', '.join(pools)}"
        if result.warnings:
            message += "; " + "; ".join(w.message for w in result.warnings)
        desired = service_status(view, vips, mode, True, "Allocated", message, now())
        t_patch = time.time()
        patched = status_differs(view, desired)
        if patched:
            updated = await self._patch_service_status(view, desired)
            view = parse_service(updated)
            self.services[key] = view
        t_patched = time.time()
        if set(vips) != old:
            self.dirty_pools = True
            for ip in set(vips) - old:
                self.metrics.allocations.labels(f"ipv{ip.version}").inc()
            self._event(view, "Normal", "Allocated", f"Allocated {message}")
        self.outcomes[key] = Outcome(
            vips, pools[0] if pools else None, mode, True, "Allocated", message
        )
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

    async def _fail(self, view: ServiceView, mode: str, reason: str, message: str) -> None:
        key = view.key
        if self.alloc.holds(key):
            self._release(key, view)
        self.pending.add(key)  # after the release, which clears it: met as soon as possible
        self.metrics.failures.labels(reason).inc()
        desired = service_status(view, (), mode, False, reason, message, now())
        if status_differs(view, desired):
            view = parse_service(await self._patch_service_status(view, desired))
            self.services[key] = view
        if self.last_reason.get(key) != f"{reason}:{message}":
            self.last_reason[key] = f"{reason}:{message}"
            self._event(view, "Warning", reason, message)
        self.outcomes[key] = Outcome((), None, mode, False, reason, message)
        self.publish.add(key)

    async def publish_service(self, key: str) -> None:
        """Stage two: the finalizer and the LoadBalancer CR, from the last allocation outcome."""
        view = self.services.get(key)
        outcome = self.outcomes.get(key)
        if view is None or outcome is None or view.deleting:
            return
        if not view.served_by(self.settings.load_balancer_class):
            return
        if not view.has_finalizer:
            await self._add_finalizer(view)
            view = self.services[key]
        await self._apply_lb(view, *outcome)
        if key not in self.outcomes:
            # Withdrawn (stage one) while this wrote: do not leave a CR behind.
            await self._delete_lb(view)
            return
        if outcome.mode == "NAT":
            await self._check_node_ports(view)

    def _release(self, key: str, view: ServiceView | None) -> None:
        self.outcomes.pop(key, None)
        freed = self.alloc.release(key)
        if freed:
            self.dirty_pools = True
            for ip in freed:
                self.metrics.releases.labels(f"ipv{ip.version}").inc()
            if view is not None:
                self._event(view, "Normal", "Released", f"Released {', '.join(map(str, freed))}")
            self.retry_pending()
        self.pending.discard(key)
        self.last_reason.pop(key, None)
        self.last_reason.pop(f"NodePortsMissing:{key}", None)

    async def _withdraw(self, view: ServiceView) -> None:
        """The Service is going away, or is no longer ours: free, clean up, let it go."""
        had = bool(self.alloc.holds(view.key))
        self._release(view.key, view)
        ours = [c for c in view.conditions if c.get("type") == SERVICE_CONDITION]
        if (had or ours) and not view.deleting:
            # Clear only what we wrote: another implementation's status is not ours to touch.
            await self._patch_service_status(
                view,
                {
                    "loadBalancer": {"ingress": []},
                    "conditions": [
                        c for c in view.conditions if c.get("type") != SERVICE_CONDITION
                    ],
                },
            )
        if view.key in self.lbs:
            await self._delete_lb(view)
        if view.has_finalizer:
            await self._remove_finalizer(view)

    async def _delete_lb(self, view: ServiceView) -> None:
        try:
            await self.kube.delete(lb_path(view.namespace, view.name))
            self.metrics.api_writes.labels("loadbalancer_delete").inc()
        except ApiError as e:
            if e.status != 404:
                raise
        self.lbs.pop(view.key, None)

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
        self.services[view.key] = parse_service(updated)

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
        self,
        view: ServiceView,
        vips: tuple[Any, ...],
        pool: str | None,
        mode: str,
        allocated: bool,
        reason: str,
        message: str,
    ) -> None:
        endpoints = [ep for eps in self.slices.get(view.key, {}).values() for ep in eps]
        spec = render_spec(view, vips, pool, mode, self.nodes.values(), endpoints)
        current = self.lbs.get(view.key) or {}
        generation = (current.get("metadata") or {}).get("generation")
        if current.get("spec") != spec:
            body = {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "LoadBalancer",
                "metadata": {
                    "name": view.name,
                    "namespace": view.namespace,
                    "labels": {f"{API_GROUP}/service": view.name},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": view.name,
                            "uid": view.uid,
                            "controller": True,
                            "blockOwnerDeletion": False,
                        }
                    ],
                },
                "spec": spec,
            }
            self.metrics.api_writes.labels("loadbalancer_spec").inc()
            applied = await self.kube.patch(
                lb_path(view.namespace, view.name),
                body,
                kind="apply",
                field_manager=FIELD_MANAGER,
                force=True,
            )
            current = self.lbs[view.key] = slim(applied)
            generation = applied["metadata"].get("generation")
        previous = (current.get("status") or {}).get("conditions") or []
        t = now()
        conds = [condition("Allocated", allocated, reason, message, generation or 0, t, previous)]
        ports = node_ports_condition(view, mode, generation or 0, t, previous)
        if ports is not None:
            conds.append(ports)
        mine = [c for c in previous if c.get("type") in OPERATOR_CONDITIONS]
        observed = (current.get("status") or {}).get("observedGeneration")
        if same_conditions(mine, conds) and observed == generation:
            return
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "LoadBalancer",
            "metadata": {"name": view.name, "namespace": view.namespace},
            # Server-side apply: conditions this manager no longer sends (NodePorts after a
            # switch back to DSR) are removed; other writers' conditions are left alone.
            "status": {"observedGeneration": generation, "conditions": conds},
        }
        self.metrics.api_writes.labels("loadbalancer_status").inc()
        applied = await self.kube.patch(
            lb_path(view.namespace, view.name) + "/status",
            body,
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
            if not (self.dirty_pools and self.leading and self.synced.is_set()):
                continue
            self.dirty_pools = False
            for name in list(self.pool_objs):
                try:
                    await self.reconcile_pool(name)
                except ApiError as e:
                    self.dirty_pools = True
                    if e.status not in (404, 409):
                        log.warning("pool %s status: %s", name, e)

    def pool_status(self, pool: Pool, obj: Mapping[str, Any]) -> dict[str, Any]:
        gen = int((obj.get("metadata") or {}).get("generation") or 0)
        previous = (obj.get("status") or {}).get("conditions") or []
        t = now()
        conflicts = self.alloc.conflicts.get(pool.name) or []
        fams = {}
        for f in (4, 6):
            cap = pool.capacity(f)
            used = self.alloc.used(pool, f)
            fams[f"ipv{f}"] = {
                "capacity": min(cap, INT64_MAX),
                "used": used,
                "free": min(max(cap - used, 0), INT64_MAX),
            }
            for state, v in fams[f"ipv{f}"].items():
                self.metrics.pool_addresses.labels(pool.name, f"ipv{f}", state).set(v)
        valid = condition(
            "Valid",
            pool.valid,
            "Valid" if pool.valid else "Invalid",
            "the pool is valid" if pool.valid else "; ".join(pool.errors),
            gen,
            t,
            previous,
        )
        conflicting = condition(
            "Conflicting",
            bool(conflicts),
            "Overlaps" if conflicts else "NoOverlap",
            (
                f"addresses overlap IPPool {', '.join(sorted(conflicts))}: neither hands out "
                "new addresses until that is fixed"
                if conflicts
                else "no other pool overlaps this one"
            ),
            gen,
            t,
            previous,
        )
        return {"observedGeneration": gen, **fams, "conditions": [valid, conflicting]}

    async def reconcile_pool(self, name: str) -> None:
        obj = self.pool_objs.get(name)
        if obj is None:
            return
        pool = self.alloc.pools.get(name)
        if pool is None:
            return
        desired = self.pool_status(pool, obj)
        current = obj.get("status") or {}
        same = same_conditions(current.get("conditions") or [], desired["conditions"]) and all(
            current.get(k) == desired[k] for k in ("ipv4", "ipv6", "observedGeneration")
        )
        if same:
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
        self.pool_objs[name] = updated
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

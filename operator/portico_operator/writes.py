"""Every write the leader makes to the API, and the Events it reports.

Writes go through ``GatedKube``, which refuses them once this replica's Lease may have passed to
another; each is counted by kind and result. Our own writes' answers update the caches at once
(the watch brings them again). What an Event says is pure (``event_body``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from portico_common import API_GROUP, API_VERSION
from portico_common.apipaths import core_path, group_path
from portico_common.clock import now_rfc3339 as now
from portico_common.kube import ApiError, KubeClient

from .cache import ClusterCache, object_key, slim
from .errors import NotLeading
from .lbspec import lb_spec_body, lb_status_body
from .metrics import Metrics
from .service import ServiceView, parse_service
from .settings import FIELD_MANAGER, FINALIZER, VALUES_FIELD_MANAGER

log = logging.getLogger("portico.operator")

WRITE_METHODS = ("create", "replace", "patch", "delete")
# Where the Events of cluster-scoped objects (VIPPools) go.
CLUSTER_EVENTS_NAMESPACE = "default"


def lb_path(namespace: str, name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "loadbalancers", namespace, name)


def pool_path(name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "vippools", None, name)


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


# -- Events ------------------------------------------------------------------------------------
def service_ref(view: ServiceView) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "name": view.name,
        "namespace": view.namespace,
        "uid": view.uid,
        "resourceVersion": view.resource_version,
    }


def pool_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VIPPool",
        "name": meta["name"],
        "uid": meta.get("uid"),
    }


def event_body(
    involved: Mapping[str, Any],
    namespace: str,
    kind: str,
    reason: str,
    message: str,
    instance: str,
    t: str,
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (``service_ref``, ``pool_ref``); ``kind`` is Normal or
    Warning. The message is cut to the 1 KiB the apiserver accepts."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
        "involvedObject": dict(involved),
        "reason": reason,
        "message": message[:1024],
        "type": kind,
        "source": {"component": "portico-operator"},
        "reportingComponent": f"{API_GROUP}/operator",
        "reportingInstance": instance,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    }


class Writes:
    def __init__(
        self, kube: GatedKube, cache: ClusterCache, metrics: Metrics, identity: str
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self.identity = identity  # the Events' reportingInstance

    # -- Services ----------------------------------------------------------------------------
    async def patch_service_status(
        self, view: ServiceView, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {"metadata": {"resourceVersion": view.resource_version}, "status": status}
        with self.metrics.api_write("service_status"):
            return await self.kube.patch(
                core_path("services", view.namespace, view.name) + "/status", body
            )

    def observed(self, obj: Mapping[str, Any]) -> ServiceView:
        """Takes our own write's answer as the newest view (the watch brings it again)."""
        self.cache.apply("services", "MODIFIED", obj)
        return self.cache.services.get(object_key(obj)) or parse_service(obj)

    async def add_finalizer(self, view: ServiceView) -> None:
        body = {
            "metadata": {
                "resourceVersion": view.resource_version,
                "finalizers": [*view.finalizers, FINALIZER],
            }
        }
        with self.metrics.api_write("service_finalizer"):
            updated = await self.kube.patch(core_path("services", view.namespace, view.name), body)
        self.observed(updated)

    async def remove_finalizer(self, view: ServiceView) -> None:
        body = {
            "metadata": {
                "resourceVersion": view.resource_version,
                "finalizers": [f for f in view.finalizers if f != FINALIZER],
            }
        }
        try:
            with self.metrics.api_write("service_finalizer"):
                await self.kube.patch(core_path("services", view.namespace, view.name), body)
        except ApiError as e:
            if e.status != 404:
                raise

    # -- LoadBalancer CRs --------------------------------------------------------------------
    async def apply_lb_spec(self, view: ServiceView, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of the CR's spec; returns (and caches) the slim answer."""
        with self.metrics.api_write("loadbalancer_spec"):
            applied = await self.kube.patch(
                lb_path(view.namespace, view.name),
                lb_spec_body(view, spec),
                kind="apply",
                field_manager=FIELD_MANAGER,
                force=True,
            )
        current = self.cache.lbs[view.key] = slim(applied)
        return current

    async def apply_lb_status(
        self, view: ServiceView, generation: int | None, conditions: list[dict[str, Any]]
    ) -> None:
        with self.metrics.api_write("loadbalancer_status"):
            applied = await self.kube.patch(
                lb_path(view.namespace, view.name) + "/status",
                lb_status_body(view, generation, conditions),
                kind="apply",
                field_manager=FIELD_MANAGER,
                force=True,
            )
        self.cache.lbs[view.key] = slim(applied)

    async def delete_lb(self, namespace: str, name: str) -> None:
        try:
            with self.metrics.api_write("loadbalancer_delete"):
                await self.kube.delete(lb_path(namespace, name))
        except ApiError as e:
            if e.status != 404:
                raise
        self.cache.lbs.pop(f"{namespace}/{name}", None)

    # -- VIPPools -----------------------------------------------------------------------------
    async def patch_pool_status(
        self, name: str, resource_version: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        with self.metrics.api_write("vippool_status"):
            updated = await self.kube.patch(
                pool_path(name) + "/status",
                {"metadata": {"resourceVersion": resource_version}, "status": status},
            )
        self.cache.pool_objs[name] = updated
        return updated

    async def create_pool(self, body: dict[str, Any]) -> None:
        """A VIPPool of the chart's values; a 409 (the name was taken meanwhile) goes on."""
        with self.metrics.api_write("vippool"):
            await self.kube.create(pool_path(), body)

    async def apply_pool(self, name: str, body: dict[str, Any]) -> None:
        """Server-side apply of the whole pool: a field the values no longer give goes away."""
        with self.metrics.api_write("vippool"):
            await self.kube.patch(
                pool_path(name), body, kind="apply", field_manager=VALUES_FIELD_MANAGER, force=True
            )

    async def delete_pool(self, name: str) -> None:
        try:
            with self.metrics.api_write("vippool"):
                await self.kube.delete(pool_path(name))
        except ApiError as e:
            if e.status != 404:
                raise

    # -- Events ------------------------------------------------------------------------------
    def object_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """An Event about any namespaced object (the values' pools ConfigMap)."""
        meta = obj["metadata"]
        involved = {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj.get("kind", "ConfigMap"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        }
        self._event(involved, meta["namespace"], kind, reason, message)

    def service_event(self, view: ServiceView, kind: str, reason: str, message: str) -> None:
        self._event(service_ref(view), view.namespace, kind, reason, message)

    def pool_event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self._event(pool_ref(obj), CLUSTER_EVENTS_NAMESPACE, "Warning", reason, message)

    def _event(
        self, involved: Mapping[str, Any], namespace: str, kind: str, reason: str, message: str
    ) -> None:
        """Sent in the background: an Event is worth no reconcile's wait, nor its retry."""
        body = event_body(involved, namespace, kind, reason, message, self.identity, now())
        task = asyncio.ensure_future(self.kube.create(core_path("events", namespace), body))

        def done(t: asyncio.Future[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s event: %s", involved["kind"], t.exception())

        task.add_done_callback(done)

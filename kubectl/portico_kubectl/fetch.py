"""Reads what ``kubectl portico status`` judges, with the user's credentials (``--kubeconfig``,
``$KUBECONFIG`` or ~/.kube/config, as kubectl) and Portico's own thin client: one Service's
objects, or (``--all``) every LoadBalancer Service's at once. Only GETs; reads run together.
A kind that cannot be read (its CRD missing, or RBAC) comes back as None, not as an error."""

from __future__ import annotations

import asyncio
from typing import Any

from portico_common import API_GROUP, API_VERSION, rulesdoc
from portico_common.apipaths import core_path, group_path
from portico_common.kube import ApiError, KubeClient

from .snapshot import SERVICE_NAME_LABEL, Listing, Obj, Snapshot


def _portico(resource: str, namespace: str | None = None, name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, resource, namespace, name)


def _slices(namespace: str | None) -> str:
    return group_path("discovery.k8s.io", "v1", "endpointslices", namespace)


async def _get(kube: KubeClient, path: str, **params: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return await kube.get(path, **params)
    except ApiError as e:
        if e.status == 404:
            return None
        raise


async def _items(kube: KubeClient, path: str, **params: str) -> list[Obj] | None:
    """A list's items; None when the kind is not served here or not readable by this user."""
    try:
        listing = await kube.get(path, **params)
    except ApiError as e:
        if e.status in (403, 404):
            return None
        raise
    return list(listing.get("items") or [])


async def _shard(kube: KubeClient, key: str) -> Obj | None:
    """The NodeRules shard that carries ``key``: {} when that shard does not exist (no entry),
    None when NodeRules cannot be read at all."""
    try:
        return await kube.get(rulesdoc.path(rulesdoc.shard_name(key)))
    except ApiError as e:
        if e.status == 403:
            return None
        if e.status != 404:
            raise
    served = await _items(kube, rulesdoc.path(), limit="1")
    return None if served is None else {}


async def snapshot(kube: KubeClient, namespace: str, name: str) -> Snapshot:
    key = f"{namespace}/{name}"
    # Tasks, not one gather: each result keeps its own type.
    service = asyncio.create_task(_get(kube, core_path("services", namespace, name)))
    lb = asyncio.create_task(_get(kube, _portico("loadbalancers", namespace, name)))
    slices = asyncio.create_task(
        _items(kube, _slices(namespace), labelSelector=f"{SERVICE_NAME_LABEL}={name}")
    )
    rules = asyncio.create_task(_shard(kube, key))
    pools = asyncio.create_task(_items(kube, _portico("vippools")))
    agents = asyncio.create_task(_items(kube, _portico("nodeagents")))
    reports = asyncio.create_task(_items(kube, _portico("gatewayreports")))
    tasks = [service, lb, slices, rules, pools, agents, reports]
    await asyncio.wait(tasks)
    # Every task's error is looked at (asyncio complains of one never retrieved); the first is
    # raised.
    errors = [e for e in (t.exception() for t in tasks) if e is not None]
    if errors:
        raise errors[0]
    return Snapshot(
        namespace=namespace,
        name=name,
        service=service.result(),
        lb=lb.result(),
        slices=tuple(slices.result() or ()),
        rules=rules.result(),
        pools=_tuple(pools.result()),
        agents=_tuple(agents.result()),
        reports=_tuple(reports.result()),
    )


def _tuple(items: list[Obj] | None) -> tuple[Obj, ...] | None:
    return None if items is None else tuple(items)


async def listing(kube: KubeClient, namespace: str | None) -> Listing:
    """Everything ``--all`` needs, in one list per kind (``namespace`` None: every one)."""
    services, lbs, slices, rules, pools, agents, reports = await asyncio.gather(
        _items(kube, core_path("services", namespace)),
        _items(kube, _portico("loadbalancers", namespace)),
        _items(kube, _slices(namespace)),
        _items(kube, rulesdoc.path()),
        _items(kube, _portico("vippools")),
        _items(kube, _portico("nodeagents")),
        _items(kube, _portico("gatewayreports")),
    )
    if services is None:
        raise ApiError(403, "", "GET", core_path("services", namespace))
    return Listing(services, lbs or [], slices or [], rules, pools, agents, reports)

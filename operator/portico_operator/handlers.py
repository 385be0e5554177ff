"""kopf wiring: which watch events reach which part of the controller.

Indexers observe (every replica keeps a warm view); event handlers trigger the leader's
reconciles. What a leader allocates from is not this view but a fresh listing it takes when it
takes the lead (``Controller.take_over``). Handlers on Services return nothing and patch
nothing through kopf, so kopf keeps no annotations or finalizers of its own on users' objects.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import kopf
from portico_common import API_GROUP
from portico_common.kube import Credentials

from .controller import Controller


def build_registry(ctl: Controller, creds: Credentials) -> kopf.OperatorRegistry:
    r = kopf.OperatorRegistry()

    @kopf.on.login(registry=r)
    def login(**_: Any) -> kopf.ConnectionInfo:
        token = creds.current_token()
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=not creds.verify,
            certificate_path=creds.cert_path,
            private_key_path=creds.key_path,
            scheme="Bearer" if token else None,
            token=token,
            default_namespace=creds.namespace,
            # Rotating tokens: kopf logs in again (through this handler) when this passes.
            expiration=(
                dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
                if creds.refresh is not None
                else None
            ),
        )

    # -- Services ------------------------------------------------------------------------------
    @kopf.index("", "v1", "services", registry=r)
    async def index_services(body: kopf.Body, **_: Any) -> None:
        ctl.observe_service(body)

    @kopf.on.event("", "v1", "services", registry=r)
    async def on_service(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        meta = body.get("metadata", {})
        if event.get("type") == "DELETED":
            ctl.forget_service(meta.get("namespace"), meta.get("name"))
        elif ctl.leading:
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            ctl.received[key] = time.time()
            ctl.queue.add(key)

    # -- what a Service's allocation depends on ---------------------------------------------------
    @kopf.index("", "v1", "namespaces", registry=r)
    async def index_namespaces(body: kopf.Body, **_: Any) -> None:
        if ctl.observe_namespace(body) and ctl.leading:
            ctl.enqueue_namespace(body["metadata"]["name"])

    @kopf.on.event("", "v1", "namespaces", registry=r)
    async def on_namespace(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        if event.get("type") == "DELETED":
            ctl.forget_namespace(body["metadata"]["name"])

    @kopf.index(API_GROUP, "v1alpha1", "ippools", registry=r)
    async def index_pools(body: kopf.Body, **_: Any) -> None:
        if ctl.observe_pool(body) and ctl.leading:
            ctl.enqueue_all()

    @kopf.on.event(API_GROUP, "v1alpha1", "ippools", registry=r)
    async def on_pool(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        if event.get("type") == "DELETED":
            ctl.forget_pool(body["metadata"]["name"])
            if ctl.leading:
                ctl.enqueue_all()

    # -- what the LoadBalancer CR reports -------------------------------------------------------
    @kopf.index("", "v1", "nodes", registry=r)
    async def index_nodes(body: kopf.Body, **_: Any) -> None:
        if ctl.observe_node(body) and ctl.leading:
            ctl.publish_all()  # backends changed: the CRs, not the allocations

    @kopf.on.event("", "v1", "nodes", registry=r)
    async def on_node(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        if event.get("type") == "DELETED":
            ctl.forget_node(body["metadata"]["name"])
            if ctl.leading:
                ctl.publish_all()

    @kopf.index("discovery.k8s.io", "v1", "endpointslices", registry=r)
    async def index_slices(body: kopf.Body, **_: Any) -> None:
        key = ctl.observe_slice(body)
        if key and ctl.leading and key in ctl.services:
            ctl.publish.add(key)

    @kopf.on.event("discovery.k8s.io", "v1", "endpointslices", registry=r)
    async def on_slice(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        if event.get("type") == "DELETED":
            key = ctl.forget_slice(body)
            if key and ctl.leading and key in ctl.services:
                ctl.publish.add(key)

    @kopf.index(API_GROUP, "v1alpha1", "loadbalancers", registry=r)
    async def index_lbs(body: kopf.Body, **_: Any) -> None:
        ctl.observe_lb(body)

    @kopf.on.event(API_GROUP, "v1alpha1", "loadbalancers", registry=r)
    async def on_lb(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_synced()
        if event.get("type") == "DELETED":
            meta = body["metadata"]
            ctl.forget_lb(meta["namespace"], meta["name"])
            key = f"{meta['namespace']}/{meta['name']}"
            if ctl.leading and key in ctl.services:
                ctl.publish.add(key)  # someone deleted our CR: put it back

    return r

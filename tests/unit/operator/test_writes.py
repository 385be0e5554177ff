"""The operator's writes and Events (operator/portico_operator/writes.py), against the in-memory
API of fake_kube."""

from __future__ import annotations

import asyncio

import pytest
from portico_operator.cache import ClusterCache
from portico_operator.errors import NotLeading
from portico_operator.metrics import Metrics
from portico_operator.service import parse_service
from portico_operator.writes import GatedKube, Writes, event_body, pool_ref, service_ref

from .fake_kube import FakeKube

T = "2026-01-01T00:00:00Z"
SERVICE = {
    "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
    "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
}
POOL = {"metadata": {"name": "lan", "uid": "u2"}, "spec": {"addresses": ["10.0.0.0/30"]}}


def test_one_event_body_for_services_and_pools() -> None:
    svc = event_body(
        service_ref(parse_service(SERVICE)), "shop", "Normal", "Allocated", "m", "me", T
    )
    pool = event_body(pool_ref(POOL), "default", "Warning", "Invalid", "x" * 2000, "me", T)
    assert svc["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "name": "web",
        "namespace": "shop",
        "uid": "u1",
        "resourceVersion": "7",
    }
    assert pool["involvedObject"] == {
        "apiVersion": "portico.dev/v1alpha1",
        "kind": "VIPPool",
        "name": "lan",
        "uid": "u2",
    }
    assert svc["metadata"] == {"generateName": "web.", "namespace": "shop"}
    assert pool["metadata"] == {"generateName": "lan.", "namespace": "default"}
    assert (svc["type"], svc["reason"], svc["message"]) == ("Normal", "Allocated", "m")
    assert len(pool["message"]) == 1024  # what the apiserver accepts
    same = {"apiVersion", "kind", "source", "reportingComponent", "reportingInstance", "count"}
    assert {k: svc[k] for k in same} == {k: pool[k] for k in same}
    assert svc["reportingInstance"] == "me" and svc["firstTimestamp"] == svc["lastTimestamp"] == T


def test_writes_are_refused_once_the_lease_may_have_passed() -> None:
    async def go() -> None:
        api = FakeKube()
        lease = {"valid": True}
        kube = GatedKube(api, lambda: lease["valid"])  # type: ignore[arg-type]
        writes = Writes(kube, ClusterCache(), Metrics(), "me")
        api.put("services", dict(SERVICE))
        view = parse_service(api.get_obj("services", "shop/web") or {})
        await writes.add_finalizer(view)
        assert writes.cache.services["shop/web"].has_finalizer  # our answer is in the view
        lease["valid"] = False
        with pytest.raises(NotLeading):
            await writes.remove_finalizer(writes.cache.services["shop/web"])
        assert (await kube.get("/api/v1/namespaces/shop/services/web"))["metadata"]["finalizers"]

    asyncio.run(go())


def test_deleting_a_cr_that_is_gone_already_is_no_error() -> None:
    async def go() -> None:
        writes = Writes(GatedKube(FakeKube(), lambda: True), ClusterCache(), Metrics(), "me")  # type: ignore[arg-type]
        writes.cache.lbs["shop/web"] = {"spec": {}}
        await writes.delete_lb("shop", "web")
        assert "shop/web" not in writes.cache.lbs

    asyncio.run(go())

"""The operator's writes and Events (operator/portico_operator/writes.py), against the in-memory
API of fake_kube."""

from __future__ import annotations

import asyncio

import pytest
from portico_common.kube import ApiError
from portico_operator.cache import ClusterCache
from portico_operator.errors import NotLeading
from portico_operator.metrics import Metrics, write_result
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


def test_each_write_is_counted_once_with_its_result() -> None:
    def counted(metrics: Metrics) -> dict[tuple[str, str], float]:
        (family,) = [m for m in metrics.registry.collect() if m.name.endswith("api_writes")]
        return {
            (s.labels["kind"], s.labels["result"]): s.value
            for s in family.samples
            if s.name.endswith("_total")
        }

    async def go() -> None:
        api = FakeKube()
        lease = {"valid": True}
        metrics = Metrics()
        writes = Writes(GatedKube(api, lambda: lease["valid"]), ClusterCache(), metrics, "me")  # type: ignore[arg-type]
        api.put("services", dict(SERVICE))
        view = parse_service(api.get_obj("services", "shop/web") or {})
        await writes.add_finalizer(view)  # success; view's resourceVersion is now stale
        with pytest.raises(ApiError):
            await writes.patch_service_status(view, {"loadBalancer": {}})  # 409
        await writes.delete_lb("shop", "gone")  # 404, which delete_lb lets pass
        lease["valid"] = False
        with pytest.raises(NotLeading):
            await writes.remove_finalizer(writes.cache.services["shop/web"])
        assert counted(metrics) == {
            ("service_finalizer", "success"): 1,
            ("service_status", "conflict"): 1,
            ("loadbalancer_delete", "not_found"): 1,
            ("service_finalizer", "not_leading"): 1,
        }

    asyncio.run(go())


def test_write_results() -> None:
    assert write_result(None) == "success"
    assert write_result(ApiError(409, "{}")) == "conflict"
    assert write_result(ApiError(404, "{}")) == "not_found"
    assert write_result(ApiError(422, "{}")) == "invalid"
    assert write_result(ApiError(503, "{}")) == "error"
    assert write_result(NotLeading("patch")) == "not_leading"
    assert write_result(asyncio.CancelledError()) == "cancelled"
    assert write_result(OSError("reset")) == "error"

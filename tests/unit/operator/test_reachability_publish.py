"""The operator acting on a gateway's report, against the in-memory API: a node it calls
unreachable has its endpoints marked in the Service's NodeRules entry and the LoadBalancer CR
says why; when the node is back, both return to normal; a report over the guard changes no
entry."""

from __future__ import annotations

import asyncio
from typing import Any

from .test_machine import service
from .test_publish_order import fast_retries, leader  # noqa: F401 (a fixture)


def slice_of(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abc",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [f"10.244.{i}.2"], "conditions": {"ready": True}, "nodeName": f"n{i}"}
            for i in (1, 2, 3)
        ],
        "ports": [{"name": "p", "protocol": "TCP", "port": 8080}],
    }


def report(reachable: dict[str, bool]) -> dict[str, Any]:
    return {
        "apiVersion": "portico.dev/v1alpha1",
        "kind": "GatewayReport",
        "metadata": {"name": "gw-1"},
        "status": {"nodes": [{"node": n, "reachable": r} for n, r in reachable.items()]},
    }


def marked(world: Any, key: str) -> dict[str, bool]:
    for shard in world.kube.all("noderules"):
        entry = ((shard.get("spec") or {}).get("services") or {}).get(key)
        if entry:
            return {e["node"]: bool(e.get("unreachable")) for e in entry["endpoints"]}
    return {}


def reachable_condition(world: Any, key: str) -> dict[str, Any]:
    lb = world.kube.get_obj("lbs", key) or {}
    conds = (lb.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "NodesReachable"), {})


def test_an_unreachable_nodes_endpoints_are_marked_and_return() -> None:
    async def go() -> None:
        world = await leader(7)
        try:
            world.kube.put("services", service("s1", None, False, False, 0))
            world.kube.put("slices", slice_of("s1"))
            await world.settle()
            assert marked(world, "ns/s1") == {"n1": False, "n2": False, "n3": False}
            assert reachable_condition(world, "ns/s1")["reason"] == "Reachable"

            world.kube.put("reports", report({"n1": True, "n2": False, "n3": True}))
            await world.settle()
            assert marked(world, "ns/s1") == {"n1": False, "n2": True, "n3": False}
            cond = reachable_condition(world, "ns/s1")
            assert (cond["status"], cond["reason"]) == ("False", "NodesUnreachable"), cond
            assert "n2" in cond["message"] and "gw-1" in cond["message"]

            # A gateway cut off (2 of 3): ignored, the endpoints return.
            world.kube.put("reports", report({"n1": False, "n2": False, "n3": True}))
            await world.settle()
            assert marked(world, "ns/s1") == {"n1": False, "n2": False, "n3": False}
            assert reachable_condition(world, "ns/s1")["reason"] == "VerdictIgnored"

            world.kube.put("reports", report({"n1": True, "n2": True, "n3": True}))
            await world.settle()
            assert marked(world, "ns/s1") == {"n1": False, "n2": False, "n3": False}
            assert reachable_condition(world, "ns/s1")["status"] == "True"
            # One Warning when the endpoints went out, one Normal when they came back.
            reasons = [
                (e.get("type"), e.get("reason"))
                for e in world.kube.events
                if e.get("reason") in ("NodesUnreachable", "VerdictIgnored", "Reachable")
            ]
            assert reasons == [("Warning", "NodesUnreachable"), ("Normal", "VerdictIgnored")]
        finally:
            await world.replicas["a"].kill()

    asyncio.run(go())

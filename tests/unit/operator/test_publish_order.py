"""The order of the operator's writes, read back from the in-memory API's event log: a
LoadBalancer CR never carries an address before the node rules do. The gateway forwards a
Cluster Service's address to every node whose agent says its rules are current, whether or not
those rules carry the Service yet; nodes without the Service's rules would drop its traffic."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from portico_operator import controller as controller_module
from portico_operator import rules_writer, workers
from portico_operator.noderules_push import forwards_alike

from .test_machine import Replica, World, ips_of, service


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "RETRY_SECONDS", (0.001,) * 7)
    monkeypatch.setattr(workers, "CONFLICT_RETRY_SECONDS", 0.001)
    monkeypatch.setattr(controller_module, "POOL_FLUSH_SECONDS", 0.005)
    monkeypatch.setattr(rules_writer, "RULES_GATHER_SECONDS", 0.001)
    monkeypatch.setattr(rules_writer, "RULES_MIN_INTERVAL", 0.002)
    monkeypatch.setattr(rules_writer, "RETRY_SECONDS", 0.005)


def announced_early(log: list[tuple[str, str, dict[str, Any]]], key: str) -> list[str]:
    """The addresses the CR of ``key`` carried before any NodeRules shard did, in log order."""
    programmed: set[str] = set()
    early: list[str] = []
    for kind, _event, obj in log:
        if kind == "noderules":
            entry = ((obj.get("spec") or {}).get("services") or {}).get(key)
            programmed |= set((entry or {}).get("vips") or ())
        elif kind == "lbs" and f"{obj['metadata']['namespace']}/{obj['metadata']['name']}" == key:
            vips = (obj.get("spec") or {}).get("vips") or ()
            early += [ip for ip in vips if ip not in programmed and ip not in early]
    return early


async def leader(seed: int) -> World:
    world = World(random.Random(seed))
    world.replicas["a"] = Replica(world, "a")
    await world.wait_synced(world.replicas["a"])
    world.holder = "a"
    world.replicas["a"].ctl.set_leading(True)
    return world


def test_the_node_rules_carry_an_address_before_the_cr_does() -> None:
    async def go() -> None:
        world = await leader(0)
        try:
            world.kube.put("services", service("s4", None, True, False, 0))  # dual-stack
            await world.settle()
            svc = world.kube.get_obj("services", "ns/s4")
            assert svc is not None and len(ips_of(svc)) == 2
            # a new address for the same Service: again the rules first
            world.kube.put("services", service("s4", "10.0.0.5", False, False, 0))
            await world.settle()
            svc = world.kube.get_obj("services", "ns/s4")
            assert svc is not None and ips_of(svc) == ("10.0.0.5",)
            lb = world.kube.get_obj("lbs", "ns/s4")
            assert lb is not None and lb["spec"]["vips"] == ["10.0.0.5"]
            assert announced_early(world.kube.log, "ns/s4") == []
        finally:
            await world.replicas["a"].kill()

    asyncio.run(go())


def test_no_cr_announces_an_address_while_the_node_rules_cannot_be_written() -> None:
    async def go() -> None:
        world = await leader(1)
        try:
            world.kube.refuse["noderules"] = 10**9  # the shards cannot be written for now
            world.kube.put("services", service("s5", None, False, False, 0))
            for _ in range(40):
                world.replicas["a"].deliver(10_000)
                await asyncio.sleep(0.005)
            svc = world.kube.get_obj("services", "ns/s5")
            assert svc is not None and ips_of(svc)  # stage one is not held up
            lb = world.kube.get_obj("lbs", "ns/s5")
            assert not (lb or {}).get("spec", {}).get("vips")
            world.kube.refuse.clear()
            await world.settle()
            lb = world.kube.get_obj("lbs", "ns/s5")
            assert lb is not None and tuple(lb["spec"]["vips"]) == ips_of(svc)
            assert announced_early(world.kube.log, "ns/s5") == []
        finally:
            await world.replicas["a"].kill()

    asyncio.run(go())


def test_only_endpoints_may_differ_from_what_the_shards_hold() -> None:
    entry = {"vips": ["10.0.0.1"], "ports": [{"port": 80}], "forwardingMode": "DSR"}
    same = {**entry, "endpoints": [{"address": "10.1.0.1", "node": "n1"}]}
    assert forwards_alike({**entry, "endpoints": []}, same)
    for change in ({"vips": ["10.0.0.2"]}, {"ports": [{"port": 81}]}, {"forwardingMode": "NAT"}):
        assert not forwards_alike(entry, {**entry, **change})
    assert not forwards_alike(entry, {**entry, "sourceRanges": ["10.0.0.0/8"]})

"""The whole reconcile loop against an in-memory API: random users, restarts, failovers, frozen
leaders, lagging watches and conflicts. After every step, read back from the API:

- no address is carried (Service status or LoadBalancer CR) by two Services that may not share;
- no address changes or disappears while its Service still wants it (same uid, same request).

These catch a restore that trusts a half-filled view, a standby that allocates from a stale
allocator, a frozen leader that writes after its successor, an address released before the CR
that announced it is gone, and bad input that gives an address away.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest
from portico_operator import controller as controller_module
from portico_operator import rules_writer, workers
from portico_operator.controller import Controller
from portico_operator.metrics import Metrics
from portico_operator.settings import OperatorSettings

from .fake_kube import FakeClient, FakeKube

NAMES = [f"s{i}" for i in range(9)]
# Fixed per name, so that what may share is a property of the name: s0..s3 share key "k" and
# s0/s3 clash on port 80 (they may never share); the others never share.
SHARERS = {"s0": 80, "s1": 443, "s2": 8080, "s3": 80}
POOL = {
    "apiVersion": "portico.dev/v1alpha1",
    "kind": "VIPPool",
    "metadata": {"name": "p"},
    "spec": {"addresses": ["10.0.0.0/29", "fd00::/125"]},  # small: holes, reuse, exhaustion
}
ANN_TYPO = "portico.dev/forwarding-mode"


def service(name: str, requested: str | None, dual: bool, typo: bool, touch: int) -> dict:
    ann = {"touch": str(touch)}
    if name in SHARERS:
        ann["portico.dev/allow-shared-ip"] = "k"
    if requested:
        ann["portico.dev/load-balancer-ips"] = requested
    if typo:
        ann[ANN_TYPO] = "dsrr"
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "selector": {"app": "x"},
        "ports": [{"name": "p", "protocol": "TCP", "port": SHARERS.get(name, 80)}],
    }
    if dual:
        spec["ipFamilies"] = ["IPv4", "IPv6"]
        spec["ipFamilyPolicy"] = "RequireDualStack"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns", "annotations": ann},
        "spec": spec,
    }


def ips_of(svc: dict) -> tuple[str, ...]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return tuple(sorted(e["ip"] for e in ingress))


def signature(svc: dict) -> tuple:
    """What a Service asks for; the typo is not part of it (it must not cost the address)."""
    meta = svc["metadata"]
    ann = meta.get("annotations") or {}
    return (
        meta["uid"],
        ann.get("portico.dev/load-balancer-ips"),
        tuple(svc["spec"].get("ipFamilies") or ()),
    )


class Replica:
    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.client = FakeClient(world.kube, world.rng)
        self.ctl = Controller(
            OperatorSettings(identity=name, workers=2, resync_seconds=3600),
            self.client,  # type: ignore[arg-type]
            Metrics(),
            may_write=lambda: world.holder == name,
        )
        self.cursor = len(world.kube.log)  # its watches start now; the rest it lists
        self.task = asyncio.create_task(self.ctl.run())

    def deliver(self, n: int) -> None:
        log = self.world.kube.log
        for kind, event, obj in log[self.cursor : self.cursor + n]:
            if kind not in ("leases", "events"):
                self.ctl.apply_event(kind, event, obj)
        self.cursor = min(len(log), self.cursor + n)

    async def kill(self) -> None:
        self.task.cancel()
        self.ctl.set_leading(False)
        await self.ctl.stop_leading()
        await asyncio.gather(self.task, return_exceptions=True)


class World:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kube = FakeKube()
        self.holder: str | None = None  # who holds the Lease
        self.replicas: dict[str, Replica] = {}
        # name -> (request, addresses, settled): settled once the operator has answered the
        # request (until then the status still shows what the previous request got)
        self.tracked: dict[str, tuple[tuple, tuple[str, ...], bool]] = {}
        self.touches = 0
        self.kube.put("pools", dict(POOL))
        self.kube.put("namespaces", {"metadata": {"name": "ns"}})

    # -- the invariants, read back from the API -----------------------------------------------
    def check(self) -> None:
        holders: dict[str, set[str]] = defaultdict(set)
        for svc in self.kube.all("services"):
            for ip in ips_of(svc):
                holders[ip].add(svc["metadata"]["name"])
        for lb in self.kube.all("lbs"):
            for ip in (lb.get("spec") or {}).get("vips") or ():
                holders[ip].add(lb["metadata"]["name"])
        for ip, names in holders.items():
            if len(names) > 1:
                assert names <= set(SHARERS), f"{ip} carried by {sorted(names)}"
                ports = [SHARERS[n] for n in names]
                assert len(ports) == len(set(ports)), f"{ip}: {sorted(names)} clash on a port"
        for svc in self.kube.all("services"):
            name = svc["metadata"]["name"]
            sig, now = signature(svc), ips_of(svc)
            if svc["metadata"].get("deletionTimestamp"):
                continue
            was = self.tracked.get(name)
            if was is None or was[0] != sig:
                self.tracked[name] = (sig, now, was is None and bool(now))
            elif not was[2]:
                if now != was[1]:
                    self.tracked[name] = (sig, now, bool(now))
            else:
                assert now == was[1], f"{name} moved from {was[1]} to {now} (same request)"

    # -- steps ---------------------------------------------------------------------------------
    async def run(self, seconds: float = 0.003) -> None:
        await asyncio.sleep(seconds)
        self.check()

    async def step(self) -> None:
        rng = self.rng
        action = rng.choices(
            [
                "apply",
                "typo",
                "touch",
                "delete",
                "deliver",
                "run",
                "resync",
                "failover",
                "restart",
                "notice",
            ],
            weights=[6, 2, 2, 3, 8, 6, 1, 2, 2, 2],
        )[0]
        name = rng.choice(NAMES)
        current = self.kube.get_obj("services", f"ns/{name}")
        if action == "apply":
            requested = rng.choice([None, None, None, f"10.0.0.{rng.randrange(8)}"])
            self.kube.put("services", service(name, requested, rng.random() < 0.2, False, 0))
        elif action in ("typo", "touch") and current is not None:
            ann = dict(current["metadata"].get("annotations") or {})
            if action == "typo":
                if ANN_TYPO in ann:
                    del ann[ANN_TYPO]
                else:
                    ann[ANN_TYPO] = "dsrr"
            else:
                self.touches += 1
                ann["touch"] = str(self.touches)  # a conflict for an operator mid-write
            obj = {**current, "metadata": {**current["metadata"], "annotations": ann}}
            self.kube.put("services", obj)
        elif action == "delete" and current is not None:
            self.kube.remove("services", f"ns/{name}")
        elif action == "deliver" and self.replicas:
            rep = rng.choice(list(self.replicas.values()))
            rep.deliver(rng.randrange(1, 30))
        elif action == "resync" and self.replicas:
            rep = rng.choice(list(self.replicas.values()))
            if rep.ctl.synced.is_set():
                await rep.ctl.resync()
        elif action == "failover":
            # The Lease moves: the old leader may go on running (frozen, cut off) until it
            # notices; its writes are refused by the Lease gate meanwhile.
            others = [n for n in self.replicas if n != self.holder]
            if others:
                new = rng.choice(others)
                # The Lease outlives the renew deadline by more than a request takes: what the
                # old leader sent before its deadline has landed before anyone else leads.
                old = self.replicas.get(self.holder) if self.holder else None
                self.holder = None
                while old is not None and old.client.inflight:
                    await asyncio.sleep(0.0005)
                self.holder = new
                # As the elector does: a replica whose term lapsed steps down before a new one.
                self.replicas[new].ctl.set_leading(False)
                self.replicas[new].ctl.set_leading(True)
        elif action == "notice":
            for n, rep in self.replicas.items():
                if n != self.holder:
                    rep.ctl.set_leading(False)
        elif action == "restart" and self.replicas:
            n = rng.choice(list(self.replicas))
            await self.replicas.pop(n).kill()
            self.replicas[n] = Replica(self, n)
            if self.holder == n:
                await self.wait_synced(self.replicas[n])
                self.replicas[n].ctl.set_leading(True)
        await self.run()

    async def wait_synced(self, rep: Replica) -> None:
        for _ in range(200):
            if rep.ctl.synced.is_set():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("a replica never finished its first listing")

    async def settle(self) -> None:
        """Everything delivered, the leader idle: the cluster has converged."""
        for rep in self.replicas.values():
            if rep.name != self.holder:
                rep.ctl.set_leading(False)
        for _ in range(400):
            for rep in self.replicas.values():
                rep.deliver(10_000)
            await self.run(0.005)
            leader = self.replicas[self.holder] if self.holder else None
            if (
                leader is not None
                and leader.ctl.leading
                and all(r.cursor == len(self.kube.log) for r in self.replicas.values())
                and not len(leader.ctl.queue)
                and not len(leader.ctl.publish)
                and not leader.ctl.queue._active
                and not leader.ctl.publish._active
                and not leader.ctl.rules.wanted
            ):
                before = len(self.kube.log)
                await self.run(0.02)
                if len(self.kube.log) == before:
                    return
        raise AssertionError("the operator never went idle")


async def scenario(seed: int, steps: int) -> World:
    world = World(random.Random(seed))
    for n in ("a", "b"):
        world.replicas[n] = Replica(world, n)
        await world.wait_synced(world.replicas[n])
    world.holder = "a"
    world.replicas["a"].ctl.set_leading(True)
    try:
        for _ in range(steps):
            await world.step()
        await world.settle()
        # converged: every live Service's CR carries exactly its status addresses
        for svc in world.kube.all("services"):
            if svc["metadata"].get("deletionTimestamp"):
                continue
            lb = world.kube.get_obj("lbs", f"ns/{svc['metadata']['name']}")
            carried = tuple(sorted((lb or {}).get("spec", {}).get("vips") or ()))
            assert carried == ips_of(svc), (svc["metadata"]["name"], carried, ips_of(svc))
        # ... and the node rules program exactly those addresses, for live Services only
        entries = {
            k: e for o in world.kube.all("noderules") for k, e in o["spec"]["services"].items()
        }
        live = {
            f"ns/{s['metadata']['name']}": ips_of(s)
            for s in world.kube.all("services")
            if not s["metadata"].get("deletionTimestamp")
        }
        programmed = {k: tuple(sorted(e["vips"])) for k, e in entries.items()}
        assert programmed == {k: v for k, v in live.items() if v}, (programmed, live)
    finally:
        for rep in world.replicas.values():
            await rep.kill()
    return world


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "RETRY_SECONDS", (0.001,) * 7)
    monkeypatch.setattr(workers, "CONFLICT_RETRY_SECONDS", 0.001)
    monkeypatch.setattr(controller_module, "POOL_FLUSH_SECONDS", 0.005)
    monkeypatch.setattr(rules_writer, "RULES_GATHER_SECONDS", 0.001)
    monkeypatch.setattr(rules_writer, "RULES_MIN_INTERVAL", 0.002)


def test_restart_with_holes_restores_rather_than_renumbers() -> None:
    """The issue's first case, deterministic: holes after deletes, then a restart."""

    async def go() -> None:
        world = World(random.Random(0))
        world.replicas["a"] = Replica(world, "a")
        await world.wait_synced(world.replicas["a"])
        world.holder = "a"
        world.replicas["a"].ctl.set_leading(True)
        for name in NAMES[4:]:
            world.kube.put("services", service(name, None, False, False, 0))
        await world.settle()
        for name in NAMES[4::2]:
            world.kube.remove("services", f"ns/{name}")
        await world.settle()
        before = {s["metadata"]["name"]: ips_of(s) for s in world.kube.all("services")}
        assert len(before) == 2 and all(before.values())
        for _ in range(5):
            await world.replicas.pop("a").kill()
            world.replicas["a"] = Replica(world, "a")
            await world.wait_synced(world.replicas["a"])
            world.replicas["a"].ctl.set_leading(True)
            await world.settle()
            assert {s["metadata"]["name"]: ips_of(s) for s in world.kube.all("services")} == before
        await world.replicas["a"].kill()

    asyncio.run(go())


def test_a_lagging_deletion_of_an_older_incarnation_keeps_the_newer_one() -> None:
    # Found by the soak: a Service deleted and created again under its name; a listing brought
    # the new one, then a lagging watch delivered the old one's deletion. Dropping the new one
    # from the view made the leader withdraw it and give it another address.
    ctl = Controller(OperatorSettings(identity="t"), FakeKube(), Metrics())  # type: ignore[arg-type]
    new = service("s6", None, False, False, 0)
    new["metadata"].update(uid="uid-new", resourceVersion="9")
    ctl.apply_event("services", "MODIFIED", new)
    old_gone = {
        "metadata": {"name": "s6", "namespace": "ns", "uid": "uid-old", "resourceVersion": "7"}
    }
    ctl.apply_event("services", "DELETED", old_gone)
    assert ctl.services["ns/s6"].uid == "uid-new"
    new_gone = {
        "metadata": {"name": "s6", "namespace": "ns", "uid": "uid-new", "resourceVersion": "10"}
    }
    ctl.apply_event("services", "DELETED", new_gone)
    assert "ns/s6" not in ctl.services
    # a listing's correction (no resourceVersion) always applies
    ctl.apply_event("services", "MODIFIED", new)
    ctl.apply_event("services", "DELETED", {"metadata": {"name": "s6", "namespace": "ns"}})
    assert "ns/s6" not in ctl.services

"""The NodeRules shards equal a fresh render: random walks of Service, EndpointSlice and Node
edits against the in-memory API (test_machine's World and Replica: lagging watches, request
latency, conflicts), and at every point where the operator has settled, each entry the shards
in the API hold is the entry rendered from scratch, with the operator's own pure functions, for
the Service as it is now in the API, and no shard holds an entry for a Service that is gone, is
being deleted, is not ours or has no address.

What an entry is rendered from (as ``publishing.Publishing.publish`` does): the Service's
configuration (``service.parse_service``), the addresses its status shows, its forwarding mode,
and its endpoints (``slices.endpoints_from_slices`` over its EndpointSlices in the API). A
Service whose input is bad (an unusable forwarding mode, source range or requested address)
keeps its last valid configuration: the walk lets the operator settle before an edit turns a
valid Service bad, so that configuration is known exactly (the Service as it was then). The
leader also restarts: a new term keeps the configuration the shards already hold.

A writer that sends an entry as it is rather than the merge patch from what the shard holds
leaves every field the Service no longer has (a cleared loadBalancerSourceRanges, affinity, a
health-check node port) on every node: the walks catch it
(``test_a_writer_that_sends_whole_entries_is_caught``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from typing import Any

import pytest
from portico_common import rulesdoc
from portico_operator import rules_writer
from portico_operator.controller import Controller
from portico_operator.metrics import Metrics
from portico_operator.noderules_push import node_rules_entry
from portico_operator.service import parse_service
from portico_operator.settings import (
    ANN_DRAIN_TIMEOUT,
    ANN_FORWARDING,
    ANN_IPS,
    ANN_POOL,
    ANN_SOURCE_RANGES_LEGACY,
    DEFAULT_CLASS,
    OperatorSettings,
)
from portico_operator.slices import endpoints_from_slices

from .fake_kube import FakeKube
from .test_machine import POOL, Replica, World
from .test_machine import fast_retries as fast_retries  # autouse: the walks' retries are quick

NS = "ns"
NAMES = [f"w{i}" for i in range(6)]
NODES = [f"n{i}" for i in range(4)]
SERVICE_LABEL = "kubernetes.io/service-name"

# -- what users write ------------------------------------------------------------------------


def pick(rng: random.Random, *choices: Any) -> Any:
    return copy.deepcopy(rng.choice(choices))


def ports(rng: random.Random) -> list[dict[str, Any]]:
    n = rng.choice([1, 1, 2, 3])
    numbers = rng.sample([80, 443, 8080, 53], n)
    names = rng.sample(["", "http", "web", "dns"], n) if n == 1 else ["a", "http", "web"][:n]
    out = []
    for number, name in zip(numbers, names, strict=True):
        p: dict[str, Any] = {"port": number, "protocol": pick(rng, "TCP", "TCP", "UDP", "SCTP")}
        if name:
            p["name"] = name
        target = pick(rng, None, number, 9000, "web")
        if target is not None:
            p["targetPort"] = target
        if rng.random() < 0.5:
            p["nodePort"] = 30000 + rng.randrange(100)
        out.append(p)
    return out


# One mutation per field: each returns the field's new value (None: the field is removed).
FIELDS = {
    "ports": ports,
    "externalTrafficPolicy": lambda r: pick(r, None, "Cluster", "Local"),
    "healthCheckNodePort": lambda r: pick(r, None, 32000, 32001),
    "sessionAffinity": lambda r: pick(r, None, "None", "ClientIP", "ClientIP"),
    "sessionAffinityConfig": lambda r: pick(
        r, None, {}, {"clientIP": {}}, {"clientIP": {"timeoutSeconds": r.choice([60, 10800])}}
    ),
    "loadBalancerSourceRanges": lambda r: pick(
        r,
        None,
        [],
        ["198.18.0.0/16"],
        [" 198.018.001.002/32", "10.0.0.0/8"],
        ["fd00:1::/64", "198.18.7.0/24"],
        ["10.1.2.3"],  # no prefix length: bad input
    ),
    "ipFamilies": lambda r: pick(r, None, ["IPv4"], ["IPv6"], ["IPv4", "IPv6"], ["IPv6", "IPv4"]),
    "ipFamilyPolicy": lambda r: pick(r, None, "SingleStack", "PreferDualStack", "RequireDualStack"),
    "trafficDistribution": lambda r: pick(r, None, None, "PreferClose"),
    "type": lambda r: pick(r, "LoadBalancer", "LoadBalancer", "LoadBalancer", "ClusterIP"),
    "loadBalancerClass": lambda r: pick(r, None, None, None, DEFAULT_CLASS, "other.example/lb"),
}
ANNOTATIONS = {
    ANN_FORWARDING: lambda r: pick(r, None, None, "dsr", "nat", " NAT ", "dsrr"),  # dsrr: bad
    ANN_DRAIN_TIMEOUT: lambda r: pick(r, None, None, None, "30", "600s", "soon"),  # soon: bad
    ANN_SOURCE_RANGES_LEGACY: lambda r: pick(r, None, None, "198.19.0.0/16, 10.9.0.0/16"),
    ANN_IPS: lambda r: pick(
        r,
        None,
        None,
        None,
        "10.0.0.6",
        "fd00::6",
        "10.0.0.6,fd00::6",
        "10.0.0.6,10.0.0.7",  # two IPv4 addresses: bad input
        "not-an-address",  # bad input
    ),
    ANN_POOL: lambda r: pick(r, None, None, None, "p", "missing"),
    "touch": lambda r: str(r.randrange(1000)),  # nothing the operator reads
}


def fresh_service(rng: random.Random, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports(rng)}
    ann: dict[str, str] = {}
    for field, make in FIELDS.items():
        if field not in ("type", "ports") and rng.random() < 0.4:
            value = make(rng)
            if value is not None:
                spec[field] = value
    for a, make in ANNOTATIONS.items():
        if rng.random() < 0.3:
            value = make(rng)
            if value is not None:
                ann[a] = value
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "annotations": ann},
        "spec": spec,
    }


def mutated(rng: random.Random, current: dict[str, Any]) -> dict[str, Any]:
    """The Service with one to three of its fields or annotations changed (or removed)."""
    obj = copy.deepcopy(current)
    spec, ann = obj["spec"], obj["metadata"].setdefault("annotations", {})
    for _ in range(rng.choice([1, 1, 2, 3])):
        present = [(spec, f) for f in FIELDS if f in spec and f not in ("ports", "type")]
        present += [(ann, a) for a in ANNOTATIONS if a in ann]
        if present and rng.random() < 0.3:
            target, field = rng.choice(present)  # cleared: the entry loses what it gave
            if field == "loadBalancerSourceRanges" and rng.random() < 0.5:
                target[field] = []
            else:
                del target[field]
            continue
        if rng.random() < 0.7:
            field = rng.choice(list(FIELDS))
            target, value = spec, FIELDS[field](rng)
        else:
            field = rng.choice(list(ANNOTATIONS))
            target, value = ann, ANNOTATIONS[field](rng)
        if value is None:
            target.pop(field, None)
        else:
            target[field] = value
    return obj


def endpoint_slice(rng: random.Random, service: str, index: int) -> dict[str, Any]:
    endpoints = []
    for _ in range(rng.choice([0, 1, 2, 3])):
        host = rng.randrange(1, 6)
        ep: dict[str, Any] = {"addresses": [f"10.244.{rng.randrange(3)}.{host}"], "conditions": {}}
        for cond in ("ready", "serving", "terminating"):
            value = pick(rng, None, None, True, False)
            if value is not None:
                ep["conditions"][cond] = value
        if host != 5:
            # An address is always with a node or always without one: see
            # test_an_address_with_and_without_a_node_in_two_slices.
            ep["nodeName"] = rng.choice(NODES)
        if rng.random() < 0.4:
            ep["zone"] = rng.choice(["z1", "z2"])
        if rng.random() < 0.3:
            ep["hints"] = {
                "forZones": [{"name": z} for z in rng.sample(["z1", "z2"], rng.randrange(1, 3))]
            }
            if rng.random() < 0.5:
                ep["hints"]["forNodes"] = [{"name": rng.choice(NODES)}]
        endpoints.append(ep)
    slice_ports = [
        {"name": pick(rng, "", "http", "web"), "protocol": "TCP", "port": rng.choice([80, 9000])}
        for _ in range(rng.choice([0, 1, 1, 2]))
    ]
    if rng.random() < 0.1:
        slice_ports.append({"name": "unresolved"})  # no port: skipped
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{index}",
            "namespace": NS,
            "labels": {SERVICE_LABEL: service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": slice_ports,
    }


def node(rng: random.Random, name: str) -> dict[str, Any]:
    labels: dict[str, str] = {"topology.kubernetes.io/zone": rng.choice(["z1", "z2"])}
    if rng.random() < 0.1:
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "addresses": [{"type": "InternalIP", "address": f"192.168.0.{NODES.index(name) + 1}"}],
            "conditions": [{"type": "Ready", "status": pick(rng, "True", "True", "False")}],
        },
    }


# -- the expectation, from scratch -------------------------------------------------------------


def bad_input(obj: dict[str, Any]) -> bool:
    """Input the operator cannot use, for which it keeps the last valid configuration: what
    ``ServiceView.input_error`` refuses, and the requests ``ipam.Allocator.assign`` refuses as
    the user's error (``allocating.BAD_INPUT_REASONS``)."""
    view = parse_service(obj)
    if view.input_error() is not None:
        return True
    versions = [ip.version for ip in view.requested_ips()]
    return len(versions) != len(set(versions)) or not set(versions) <= set(view.ip_families)


def fresh_entries(world: World, good: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every entry the shards should hold, rendered from the API's objects as they are now."""
    slices: dict[str, list[dict[str, Any]]] = {}
    for s in world.kube.all("slices"):
        svc = (s["metadata"].get("labels") or {}).get(SERVICE_LABEL)
        if svc:
            slices.setdefault(f"{s['metadata']['namespace']}/{svc}", []).append(s)
    out: dict[str, Any] = {}
    for obj in world.kube.all("services"):
        view = parse_service(obj)
        if not view.served_by(DEFAULT_CLASS) or view.deleting or not view.ingress_ips():
            continue
        basis = view
        if bad_input(obj):
            last = good.get(view.key)
            assert last is not None and last["metadata"]["uid"] == view.uid, (
                f"{view.key}: bad input with an address, and no valid configuration known"
            )
            basis = parse_service(last)
        endpoints = endpoints_from_slices(slices.get(view.key, []))
        entry = node_rules_entry(basis, view.ingress_ips(), basis.forwarding_mode(), endpoints)
        out[view.key] = canonical(entry)
    return out


def canonical(entry: dict[str, Any]) -> dict[str, Any]:
    """Endpoints are written sorted by (address, node); the order among endpoints that tie (one
    address in two slices) follows the slices' order in a cache, and means nothing."""
    eps = sorted(entry.get("endpoints") or [], key=lambda e: json.dumps(e, sort_keys=True))
    return {**entry, "endpoints": eps}


def held_entries(world: World) -> dict[str, Any]:
    """What the NodeRules shards in the API hold, each entry checked to be in its shard."""
    out: dict[str, Any] = {}
    for shard in world.kube.all("noderules"):
        name = shard["metadata"]["name"]
        for key, entry in ((shard.get("spec") or {}).get("services") or {}).items():
            assert rulesdoc.shard_name(key) == name, f"{key} in shard {name}"
            assert key not in out, f"{key} in two shards"
            out[key] = canonical(entry)
    return out


def check_fresh(world: World, good: dict[str, dict[str, Any]], where: str) -> None:
    held, want = held_entries(world), fresh_entries(world, good)
    if held == want:
        return
    lines = [f"{where}: the shards differ from a fresh render"]
    for key in sorted(set(held) | set(want)):
        h, w = held.get(key), want.get(key)
        if h == w:
            continue
        if h is None or w is None:
            lines.append(f"  {key}: held {h is not None}, wanted {w is not None}")
            continue
        for field in sorted(set(h) | set(w)):
            if h.get(field) != w.get(field):
                lines.append(f"  {key}.{field}: held {h.get(field)!r}, fresh {w.get(field)!r}")
    raise AssertionError("\n".join(lines))


# -- the walk ----------------------------------------------------------------------------------


class FreshWorld(World):
    def check(self) -> None:
        """test_machine's address invariants assume a Service keeps its address while its
        request stays; these users also change a Service's type, class and pool."""


class Walk:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.world = FreshWorld(self.rng)
        # key -> the Service as it was at the last settle where its input was valid
        self.good: dict[str, dict[str, Any]] = {}
        self.settles = 0

    async def start(self) -> None:
        world = self.world
        for n in NODES[:3]:
            world.kube.put("nodes", node(self.rng, n))
        world.replicas["a"] = Replica(world, "a")
        await world.wait_synced(world.replicas["a"])
        world.holder = "a"
        world.replicas["a"].ctl.set_leading(True)
        for name in NAMES[:4]:
            world.kube.put("services", fresh_service(self.rng, name))
            world.kube.put("slices", endpoint_slice(self.rng, name, 0))

    async def settle(self) -> None:
        await self.world.settle()
        self.settles += 1
        check_fresh(self.world, self.good, f"settle {self.settles}")
        for obj in self.world.kube.all("services"):
            view = parse_service(obj)
            if not bad_input(obj) and view.served_by(DEFAULT_CLASS) and not view.deleting:
                self.good[view.key] = copy.deepcopy(obj)

    async def put_service(self, obj: dict[str, Any]) -> None:
        key = f"{NS}/{obj['metadata']['name']}"
        current = self.world.kube.get_obj("services", key)
        if current is not None and bad_input(obj) and not bad_input(current):
            # The operator keeps the last valid configuration it saw: let it see this one.
            await self.settle()
            current = self.world.kube.get_obj("services", key)
            if current is None:
                return
            obj = {**obj, "status": copy.deepcopy(current.get("status") or {})}
        self.world.kube.put("services", obj)

    async def step(self) -> None:
        rng, world = self.rng, self.world
        name = rng.choice(NAMES)
        key = f"{NS}/{name}"
        current = world.kube.get_obj("services", key)
        action = rng.choices(
            [
                "create",
                "edit",
                "delete",
                "slice",
                "unslice",
                "node",
                "unnode",
                "deliver",
                "run",
                "restart",
            ],
            weights=[4, 10, 2, 5, 2, 2, 1, 4, 3, 1],
        )[0]
        if action == "create" and current is None:
            obj = fresh_service(rng, name)
            while bad_input(obj) and rng.random() < 0.8:
                obj = fresh_service(rng, name)  # mostly usable: bad input gets no address
            world.kube.put("services", obj)
        elif action == "edit" and current is not None:
            await self.put_service(mutated(rng, current))
        elif action == "delete" and current is not None:
            world.kube.remove("services", key)
            self.good.pop(key, None)
        elif action == "slice":
            world.kube.put("slices", endpoint_slice(rng, name, rng.randrange(3)))
        elif action == "unslice":
            world.kube.remove("slices", f"{key}-{rng.randrange(3)}")
        elif action == "node":
            world.kube.put("nodes", node(rng, rng.choice(NODES)))
        elif action == "unnode":
            world.kube.remove("nodes", rng.choice(NODES))
        elif action == "deliver":
            world.replicas["a"].deliver(rng.randrange(1, 20))
        elif action == "restart":
            await self.restart()
        if rng.random() < 0.06:
            await self.settle()
        else:
            await world.run(0.002)

    async def restart(self) -> None:
        """The leader restarts (or the Lease moves): the new term knows no last valid
        configuration of a Service whose input is bad, and keeps what the shards hold."""
        world = self.world
        await world.replicas.pop("a").kill()
        world.replicas["a"] = Replica(world, "a")
        await world.wait_synced(world.replicas["a"])
        world.replicas["a"].ctl.set_leading(True)

    async def close(self) -> None:
        for rep in self.world.replicas.values():
            await rep.kill()


async def walk(seed: int, steps: int) -> Walk:
    w = Walk(seed)
    try:
        await w.start()
        for _ in range(steps):
            await w.step()
        await w.settle()
    finally:
        await w.close()
    return w


SEEDS = 24
STEPS = 100


@pytest.mark.parametrize("seed", range(SEEDS))
def test_the_shards_equal_a_fresh_render(seed: int) -> None:
    w = asyncio.run(walk(seed, STEPS))
    assert w.settles >= 1


def test_a_writer_that_sends_whole_entries_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walks are strong enough to see the bug fixed in b4eefb0: a writer that merge-patches
    a shard with the whole entry leaves a cleared field (loadBalancerSourceRanges, affinity, a
    health-check node port) on every node."""
    monkeypatch.setattr(rules_writer, "entry_patch", lambda old, new: new)
    for seed in range(SEEDS):
        try:
            asyncio.run(walk(seed, STEPS))
        except AssertionError as e:
            assert "differ from a fresh render" in str(e)
            return
    raise AssertionError("no walk noticed fields left behind in the shards")


# -- what the walks found (product bugs, since fixed) -------------------------------------------


def web(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS, "annotations": {}},
        "spec": {
            "type": "LoadBalancer",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            **spec,
        },
    }


def turned_bad(obj: dict[str, Any]) -> dict[str, Any]:
    """The Service with a new port and a typo in its forwarding mode: the port must wait."""
    obj = copy.deepcopy(obj)
    obj["spec"]["ports"][0]["port"] = 8080
    obj["metadata"].setdefault("annotations", {})[ANN_FORWARDING] = "dsrr"
    return obj


def held_ports(kube: Any, key: str) -> list[int]:
    entries = {k: e for o in kube.all("noderules") for k, e in o["spec"]["services"].items()}
    return [p["port"] for p in entries[key]["ports"]]


def test_an_address_with_and_without_a_node_in_two_slices() -> None:
    # One address in two slices (a selector-less Service's own slice beside another, a slice
    # being replaced), once with a nodeName and once without: rendering the entry raised (None
    # sorted against a node name), so every publish of the Service failed, retried forever, and
    # neither its node rules nor its LoadBalancer CR followed any change.
    with_node = {"endpoints": [{"addresses": ["10.244.0.1"], "nodeName": "n0"}]}
    without = {"endpoints": [{"addresses": ["10.244.0.1"]}]}
    endpoints = endpoints_from_slices([with_node, without])
    view = parse_service(web())
    node_rules_entry(view, (), "DSR", endpoints)


def test_a_publish_before_stage_one_keeps_the_last_valid_configuration() -> None:
    # The Service turns bad; before stage one sees it, a publish of it runs (queued by an
    # EndpointSlice, a Node — every Service —, an agent's report, the Programmed recheck). The
    # outcome it reads is the valid version's (no input error); it rendered the cache's view,
    # and the bad version's configuration reached every node and the CR until stage one
    # recorded the input error. The view's own input error now keeps the last valid one.
    async def go() -> list[int]:
        kube = FakeKube()
        kube.put("pools", copy.deepcopy(POOL))
        kube.put("namespaces", {"metadata": {"name": NS}})
        ctl = Controller(OperatorSettings(identity="t"), kube, Metrics())  # type: ignore[arg-type]
        await ctl.take_over()
        key = f"{NS}/web"
        ctl.apply_event("services", "ADDED", kube.put("services", web()))
        await ctl.allocating.reconcile(key)
        await ctl.publishing.publish(key)
        await ctl.rules.write(ctl.rules.wanted)
        await ctl.publishing.publish(key)
        assert held_ports(kube, key) == [80]
        bad = turned_bad(kube.get_obj("services", key) or {})
        ctl.apply_event("services", "MODIFIED", kube.put("services", bad))
        await ctl.publishing.publish(key)  # before stage one's reconcile of the bad version
        await ctl.rules.write(ctl.rules.wanted)
        return held_ports(kube, key)

    assert asyncio.run(go()) == [80]


def test_a_new_leader_keeps_the_last_valid_configuration() -> None:
    # The last valid configuration (ServiceState.good) lives in the leader's memory only: a
    # new term rendered a Service with bad input from the bad input (the new port reached
    # every node and the CR). It now keeps the configuration the shards and the CR hold.
    async def go() -> tuple[list[int], list[int], list[int]]:
        world = FreshWorld(random.Random(0))
        world.replicas["a"] = Replica(world, "a")
        await world.wait_synced(world.replicas["a"])
        world.holder = "a"
        world.replicas["a"].ctl.set_leading(True)
        try:
            world.kube.put("services", web())
            await world.settle()
            key = f"{NS}/web"
            world.kube.put("services", turned_bad(world.kube.get_obj("services", key) or {}))
            await world.settle()
            before = held_ports(world.kube, key)
            await world.replicas.pop("a").kill()  # a restart, or the Lease moving
            world.replicas["a"] = Replica(world, "a")
            await world.wait_synced(world.replicas["a"])
            world.replicas["a"].ctl.set_leading(True)
            await world.settle()
            lb = world.kube.get_obj("lbs", key) or {}
            return before, held_ports(world.kube, key), [p["port"] for p in lb["spec"]["ports"]]
        finally:
            for rep in world.replicas.values():
                await rep.kill()

    assert asyncio.run(go()) == ([80], [80], [80])

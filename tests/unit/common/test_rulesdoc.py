"""NodeRules entries: what the operator writes is what every agent reads back, shards are
stable, patches carry only what changed, and a bad entry never takes the others' rules."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_common.model import LBService, NodeInfo, ServicePort
from portico_common.rulesdoc import SHARDS, service_entry, service_from_entry, shard_name
from portico_nodeagent.kubeagent import local_health_ports, usable
from portico_nodeagent.render import render_node_rules
from portico_operator.noderules_push import shard_patches

from ..nodeagent.test_rulesdiff_props import endpoints

ports = st.lists(
    st.builds(
        ServicePort,
        st.sampled_from(["http", "dns", ""]),
        st.sampled_from(["TCP", "UDP", "SCTP"]),
        st.integers(1, 65535),
        st.one_of(st.none(), st.integers(30000, 32767)),
        st.one_of(st.none(), st.integers(1, 65535), st.sampled_from(["http", "dns"])),
    ),
    max_size=4,
)


@st.composite
def services(draw: Any) -> LBService:
    affinity = draw(st.sampled_from(["None", "ClientIP"]))
    return LBService(
        namespace=draw(st.sampled_from(["default", "team-a"])),
        name=draw(st.sampled_from(["web", "dns", "api"])),
        vips=tuple(draw(st.sets(st.sampled_from(["198.18.32.1", "fd00:18::a:1"]), min_size=1))),
        ports=tuple(draw(ports)),
        endpoints=tuple(sorted(draw(endpoints(v6=True)), key=lambda e: e.address)),
        external_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
        session_affinity=affinity,
        session_affinity_timeout=draw(st.one_of(st.none(), st.integers(1, 86400)))
        if affinity == "ClientIP"
        else None,
        source_ranges=tuple(
            draw(st.lists(st.sampled_from(["10.0.0.0/8", "fd00::/8"]), max_size=2))
        ),
        traffic_distribution=draw(st.sampled_from([None, "PreferClose", "PreferSameNode"])),
        forwarding_mode=draw(st.sampled_from(["DSR", "NAT"])),
        health_check_node_port=draw(st.one_of(st.none(), st.integers(30000, 32767))),
    )


@settings(max_examples=200)
@given(services())
def test_an_entry_reads_back_as_written(svc: LBService) -> None:
    entry = service_entry(svc)
    # through the API: JSON, nothing else
    assert service_from_entry(json.loads(json.dumps(entry))) == svc


def test_shards_are_stable_and_spread() -> None:
    keys = [f"ns-{i % 7}/svc-{i}" for i in range(2000)]
    names = [shard_name(k) for k in keys]
    assert names == [shard_name(k) for k in keys]
    counts = {n: names.count(n) for n in set(names)}
    assert len(counts) == SHARDS
    # no shard holds more than twice its share
    assert max(counts.values()) < 2 * len(keys) / SHARDS


def test_patches_carry_only_changes() -> None:
    a, b, c = "ns/a", "ns/b", "ns/c"
    written = {a: {"v": 1}, b: {"v": 2}}
    patches = shard_patches({a: {"v": 1}, b: {"v": 3}, c: None}, written)
    # a is unchanged, c was never written: only b
    assert patches == {shard_name(b): {b: {"v": 3}}}
    assert shard_patches({a: None}, written) == {shard_name(a): {a: None}}


def _svc(name: str, ranges: tuple[str, ...] = (), hcnp: int | None = None, policy: str = "Local"):
    return LBService(
        "default",
        name,
        ("198.18.32.9",),
        (ServicePort("http", "TCP", 80, None, 8080),),
        external_traffic_policy=policy,
        source_ranges=ranges,
        health_check_node_port=hcnp,
    )


def test_a_bad_entry_keeps_its_last_good_rules_and_spares_the_others() -> None:
    good, fine = _svc("a", ("10.0.0.0/8",)), _svc("b")
    last: dict[str, LBService] = {}
    out, bad = usable([good, fine], last)
    assert out == [good, fine] and bad == {}
    typo = _svc("a", ("10.0.0.0/33",))
    out, bad = usable([typo, fine], last)
    assert out == [good, fine], "the typo must not replace the rules in force"
    assert "default/a" in bad and "10.0.0.0/33" in bad["default/a"]
    render_node_rules(out, NodeInfo("node-1"))  # what is applied renders
    # A Service that never had a good entry is left out; one that is gone is forgotten.
    out, bad = usable([_svc("c", ("nope",))], last)
    assert out == [] and set(bad) == {"default/c"} and last == {}


def test_health_ports_are_those_of_local_services_only() -> None:
    local, cluster, none = _svc("l", hcnp=31000), _svc("c", hcnp=31001, policy="Cluster"), _svc("n")
    assert local_health_ports([local, cluster, none]) == {31000: local}


def test_unreachable_endpoint_round_trips() -> None:
    from portico_common.model import Endpoint, LBService, ServicePort
    from portico_common.rulesdoc import service_entry, service_from_entry

    svc = LBService(
        "default",
        "web",
        ("198.18.32.5",),
        (ServicePort("http", "TCP", 80),),
        (Endpoint("198.19.1.2", "node-1"), Endpoint("198.19.2.2", "node-2", unreachable=True)),
    )
    entry = service_entry(svc)
    assert [e.get("unreachable") for e in entry["endpoints"]] == [None, True]
    assert service_from_entry(entry).endpoints == svc.endpoints

"""``kubectl portico status``'s verdict for each reason a Service is not reachable, from objects
that Portico's own writers rendered (``world``): the finding that names it, blocking or not,
and nothing blocking when the path is whole."""

from __future__ import annotations

from dataclasses import replace

import pytest
from portico_kubectl.diagnose import Status, diagnose
from portico_kubectl.text import render, render_all

from .world import NAME, NOW, SHARD, World


def codes(st: Status, blocking: bool | None = None) -> list[str]:
    return [f.code for f in st.findings if blocking is None or f.blocking == blocking]


def node(st: Status, name: str):  # type: ignore[no-untyped-def]
    return next(n for n in st.nodes if n.node == name)


def test_a_whole_path_is_reachable_and_names_every_part() -> None:
    st = diagnose(World().snapshot(), NOW)
    assert st.reachable and not st.findings
    assert st.vips == {"IPv4": ["198.18.32.0"]}
    assert st.gateway == "gw-1" and st.pool == "lab"
    assert [n.node for n in st.nodes] == ["node-1", "node-2", "node-3"]
    assert all(n.usable and n.health == "healthy" and n.rules == "applied" for n in st.nodes)
    assert all(n.arp == "reachable" for n in st.nodes)
    assert len(st.endpoints) == 6 and all(e.ready for e in st.endpoints)
    text = render(st)
    assert text.startswith(f"Service shop/{NAME}: REACHABLE\n")
    assert "gw-1" in text and "web-2-1" in text


def test_no_pool_matches() -> None:
    w = World(
        pools=[
            {
                "name": "team-b",
                "spec": {
                    "addresses": ["198.18.32.0/27"],
                    "serviceSelector": {"matchLabels": {"team": "b"}},
                },
            }
        ]
    )
    st = diagnose(w.snapshot(), NOW)
    assert not st.reachable and codes(st) == ["NoPoolMatches"]
    assert "no VIPPool matches" in st.findings[0].message
    assert [p.name for p in st.pools] == ["team-b"] and st.pools[0].selectors == "serviceSelector"
    assert "team-b" in render(st)


def test_an_exhausted_pool() -> None:
    w = World(pools=[{"name": "tiny", "spec": {"addresses": ["198.18.32.0/31"]}}], taken=2)
    st = diagnose(w.snapshot(), NOW)
    assert codes(st, blocking=True) == ["PoolExhausted"]
    assert "exhausted" in st.findings[0].message and st.pools[0].free_v4 == 0


def test_bad_input_without_an_address_blocks() -> None:
    # The apiserver refuses a bad source range; an annotation it does not check is the same
    # path in the operator (Valid=False, Allocated=False InvalidRequest).
    w = World(annotations={"portico.dev/forwarding-mode": "magic"})
    st = diagnose(w.snapshot(), NOW)
    assert codes(st) == ["InvalidInput"] and st.findings[0].blocking
    assert "portico.dev/forwarding-mode='magic'" in st.findings[0].message


def test_bad_input_with_an_address_kept_only_warns() -> None:
    w = World(input_error_after_allocation="loadBalancerSourceRanges: '10.0.0.300/8' is not a CIDR")
    st = diagnose(w.snapshot(), NOW)
    assert st.reachable and codes(st) == ["InvalidInput"]
    assert "10.0.0.300/8" in st.findings[0].message and "last valid" in st.findings[0].message


def test_source_ranges_that_exclude_the_client() -> None:
    w = World(ranges=["198.18.1.0/24"])
    assert diagnose(w.snapshot(), NOW, client="198.18.1.7").reachable
    st = diagnose(w.snapshot(), NOW, client="198.18.2.7")
    assert not st.reachable and codes(st) == ["SourceRangeExcludes"]
    assert "198.18.1.0/24" in st.findings[0].message and "198.18.2.7" in st.findings[0].message


def test_a_client_of_the_other_family_has_no_address() -> None:
    st = diagnose(World().snapshot(), NOW, client="fd00::7")
    assert codes(st, blocking=True) == ["NoAddressOfFamily"]


def test_no_endpoints() -> None:
    st = diagnose(World(pods={}).snapshot(), NOW)
    assert not st.reachable and codes(st) == ["NoEndpoints"]
    assert "selector matches no pod" in st.findings[0].message


def test_no_endpoints_of_a_local_service_is_said_once() -> None:
    sick = dict.fromkeys(("node-1", "node-2", "node-3"), "HTTP 503, 0 local endpoints")
    st = diagnose(World(policy="Local", pods={}, unhealthy=sick).snapshot(), NOW)
    assert codes(st) == ["NoEndpoints"]
    assert all(n.problems and not n.usable for n in st.nodes)


def test_endpoints_none_ready() -> None:
    w = World(not_ready={"node-1", "node-2", "node-3"})
    st = diagnose(w.snapshot(), NOW)
    assert "NoReadyEndpoints" in codes(st, blocking=True)


def test_rules_not_applied_on_one_node_warns() -> None:
    w = World(lagging={"node-2"}, unhealthy={"node-2": "connection refused"})
    st = diagnose(w.snapshot(), NOW)
    assert st.reachable
    assert codes(st) == ["RulesNotApplied"]
    assert "connection refused" in st.findings[0].message
    n2 = node(st, "node-2")
    assert n2.rules == "behind" and not n2.usable
    assert f"generation 5 of NodeRules {SHARD}, which is at generation 7" in n2.rules_message
    assert "node-2" in st.findings[0].message and "node-1" not in st.findings[0].message


def test_rules_not_applied_anywhere_blocks() -> None:
    w = World(lagging={"node-1", "node-2", "node-3"})
    st = diagnose(w.snapshot(), NOW)
    assert not st.reachable
    assert codes(st) == ["RulesNotApplied", "NoHealthyNode"]


def test_an_agent_that_fails_and_a_node_without_agent() -> None:
    w = World(agent_error={"node-1": "nft: Could not process rule"}, no_agent={"node-3"})
    st = diagnose(w.snapshot(), NOW)
    assert st.reachable  # node-2 serves
    assert (
        node(st, "node-1").rules == "failed"
        and "Could not process" in node(st, "node-1").rules_message
    )
    assert node(st, "node-3").rules == "no agent"


def test_a_node_the_gateway_cannot_reach() -> None:
    st = diagnose(World(unreachable={"node-2"}).snapshot(), NOW)
    assert st.reachable and codes(st) == ["NodeUnreachable"]
    n2 = node(st, "node-2")
    assert n2.arp == "unreachable" and n2.health == "unhealthy" and not n2.usable
    assert "no ARP answer" in st.findings[0].message
    # The operator took its endpoints out of the other nodes' rules.
    assert {e.node for e in st.endpoints if e.unreachable} == {"node-2"}


def test_every_node_unhealthy_blocks() -> None:
    sick = dict.fromkeys(("node-1", "node-2", "node-3"), "HTTP 503, 0 local endpoints")
    st = diagnose(World(unhealthy=sick).snapshot(), NOW)
    assert codes(st, blocking=True) == ["NodeUnhealthy", "NoHealthyNode"]


def test_local_policy_nodes_without_endpoints_do_not_serve() -> None:
    w = World(policy="Local", pods={"node-1": 1})
    st = diagnose(w.snapshot(), NOW)
    assert st.reachable
    assert [n.node for n in st.nodes if n.usable] == ["node-1"]
    assert "no local endpoint" in node(st, "node-2").problems[0]


def test_no_gateway_owns_the_addresses() -> None:
    st = diagnose(World(gateway=None).snapshot(), NOW)
    assert codes(st, blocking=True) == ["NoGateway"]
    assert "portico-lbnode" in st.findings[0].message


def test_a_stale_owner_gateway() -> None:
    st = diagnose(World(heartbeat_age=95).snapshot(), NOW)
    assert codes(st, blocking=True) == ["GatewayStale"]
    assert "95 s ago" in st.findings[0].message
    gone = diagnose(World(report_kept=False).snapshot(), NOW)
    assert codes(gone, blocking=True) == ["GatewayGone"]
    assert "Gateway:    gw-1  (its status may be stale" in render(gone)


def test_a_cleanly_stopped_gateway_is_gone_while_its_report_is_fresh() -> None:
    # A stopped gateway leaves its report (for a restart), fresh for 30 s, marked stoppedTime.
    st = diagnose(World(heartbeat_age=2, stopped_age=1).snapshot(), NOW)
    assert not st.reachable
    assert codes(st, blocking=True) == ["GatewayGone"]
    assert "stopped at 2026-12-05T19:59:59Z" in st.findings[0].message
    assert "Gateway:    gw-1  (its status may be stale" in render(st)


def test_unreadable_reports_skip_the_gateway_check_and_say_so() -> None:
    st = diagnose(World(report_kept=False).snapshot(reports=None), NOW)
    assert st.reachable and st.unread == ("GatewayReports",)
    assert "could not read GatewayReports" in render(st)


def test_every_node_excluded() -> None:
    st = diagnose(World(excluded={"node-1", "node-2", "node-3"}).snapshot(), NOW)
    assert "NoBackends" in codes(st, blocking=True)
    assert "node.kubernetes.io/exclude-from-external-load-balancers" in render(st)


def test_no_node_rules_entry() -> None:
    snap = World().snapshot()
    empty = {"metadata": {"name": SHARD, "generation": 7}, "spec": {"services": {}}}
    st = diagnose(replace(snap, rules=empty), NOW)
    assert "NoNodeRules" in codes(st, blocking=True)


@pytest.mark.parametrize(
    ("kind", "code"),
    [("service", "ServiceNotFound"), ("lb", "NoLoadBalancerObject")],
)
def test_missing_objects(kind: str, code: str) -> None:
    snap = World().snapshot()
    snap = replace(snap, service=None) if kind == "service" else replace(snap, lb=None)
    st = diagnose(snap, NOW)
    assert code in codes(st, blocking=True)


def test_another_class_and_another_type() -> None:
    snap = World().snapshot()
    svc = dict(snap.service or {})
    svc["spec"] = {**svc["spec"], "loadBalancerClass": "metallb.io/l2"}
    assert codes(diagnose(replace(snap, service=svc), NOW)) == ["OtherLoadBalancerClass"]
    svc["spec"] = {**svc["spec"], "type": "ClusterIP"}
    assert codes(diagnose(replace(snap, service=svc), NOW)) == ["NotLoadBalancer"]


def test_the_summary_of_all() -> None:
    ok = diagnose(World().snapshot(), NOW)
    bad = diagnose(World(pods={}).snapshot(), NOW)
    text = render_all([ok, bad])
    assert "REACHABLE" in text and "NOT REACHABLE" in text and "NoEndpoints" in text

"""The gateway's pure parts above the data plane: reading a LoadBalancer CR, choosing the nodes
that take new flows, and the status it writes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from portico_lbnode.lbstatus import NodeReport, Report, render_status, status_differs
from portico_lbnode.model import InvalidService, service_from_cr
from portico_lbnode.selection import candidates, healthy_nodes


def cr(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "service": {"name": "web", "uid": "u1"},
        "vips": ["198.18.32.5", "fd00:18::a:5"],
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
            {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053},
        ],
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "backends": [
            {"node": "node-2", "internalIPs": ["198.18.0.11", "fd00:18::b"], "ready": 2},
            {"node": "node-1", "internalIPs": ["198.18.0.10"], "ready": 1, "zone": "a"},
            {"node": "node-3", "internalIPs": ["198.18.0.12"], "ready": 0, "terminating": 1},
        ],
    }
    base.update(spec)
    return {"metadata": {"namespace": "default", "name": "web"}, "spec": base}


def test_cr_is_read_into_values() -> None:
    svc = service_from_cr(cr())
    assert svc.key == "default/web"
    assert svc.families == (4, 6)
    assert [(p.protocol, p.port, p.node_port) for p in svc.ports] == [
        ("TCP", 80, 30080),
        ("UDP", 53, 30053),
    ]
    assert svc.local and svc.health_check_node_port == 32000
    # Sorted by node, whatever the CR's order, so every gateway sees the same list.
    assert [b.node for b in svc.backends] == ["node-1", "node-2", "node-3"]
    assert svc.backends[1].ipv6 == ipaddress.ip_address("fd00:18::b")
    assert svc.backends[0].ipv6 is None and svc.backends[0].zone == "a"
    assert not svc.client_ip_affinity and svc.affinity_timeout == 0


def test_cluster_policy_ignores_a_stale_health_check_port() -> None:
    svc = service_from_cr(cr(externalTrafficPolicy="Cluster"))
    assert not svc.local and svc.health_check_node_port == 0


def test_affinity_and_ranges_and_mode() -> None:
    svc = service_from_cr(
        cr(
            sessionAffinity="ClientIP",
            sourceRanges=["198.18.1.0/24", " fd00:1::/64"],
            forwardingMode="NAT",
        )
    )
    assert svc.client_ip_affinity and svc.affinity_timeout == 10800
    assert [str(r) for r in svc.source_ranges] == ["198.18.1.0/24", "fd00:1::/64"]
    assert svc.nat


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"vips": ["198.18.32.500"]}, "not an IP"),
        ({"ports": [{"protocol": "ICMP", "port": 1}]}, "protocol"),
        ({"ports": [{"protocol": "TCP", "port": 70000}]}, "bad port"),
        ({"sourceRanges": ["nonsense"]}, "source range"),
        ({"backends": [{"internalIPs": ["198.18.0.10"]}]}, "node name"),
        ({"backends": [{"node": "n1"}, {"node": "n1", "ready": 1}]}, "listed twice"),
    ],
)
def test_bad_cr_is_refused_with_the_bad_part_named(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidService, match=words):
        service_from_cr(cr(**spec))


def test_local_takes_only_nodes_whose_check_passes_weighted_by_ready_pods() -> None:
    svc = service_from_cr(cr())
    passing = {("node-1", "default/web"), ("node-2", "default/web")}
    got = candidates(svc, 4, lambda n, k: (n, k) in passing)
    assert [(c.node, str(c.address), c.weight) for c in got] == [
        ("node-1", "198.18.0.10", 1),
        ("node-2", "198.18.0.11", 2),
    ]
    # IPv6: only node-2 has an IPv6 address.
    assert [c.node for c in candidates(svc, 6, lambda n, k: (n, k) in passing)] == ["node-2"]
    # Another Service's check is not this one's.
    assert candidates(svc, 4, lambda n, k: k == "default/other") == ()


def test_cluster_nodes_weigh_the_same_and_use_the_node_check() -> None:
    svc = service_from_cr(cr(externalTrafficPolicy="Cluster"))
    got = candidates(svc, 4, lambda n, k: k == "default/web" and n != "node-3")
    assert [(c.node, c.weight) for c in got] == [("node-1", 1), ("node-2", 1)]
    assert list(healthy_nodes(svc, lambda n, k: n == "node-3")) == ["node-3"]


def test_a_zoned_gateway_prefers_its_zone_while_it_has_endpoints() -> None:
    svc = service_from_cr(cr(externalTrafficPolicy="Cluster"))
    everyone = lambda n, k: True  # noqa: E731
    assert [c.node for c in candidates(svc, 4, everyone, gateway_zone="a")] == ["node-1"]
    # node-1 (zone a) failing: the others take over rather than nobody.
    assert [c.node for c in candidates(svc, 4, lambda n, k: n != "node-1", "a")] == [
        "node-2",
        "node-3",
    ]
    # A zone with no endpoints (ready 0) is no preference at all.
    svc2 = service_from_cr(
        cr(
            externalTrafficPolicy="Cluster",
            backends=[
                {"node": "node-1", "internalIPs": ["198.18.0.10"], "zone": "a", "ready": 0},
                {"node": "node-2", "internalIPs": ["198.18.0.11"], "zone": "b", "ready": 1},
            ],
        )
    )
    assert [c.node for c in candidates(svc2, 4, everyone, "a")] == ["node-1", "node-2"]


def _report(*nodes: NodeReport, announced: bool = True) -> Report:
    return Report("gw-1", announced, "Announced", "gw-1 answers", nodes, fail_closed=True)


def test_status_says_who_announces_and_which_nodes_pass() -> None:
    r = _report(
        NodeReport("node-1", True, "200", "2026-12-03T07:00:00Z"),
        NodeReport("node-2", False, "503: no local endpoints", "2026-12-03T07:00:01Z"),
    )
    st = render_status(r, 3, "2026-12-03T07:00:02Z", {})
    assert st["ownerGateway"] == "gw-1" and st["healthyNodes"] == 1
    assert st["nodes"][1] == {
        "node": "node-2",
        "healthy": False,
        "message": "503: no local endpoints",
        "lastTransitionTime": "2026-12-03T07:00:01Z",
    }
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Announced"]["status"] == "True"
    assert conds["Healthy"]["status"] == "True"
    # Nothing changed but the clock: no write.
    again = render_status(r, 3, "2026-12-03T07:09:00Z", st)
    assert not status_differs(st, again)
    assert again["conditions"][0]["lastTransitionTime"] == "2026-12-03T07:00:02Z"


def test_status_changes_when_a_node_flips_or_all_fail() -> None:
    ok = render_status(_report(NodeReport("node-1", True, "200", "t0")), 1, "t0", {})
    down = render_status(_report(NodeReport("node-1", False, "timeout", "t1")), 1, "t1", ok)
    assert status_differs(ok, down)
    conds = {c["type"]: c for c in down["conditions"]}
    assert conds["Healthy"]["status"] == "False"
    assert conds["Healthy"]["reason"] == "NoHealthyNodes"
    assert "dropped at the gateway" in conds["Healthy"]["message"]
    unprobed = render_status(_report(NodeReport("node-1", False, "not probed yet", "")), 1, "t", {})
    assert "lastTransitionTime" not in unprobed["nodes"][0]
    withdrawn = render_status(_report(announced=False), 1, "t2", down)
    assert withdrawn["ownerGateway"] == "" and status_differs(down, withdrawn)

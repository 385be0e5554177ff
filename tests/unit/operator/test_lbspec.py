"""Rendering the Service status and the LoadBalancer CR: pure functions of their inputs."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from portico_operator.lbspec import (
    condition,
    parse_node,
    render_spec,
    same_conditions,
    service_status,
    status_differs,
)
from portico_operator.service import BadServiceInput, parse_service
from portico_operator.slices import endpoints_from_slices


def svc(**spec: Any) -> dict[str, Any]:
    ann = spec.pop("annotations", {})
    status = spec.pop("status", {})
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u1",
            "resourceVersion": "7",
            "generation": 3,
            "annotations": ann,
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": 80,
                    "nodePort": 31000,
                    "targetPort": 8080,
                }
            ],
            **spec,
        },
        "status": status,
    }


def node(name: str, zone: str, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, **labels}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"198.18.0.{len(name)}"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


SLICE = {
    "metadata": {
        "name": "web-abc",
        "namespace": "shop",
        "labels": {"kubernetes.io/service-name": "web"},
    },
    "endpoints": [
        {
            "addresses": ["198.19.1.2"],
            "nodeName": "n1",
            "zone": "a",
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "hints": {"forZones": [{"name": "a"}]},
        },
        {
            "addresses": ["198.19.1.3"],
            "nodeName": "n1",
            "zone": "a",
            "conditions": {"ready": False, "serving": True, "terminating": True},
        },
        {"addresses": ["198.19.2.2"], "nodeName": "n2", "zone": "b", "conditions": {}},
    ],
}


def test_served_by_class() -> None:
    assert parse_service(svc()).served_by("portico.dev/lb")
    assert parse_service(svc(loadBalancerClass="portico.dev/lb")).served_by("portico.dev/lb")
    assert not parse_service(svc(loadBalancerClass="other/lb")).served_by("portico.dev/lb")
    assert not parse_service(svc(type="ClusterIP")).served_by("portico.dev/lb")


def test_claim_from_annotations_and_fields() -> None:
    view = parse_service(
        svc(
            annotations={
                "portico.dev/load-balancer-ips": "198.18.32.5, fd00:18::a:5",
                "portico.dev/address-pool": "lan",
                "portico.dev/allow-shared-ip": "k",
            },
            ipFamilies=["IPv4", "IPv6"],
            ipFamilyPolicy="RequireDualStack",
        )
    )
    claim = view.claim({"team": "a"})
    assert claim.requested == (
        ipaddress.ip_address("198.18.32.5"),
        ipaddress.ip_address("fd00:18::a:5"),
    )
    assert claim.pool == "lan" and claim.sharing_key == "k"
    assert claim.families == (4, 6) and claim.family_policy == "RequireDualStack"
    assert claim.ports == frozenset({("TCP", 80)})
    assert claim.namespace_labels == {"team": "a"}
    # spec.loadBalancerIP is honoured when the annotation is absent.
    assert parse_service(svc(loadBalancerIP="198.18.32.9")).claim({}).requested == (
        ipaddress.ip_address("198.18.32.9"),
    )


def test_bad_annotations_are_reported_not_raised_out() -> None:
    with pytest.raises(BadServiceInput, match="not an IP"):
        parse_service(svc(annotations={"portico.dev/load-balancer-ips": "x"})).claim({})
    with pytest.raises(BadServiceInput, match="dsr or nat"):
        parse_service(svc(annotations={"portico.dev/forwarding-mode": "x"})).forwarding_mode()
    for bad in ("5m", "-1", "3601", "", "1.5", "٣"):
        view = parse_service(svc(annotations={"portico.dev/drain-timeout": bad}))
        with pytest.raises(BadServiceInput, match="drain-timeout"):
            view.drain_timeout()
        assert "drain-timeout" in (view.input_error() or "")


def test_the_drain_timeout_annotation_reaches_the_cr_spec() -> None:
    def spec_of(**ann: str) -> dict[str, Any]:
        view = parse_service(svc(annotations=ann))
        return render_spec(view, [ipaddress.ip_address("198.18.32.1")], None, "DSR", [], [])

    assert "drainTimeoutSeconds" not in spec_of()  # the gateways' default
    assert spec_of(**{"portico.dev/drain-timeout": "30"})["drainTimeoutSeconds"] == 30
    assert spec_of(**{"portico.dev/drain-timeout": " 0s "})["drainTimeoutSeconds"] == 0
    # bad input is the bad-input path's (Valid=False, an Event); the spec goes without it
    assert "drainTimeoutSeconds" not in spec_of(**{"portico.dev/drain-timeout": "soon"})


def test_source_ranges_legacy_annotation() -> None:
    view = parse_service(
        svc(
            annotations={
                "service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 192.0.2.0/24"
            }
        )
    )
    assert view.source_ranges == ("10.0.0.0/8", "192.0.2.0/24")
    view = parse_service(svc(loadBalancerSourceRanges=["198.18.0.0/15"]))
    assert view.source_ranges == ("198.18.0.0/15",)


def test_render_spec_backends_exclusions_and_hints() -> None:
    view = parse_service(
        svc(
            externalTrafficPolicy="Local",
            healthCheckNodePort=32000,
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
            trafficDistribution="PreferClose",
        )
    )
    nodes = [
        parse_node(node("n1", "a")),
        parse_node(node("n2", "b")),
        parse_node(node("n3", "a", ready=False)),
        parse_node(
            node("n4", "b", **{"node.kubernetes.io/exclude-from-external-load-balancers": ""})
        ),
    ]
    spec = render_spec(
        view,
        [ipaddress.ip_address("198.18.32.1")],
        "lan",
        "DSR",
        nodes,
        endpoints_from_slices([SLICE]),
    )
    assert spec["vips"] == ["198.18.32.1"] and spec["healthCheckNodePort"] == 32000
    assert spec["sessionAffinityTimeoutSeconds"] == 60
    assert spec["trafficDistribution"] == "PreferClose"
    b = {x["node"]: x for x in spec["backends"]}
    assert set(b) == {"n1", "n2"}
    assert (b["n1"]["ready"], b["n1"]["serving"], b["n1"]["terminating"]) == (1, 2, 1)
    assert b["n1"]["endpoints"][0]["forZones"] == ["a"]
    assert (b["n2"]["ready"], b["n2"]["serving"]) == (1, 1)  # unset conditions mean ready
    assert {x["node"]: x["reason"] for x in spec["excludedNodes"]} == {
        "n3": "NotReady",
        "n4": "Excluded",
    }
    # Deterministic: the same inputs render the same spec (writes are skipped on equality).
    assert spec == render_spec(
        view,
        [ipaddress.ip_address("198.18.32.1")],
        "lan",
        "DSR",
        list(reversed(nodes)),
        endpoints_from_slices([SLICE]),
    )


def test_status_keeps_other_conditions_and_transition_time() -> None:
    other = {
        "type": "example.com/Thing",
        "status": "True",
        "reason": "X",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    view = parse_service(svc(status={"conditions": [other]}))
    st = service_status(
        view,
        [ipaddress.ip_address("198.18.32.1")],
        "DSR",
        True,
        "Allocated",
        "m",
        "2026-11-23T00:00:00Z",
    )
    assert st["loadBalancer"]["ingress"] == [{"ip": "198.18.32.1", "ipMode": "VIP"}]
    assert st["conditions"][0] == other
    assert status_differs(view, st)
    written = parse_service(svc(status=st))
    again = service_status(
        written,
        [ipaddress.ip_address("198.18.32.1")],
        "DSR",
        True,
        "Allocated",
        "m",
        "2026-11-24T00:00:00Z",
    )
    assert not status_differs(written, again)  # nothing to write on a restart
    assert again["conditions"][1]["lastTransitionTime"] == "2026-11-23T00:00:00Z"
    nat = service_status(view, [ipaddress.ip_address("198.18.32.1")], "NAT", True, "A", "m", "t")
    assert nat["loadBalancer"]["ingress"][0]["ipMode"] == "Proxy"


def test_condition_transition_time_moves_only_with_status() -> None:
    a = condition("Allocated", True, "R", "m", 1, "t1")
    assert condition("Allocated", True, "R2", "m2", 2, "t2", [a])["lastTransitionTime"] == "t1"
    assert condition("Allocated", False, "R", "m", 2, "t2", [a])["lastTransitionTime"] == "t2"
    assert same_conditions([a], [dict(a, lastTransitionTime="other")])


def test_node_ports_condition_only_in_nat_mode() -> None:
    from portico_operator.lbspec import node_ports_condition

    with_ports = parse_service(svc())
    assert node_ports_condition(with_ports, "DSR", 1, "t") is None
    ok = node_ports_condition(with_ports, "NAT", 1, "t")
    assert ok is not None and ok["status"] == "True"
    no_ports = parse_service(
        svc(
            allocateLoadBalancerNodePorts=False,
            ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        )
    )
    bad = node_ports_condition(no_ports, "NAT", 1, "t")
    assert bad is not None and bad["status"] == "False" and bad["reason"] == "NodePortsMissing"
    assert "80/TCP" in bad["message"] and "allocateLoadBalancerNodePorts" in bad["message"]


def test_pool_status_counts_and_conditions() -> None:
    from portico_operator.lbspec import pool_status_differs, render_pool_status
    from portico_operator.pools import parse_pool

    pool = parse_pool("p", {"addresses": ["10.0.0.0/30", "fd00::/126"]})
    obj = {"metadata": {"generation": 3}}
    st = render_pool_status(pool, obj, {4: 1, 6: 0}, [], "2026-01-01T00:00:00Z")
    assert st["observedGeneration"] == 3
    assert st["ipv4"] == {"capacity": 4, "used": 1, "free": 3}
    assert st["ipv6"] == {"capacity": 4, "used": 0, "free": 4}
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Valid"]["status"], conds["Conflicting"]["status"]) == ("True", "False")
    # A rewrite later with the same content changes nothing worth a write.
    later = render_pool_status(
        pool, {**obj, "status": st}, {4: 1, 6: 0}, [], "2026-01-01T00:05:00Z"
    )
    assert not pool_status_differs(st, later)
    assert later["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    clash = render_pool_status(pool, {**obj, "status": st}, {4: 1, 6: 0}, ["q"], "t")
    assert pool_status_differs(st, clash)
    c = {c["type"]: c for c in clash["conditions"]}["Conflicting"]
    assert c["status"] == "True" and "VIPPool q" in c["message"]
    bad = parse_pool("b", {"addresses": ["nope"]})
    v = render_pool_status(bad, obj, {4: 0, 6: 0}, [], "t")["conditions"][0]
    assert (v["status"], v["reason"]) == ("False", "Invalid")


def test_lb_spec_body_is_owned_by_its_service() -> None:
    from portico_operator.lbspec import lb_spec_body

    body = lb_spec_body(parse_service(svc()), {"vips": ["198.18.32.10"]})
    assert (body["apiVersion"], body["kind"]) == ("portico.dev/v1alpha1", "LoadBalancer")
    meta = body["metadata"]
    assert (meta["name"], meta["namespace"]) == ("web", "shop")
    assert meta["labels"] == {"portico.dev/service": "web"}
    (owner,) = meta["ownerReferences"]
    # the garbage collector deletes the CR with its Service, whatever the operator does
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Service",
        "web",
        "u1",
        True,
    )
    assert body["spec"] == {"vips": ["198.18.32.10"]}


def test_lb_conditions_and_when_the_status_is_current() -> None:
    from portico_operator.lbspec import lb_conditions, lb_status_body, lb_status_current

    view = parse_service(svc())
    prog = condition("Programmed", True, "Programmed", "every node", 4, "t0")
    conds = lb_conditions(view, True, "Allocated", "198.18.32.10", None, "DSR", 4, "t1", [], prog)
    assert [c["type"] for c in conds] == ["Allocated", "Valid", "Programmed"]  # no NodePorts
    nat = lb_conditions(view, False, "PoolExhausted", "full", "bad", "NAT", 4, "t1", [], None)
    assert [(c["type"], c["status"]) for c in nat] == [
        ("Allocated", "False"),
        ("Valid", "False"),
        ("NodePorts", "True"),
    ]
    # the gateways' conditions beside ours do not make a write; a new generation does
    gateway = condition("Announced", True, "Announced", "gw-1", 4, "t0")
    status = {"observedGeneration": 4, "conditions": [gateway, *conds]}
    assert lb_status_current(status, conds, 4)
    assert not lb_status_current(status, conds, 5)
    assert not lb_status_current(status, nat, 4)
    assert not lb_status_current(None, conds, 4)
    body = lb_status_body(view, 4, conds)
    assert body["status"] == {"observedGeneration": 4, "conditions": conds}
    assert body["metadata"] == {"name": "web", "namespace": "shop"}

"""Stale conntrack flows: exactly the UDP/SCTP (VIP port, endpoint) pairs the old rules sent
to and the new ones do not."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_common.model import Endpoint, LBService, NodeInfo, ServicePort
from portico_nodeagent.stale import StaleFlow, _targets, stale_flows

NODE = NodeInfo("node-1", "zone-a")
PORTS = (ServicePort("dns", "UDP", 53, None, 5353), ServicePort("web", "TCP", 80, None, 8080))


def svc(*eps: Endpoint, policy: str = "Cluster") -> LBService:
    return LBService("default", "dns", ("198.18.32.5",), PORTS, eps, external_traffic_policy=policy)


A = Endpoint("198.19.1.2", "node-1", "zone-a")
B = Endpoint("198.19.2.2", "node-2", "zone-b")


def test_a_removed_endpoint_is_stale_for_udp_only() -> None:
    assert stale_flows([svc(A, B)], [svc(B)], NODE) == [
        StaleFlow("UDP", "198.18.32.5", 53, A.address)
    ]


def test_not_ready_counts_as_removed_and_unchanged_is_not_stale() -> None:
    not_ready = Endpoint(A.address, "node-1", "zone-a", ready=False, serving=False)
    assert stale_flows([svc(A, B)], [svc(not_ready, B)], NODE) == [
        StaleFlow("UDP", "198.18.32.5", 53, A.address)
    ]
    assert stale_flows([svc(A, B)], [svc(A, B)], NODE) == []


def test_what_this_node_never_sent_to_is_not_its_business() -> None:
    # Local: node-1 never sent to B, so B leaving changes nothing here.
    assert stale_flows([svc(A, B, policy="Local")], [svc(A, policy="Local")], NODE) == []


def test_a_deleted_service_leaves_all_its_udp_flows_stale() -> None:
    assert stale_flows([svc(A, B)], [], NODE) == [
        StaleFlow("UDP", "198.18.32.5", 53, A.address),
        StaleFlow("UDP", "198.18.32.5", 53, B.address),
    ]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_only_changed_services_are_looked_at_and_the_answer_is_the_same(data: Any) -> None:
    # Services s0..s3 on two VIPs (so that one can move between Services); "after" keeps some
    # as the same objects, changes or drops others, adds new ones.
    eps = st.lists(st.sampled_from([A, B, Endpoint("198.19.1.3", "node-1", "zone-a")]))
    vip = st.sampled_from(["198.18.32.5", "198.18.32.6"])

    def one(i: int) -> LBService:
        return LBService(
            "default", f"s{i}", (data.draw(vip),), PORTS, tuple(data.draw(eps, label=f"eps{i}"))
        )

    before = [one(i) for i in range(data.draw(st.integers(0, 4)))]
    after = []
    for s in before:
        what = data.draw(st.sampled_from(["same", "equal copy", "changed", "gone"]))
        if what == "same":
            after.append(s)
        elif what == "equal copy":
            after.append(replace(s))
        elif what == "changed":
            after.append(replace(s, endpoints=tuple(data.draw(eps))))
    after += [one(i) for i in range(4, 4 + data.draw(st.integers(0, 2)))]
    naive = sorted(_targets(before, NODE) - _targets(after, NODE))
    assert stale_flows(before, after, NODE) == naive


C = Endpoint("198.19.3.2", "node-3", "zone-b")


def test_an_unreachable_nodes_endpoint_is_stale_for_tcp_too() -> None:
    lost = replace(B, unreachable=True)
    assert stale_flows([svc(A, B, C)], [svc(A, lost, C)], NODE) == [
        StaleFlow("TCP", "198.18.32.5", 80, B.address),
        StaleFlow("UDP", "198.18.32.5", 53, B.address),
    ]


def test_the_unreachable_node_keeps_its_own_endpoints_and_their_flows() -> None:
    own = NodeInfo("node-2", "zone-b")
    lost = replace(B, unreachable=True)
    assert stale_flows([svc(A, B)], [svc(A, lost)], own) == []


def test_an_endpoint_that_leaves_for_another_reason_keeps_its_tcp_flows() -> None:
    # B goes (not ready) while C's node is unreachable: only C's TCP flows are cut.
    lost_c = replace(C, unreachable=True)
    gone_b = replace(B, ready=False, serving=False)
    assert stale_flows([svc(A, B, C)], [svc(A, gone_b, lost_c)], NODE) == [
        StaleFlow("TCP", "198.18.32.5", 80, C.address),
        StaleFlow("UDP", "198.18.32.5", 53, B.address),
        StaleFlow("UDP", "198.18.32.5", 53, C.address),
    ]

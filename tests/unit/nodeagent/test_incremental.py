"""The agent's cached renderer gives exactly the full render's index (and a document that
builds it), also across changes (cached parts reused) and when two Services claim one address
(the fallback)."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_common.model import Endpoint, LBService, NodeInfo, ServicePort
from portico_nodeagent import nftnames as N
from portico_nodeagent.incremental import NodeRenderer, Render
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import diff_rules
from portico_nodeagent.rulesindex import RulesIndex, index_rules

from ..common.test_rulesdoc import services as one_service
from ..nftkernel import Kernel

NODES = [
    NodeInfo("node-1", "zone-a", ("198.18.0.10", "fd00:18::a")),
    NodeInfo("node-2", "zone-b", ()),
]


@st.composite
def service_lists(draw, unique_vips: bool) -> list[LBService]:
    n = draw(st.integers(0, 5))
    out = []
    for i in range(n):
        svc = replace(draw(one_service()), namespace="ns", name=f"s{i}")
        if unique_vips:
            svc = replace(
                svc,
                vips=tuple(
                    v.replace(":1", f":{i + 1:x}").replace(".1", f".{i + 1}") for v in svc.vips
                ),
            )
        out.append(svc)
    return out


def assert_same(renderer: NodeRenderer, svcs: list[LBService], node: NodeInfo) -> Render:
    r = renderer.render(svcs, node)
    full = render_node_rules(svcs, node)
    assert r.index.same_as(index_rules(full)), r.index.differences(index_rules(full))
    # the document (for a full replace) builds the same table, in an order nftables takes
    built = Kernel()
    built.run(r.document())
    assert index_rules(built.listing()).same_as(index_rules(full))
    if r.base is not None:
        # made from the previous render: what it touched is all that differs (the same
        # commands as a diff of the whole, maybe in another order, and a valid one)
        quick = diff_rules(r.base, r.index, r.touched)
        assert sorted(map(canon, quick["nftables"])) == sorted(
            map(canon, diff_rules(r.base, r.index)["nftables"])
        )
        kernel = Kernel.load(diff_rules(RulesIndex(), r.base))
        kernel.run(quick)
        assert index_rules(kernel.listing()).same_as(r.index)
    return r


def canon(cmd: dict) -> str:
    return json.dumps(cmd, sort_keys=True)


@settings(max_examples=150, deadline=None)
@given(
    service_lists(unique_vips=True),
    service_lists(unique_vips=False),
    st.sampled_from(NODES),
    st.sampled_from(NODES),
)
def test_cached_render_is_the_full_render(
    first: list[LBService], second: list[LBService], node: NodeInfo, other: NodeInfo
) -> None:
    r = NodeRenderer()
    assert_same(r, first, node)
    assert_same(r, first, node)  # all from the cache
    # one Service changed, one gone
    if first:
        changed = [replace(first[0], session_affinity="None"), *first[2:]]
        assert_same(r, changed, node)
    assert_same(r, second, node)  # shared addresses: the fallback decides as the full render
    assert_same(r, first, other)  # another node


def test_shared_chains_and_elements_stay_while_a_holder_remains() -> None:
    # Two Services with 17 endpoints each (a pick chain beyond the fixed ones) on the same
    # pods (one remote-endpoints element per pod): they share both.
    pods = tuple(Endpoint(f"198.19.2.{i}", "node-2", "zone-b") for i in range(2, 19))
    a = LBService("ns", "a", ("198.18.32.1",), (ServicePort("", "TCP", 80),), pods)
    b = replace(a, name="b", vips=("198.18.32.2",))
    r, node = NodeRenderer(), NODES[0]
    both = assert_same(r, [a, b], node)
    assert "pick4-17" in both.index.chains and len(both.index.elements["remote-endpoints4"]) == 17
    one = assert_same(r, [a], node)
    assert one.base is both.index  # made from the previous render
    assert "pick4-17" in one.index.chains and len(one.index.elements["remote-endpoints4"]) == 17
    assert "pick4-17" in both.index.chains  # the index in force is never modified
    none = assert_same(r, [], node)
    assert "pick4-17" not in none.index.chains and not none.index.elements["remote-endpoints4"]
    assert none.touched is not None and "pick4-17" in none.touched.chains
    # and back, one changed: only that Service's elements are looked at
    again = assert_same(r, [a, b], node)
    eps = again.index.elements[N.ENDPOINT_ADDRS[4]]
    moved = assert_same(r, [a, replace(b, endpoints=pods[:16])], node)
    assert moved.touched is not None
    assert all('"198.18.32.2"' in k for k in moved.touched.elements[N.ENDPOINT_ADDRS[4]])
    assert len(moved.index.elements[N.ENDPOINT_ADDRS[4]]) == len(eps) - 1

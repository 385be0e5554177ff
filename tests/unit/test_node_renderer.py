"""The agent's cached renderer gives exactly the full render and its index, also across
changes (cached parts reused) and when two Services claim one address (the fallback)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_common.noderules import (
    LBService,
    NodeInfo,
    NodeRenderer,
    index_rules,
    render_node_rules,
)

from .test_rulesdoc import services as one_service

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


def assert_same(renderer: NodeRenderer, svcs: list[LBService], node: NodeInfo) -> None:
    doc, idx = renderer.render(svcs, node)
    full = render_node_rules(svcs, node)
    assert doc() == full
    assert idx.same_as(index_rules(full)), idx.differences(index_rules(full))


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

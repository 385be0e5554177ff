"""The gateways' verdicts as the operator reads them: a node out when a live report calls it
unreachable; a report that covers more than half of its nodes, or has not been written for
the TTL, is ignored (a gateway cut off itself, or gone, must not take nodes out)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from portico_operator.reachability import (
    GatewayVerdicts,
    decide,
    parse_report,
    reachable_condition,
)


def report(gateway: str, nodes: dict[str, bool]) -> dict[str, object]:
    return {
        "metadata": {"name": gateway},
        "status": {"nodes": [{"node": n, "reachable": r} for n, r in nodes.items()]},
    }


def test_one_of_three_unreachable_is_taken_out() -> None:
    v = parse_report(report("gw-1", {"node-1": True, "node-2": False, "node-3": True}))
    reach = decide([(v, 100.0)], now=101.0)
    assert reach.unreachable == {"node-2"}
    assert reach.by == {"node-2": ("gw-1",)}
    ok, why, msg = reachable_condition(reach, ["node-1", "node-2", None])
    assert (ok, why) == (False, "NodesUnreachable") and "node-2" in msg and "gw-1" in msg
    assert reachable_condition(reach, ["node-1", "node-3"])[:2] == (True, "Reachable")


def test_a_gateway_cut_off_takes_nobody_out() -> None:
    v = parse_report(report("gw-1", {"node-1": False, "node-2": False, "node-3": True}))
    reach = decide([(v, 100.0)], now=100.0)
    assert reach.unreachable == frozenset()
    assert "more than half" in reach.ignored["gw-1"][1]
    ok, why, msg = reachable_condition(reach, ["node-1", "node-3"])
    assert (ok, why) == (True, "VerdictIgnored") and "node-1" in msg
    all_down = parse_report(report("gw-2", {"node-1": False, "node-2": False}))
    assert decide([(all_down, 0.0)], now=0.0).unreachable == frozenset()


def test_a_stale_report_is_ignored() -> None:
    v = parse_report(report("gw-1", {"node-1": True, "node-2": False, "node-3": True}))
    assert decide([(v, 0.0)], now=29.0).unreachable == {"node-2"}
    reach = decide([(v, 0.0)], now=31.0)
    assert reach.unreachable == frozenset() and "older" in reach.ignored["gw-1"][1]


def test_malformed_reports_say_nothing() -> None:
    for status in (None, "x", {"nodes": "x"}, {"nodes": [1, {"node": 3}, {"node": "n"}]}):
        v = parse_report({"metadata": {"name": "gw"}, "status": status})
        assert v.unreachable == frozenset()
    half = parse_report(report("gw", {"a": False, "b": True, "c": "no"}))  # type: ignore[dict-item]
    assert half.probed == {"a", "b"}


@given(
    st.dictionaries(st.sampled_from([f"node-{i}" for i in range(8)]), st.booleans(), max_size=8),
    st.dictionaries(st.sampled_from([f"node-{i}" for i in range(8)]), st.booleans(), max_size=8),
)
def test_never_more_than_half_of_any_reporters_nodes(
    a: dict[str, bool], b: dict[str, bool]
) -> None:
    ra, rb = parse_report(report("gw-a", a)), parse_report(report("gw-b", b))
    reach = decide([(ra, 0.0), (rb, 0.0)], now=0.0)
    trusted = [r for r in (ra, rb) if 2 * len(r.unreachable) <= len(r.probed)]
    # Exactly the nodes a report within the guard names, each credited to those reports.
    assert reach.unreachable == {n for r in trusted for n in r.unreachable}
    for node, gateways in reach.by.items():
        assert set(gateways) == {r.gateway for r in trusted if node in r.unreachable}
    for r in (ra, rb):
        if r not in trusted:
            assert r.gateway in reach.ignored


def test_verdicts_equal_when_the_heartbeat_only_changes() -> None:
    a = report("gw-1", {"node-1": True})
    b = {**a, "status": {**a["status"], "heartbeatTime": "2026-01-01T00:00:00Z"}}  # type: ignore[dict-item]
    assert (
        parse_report(a)
        == parse_report(b)
        == GatewayVerdicts("gw-1", frozenset({"node-1"}), frozenset())
    )

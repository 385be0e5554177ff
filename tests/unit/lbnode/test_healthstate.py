from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_lbnode.healthstate import (
    Probe,
    TargetHealth,
    classify_http,
    cluster_healthy_from_aggregate,
    node_healthy_from_aggregate,
    not_applied,
    observe,
    parse_aggregate,
    service_healthy_from_aggregate,
    worth_reporting,
)

OK = ("ok", True, True)
HTTP503 = ("503", False, True)
TIMEOUT = ("timeout", False, False)


def run(kinds: list[tuple[str, bool, bool]], rise: int = 2, fall: int = 2) -> list[TargetHealth]:
    state: TargetHealth | None = None
    out = []
    for i, (msg, ok, definitive) in enumerate(kinds):
        state = observe(state, Probe(ok, definitive, msg, float(i)), rise, fall)
        out.append(state)
    return out


def test_first_ok_on_unknown_is_healthy_at_once() -> None:
    (s,) = run([OK], rise=3)
    assert s.healthy and s.since == 0.0 and s.message == "ok"


def test_first_failure_is_unhealthy_and_a_never_healthy_target_needs_one_ok() -> None:
    states = run([HTTP503, TIMEOUT, OK], rise=3)
    assert [s.healthy for s in states] == [False, False, True]
    assert states[2].since == 2.0


def test_timeouts_take_a_target_out_only_after_fall() -> None:
    states = run([OK, TIMEOUT, TIMEOUT, TIMEOUT], fall=3)
    assert [s.healthy for s in states] == [True, True, True, False]
    assert states[2].message == "ok"  # the reason for being healthy, not the pending timeout
    assert states[3].message == "timeout" and states[3].since == 3.0


def test_an_ok_between_timeouts_resets_the_fall_count() -> None:
    states = run([OK, TIMEOUT, OK, TIMEOUT, OK])
    assert all(s.healthy for s in states)


def test_503_takes_a_healthy_target_out_at_once() -> None:
    states = run([OK, OK, HTTP503], fall=5)
    assert [s.healthy for s in states] == [True, True, False]


def test_after_a_failure_recovery_needs_rise_oks() -> None:
    states = run([OK, HTTP503, OK, OK, OK], rise=3)
    assert [s.healthy for s in states] == [True, False, False, False, True]
    assert states[4].since == 4.0 and states[3].message == "503"


def test_worth_reporting_flips_and_new_reasons_only() -> None:
    s = run([OK, TIMEOUT, TIMEOUT, HTTP503, OK, OK])
    assert worth_reporting(None, s[0])
    assert not worth_reporting(s[0], s[1])  # still healthy
    assert worth_reporting(s[1], s[2])  # flip
    assert worth_reporting(s[2], s[3])  # unhealthy, but now for another reason
    assert not worth_reporting(s[3], s[4])  # 1 of 2 oks: nothing changed for the caller
    assert worth_reporting(s[4], s[5])
    again = observe(s[3], Probe(False, True, "503", 9.0), 2, 2)
    assert not worth_reporting(s[3], again)


def test_classify_http() -> None:
    assert classify_http(200, b'{"localEndpoints": 2}') == (True, "HTTP 200, 2 local endpoints")
    assert classify_http(503, b'{"localEndpoints": 0}') == (False, "HTTP 503, 0 local endpoints")
    assert classify_http(503, b"not json") == (False, "HTTP 503")
    assert classify_http(404, b"") == (False, "HTTP 404")


# -- aggregate ---------------------------------------------------------------------------------
GOOD = {
    "node": "n1",
    "rulesCurrent": True,
    "lastApplied": "2026-12-02T11:26:12.5Z",
    "services": {
        "ns/web": {"healthCheckNodePort": 31234, "localEndpoints": {"IPv4": 1, "IPv6": 0}},
        "ns/v6": {"healthCheckNodePort": 31235, "localEndpoints": {"IPv4": 0, "IPv6": 2}},
    },
}


def test_parse_good_aggregate() -> None:
    a = parse_aggregate(json.dumps(GOOD).encode())
    assert a.node == "n1" and a.rules_current and a.last_applied.startswith("2026-12-02")
    assert a.services["ns/web"].health_check_node_port == 31234
    assert a.services["ns/web"].local_endpoints == {4: 1, 6: 0}


def test_service_health_from_aggregate_by_family() -> None:
    a = parse_aggregate(json.dumps(GOOD))
    assert service_healthy_from_aggregate(a, "ns/web", 4)[0]
    assert not service_healthy_from_aggregate(a, "ns/web", 6)[0]
    assert service_healthy_from_aggregate(a, "ns/v6", 6)[0]
    assert service_healthy_from_aggregate(a, "ns/v6", None)[0]
    ok, why = service_healthy_from_aggregate(a, "ns/missing", 4)
    assert not ok and "not listed" in why


def test_stale_rules_make_every_service_unhealthy() -> None:
    a = parse_aggregate(json.dumps({**GOOD, "rulesCurrent": False}))
    assert service_healthy_from_aggregate(a, "ns/web", 4) == (
        False,
        "node agent: rules not current",
    )
    assert not node_healthy_from_aggregate(a)[0]
    assert node_healthy_from_aggregate(parse_aggregate(json.dumps(GOOD)))[0]


def test_a_node_being_deleted_takes_no_cluster_traffic_but_serves_its_own_pods() -> None:
    a = parse_aggregate(json.dumps({**GOOD, "nodeEligible": False}))
    assert node_healthy_from_aggregate(a) == (False, "node agent: node is being deleted or drained")
    # Local Services: kube-proxy's healthCheckNodePort does not look at eligibility either.
    assert service_healthy_from_aggregate(a, "ns/web", 4)[0]


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (json.dumps({**GOOD, "nodeEligible": "no"}), "nodeEligible"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({**GOOD, "rulesCurrent": "yes"}), "rulesCurrent"),
        (json.dumps({**GOOD, "allServices": 1}), "allServices"),
        (json.dumps({**GOOD, "generation": -1}), "generation"),
        (json.dumps({**GOOD, "services": []}), "services is not an object"),
        (json.dumps({**GOOD, "services": {"a/b": 3}}), "'a/b'"),
        (json.dumps({**GOOD, "services": {"a/b": {"localEndpoints": 1}}}), "localEndpoints"),
        (json.dumps({**GOOD, "services": {"a/b": {"localEndpoints": {"IPv4": -1}}}}), "count"),
        (json.dumps({**GOOD, "services": {"a/b": {"localEndpoints": {"IPv4": True}}}}), "count"),
    ],
)
def test_malformed_aggregate_raises_value_error(body: bytes | str, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        parse_aggregate(body)


def test_aggregate_without_services_lists_none() -> None:
    a = parse_aggregate(b'{"rulesCurrent": true}')
    assert a.services == {} and not service_healthy_from_aggregate(a, "ns/web", 4)[0]


def test_a_cluster_service_an_agent_listing_all_does_not_list_is_not_programmed_yet() -> None:
    old = parse_aggregate(json.dumps(GOOD))  # an agent that lists Local Services only
    assert cluster_healthy_from_aggregate(old, "ns/new") == (True, "node agent: rules current")
    assert not not_applied(old, ["ns/new"])
    new = parse_aggregate(json.dumps({**GOOD, "allServices": True, "generation": 12}))
    assert new.generation == 12 and new.all_services
    assert cluster_healthy_from_aggregate(new, "ns/web")[0]
    assert cluster_healthy_from_aggregate(new, "ns/new") == (
        False,
        "node agent: service not programmed yet",
    )
    assert not_applied(new, ["ns/web", "ns/new"]) and not not_applied(new, ["ns/web"])
    assert service_healthy_from_aggregate(new, "ns/new", 4) == (
        False,
        "node agent: service not programmed yet",
    )
    stale = parse_aggregate(json.dumps({**GOOD, "allServices": True, "rulesCurrent": False}))
    assert cluster_healthy_from_aggregate(stale, "ns/web")[1] == "node agent: rules not current"


# -- property: flips only after the required run of results -------------------------------------
probe_kinds = st.sampled_from([OK, HTTP503, TIMEOUT])


@given(st.lists(probe_kinds, min_size=1, max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_flips_exactly_when_the_required_run_is_seen(
    kinds: list[tuple[str, bool, bool]], rise: int, fall: int
) -> None:
    states = run(kinds, rise, fall)
    ever_healthy = False
    for i, s in enumerate(states):
        ok, definitive = kinds[i][1], kinds[i][2]
        tail = [k[1] for k in kinds[: i + 1]]
        if i == 0:
            assert s.healthy == ok
        else:
            before = states[i - 1].healthy
            if before:  # out: on a definitive failure, or `fall` failures in a row
                fell = len(tail) >= fall and not any(tail[-fall:])
                want = not (not ok and (definitive or fell))
            else:  # in: `rise` oks in a row, or the first ok of a target never healthy
                want = ok and (not ever_healthy or (len(tail) >= rise and all(tail[-rise:])))
            assert s.healthy == want, (i, kinds[: i + 1])
            if s.healthy != before:
                assert s.since == float(i)
            else:
                assert s.since == states[i - 1].since
        run_len = next((j for j, v in enumerate(reversed(tail)) if v != ok), len(tail))
        assert (s.oks, s.fails) == ((run_len, 0) if ok else (0, run_len))
        ever_healthy = ever_healthy or s.healthy
        assert s.ever_healthy == ever_healthy

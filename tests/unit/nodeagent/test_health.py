from __future__ import annotations

import asyncio
import inspect
import json
import time

from hypothesis import given
from hypothesis import strategies as st
from portico_common.model import Endpoint, LBService, ServicePort
from portico_nodeagent.health import (
    LONG_POLL_MAX_SECONDS,
    FamilyState,
    counted_family,
    long_poll,
    node_healthz,
    service_families,
    service_response,
)
from portico_nodeagent.healthserver import HealthServers, HealthState

D = "Wed, 02 Dec 2026 11:26:12 GMT"
BODY = (
    b'{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "hz"\n\t},\n'
    b'\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}'
)


def test_golden_200() -> None:
    eps = [Endpoint("10.0.1.5", "node-1"), Endpoint("fd00::5", "node-1")]
    got = service_response("default", "hz", eps, "node-1", 4, True, date=D)
    assert len(BODY) == 113
    assert got == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: 1\r\n"
        b"Date: " + D.encode() + b"\r\nContent-Length: 113\r\n\r\n" + BODY
    )


def test_terminating_serving_is_503_weight_0() -> None:
    eps = [Endpoint("10.0.1.5", "node-1", ready=False, serving=True, terminating=True)]
    got = service_response("default", "hz", eps, "node-1", 4, True, date=D)
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"X-Load-Balancing-Endpoint-Weight: 0\r\n" in got
    assert b'"localEndpoints": 0,' in got


def test_stale_rules_keep_count_but_503() -> None:
    got = service_response("default", "hz", [Endpoint("10.0.1.5", "node-1")], "node-1", 4, False)
    assert got.startswith(b"HTTP/1.1 503") and b'"serviceProxyHealthy": false' in got
    assert b"X-Load-Balancing-Endpoint-Weight: 1\r\n" in got


def test_node_healthz() -> None:
    fam = {4: FamilyState(1_500_000_000_000_000_000, True)}
    ok = node_healthz(fam, 1_500_000_000_500_000_000, date=D)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ok.endswith(
        b'{"lastUpdated":"2017-07-14T02:40:00.5Z","currentTime":"2017-07-14T02:40:00.5Z",'
        b'"nodeEligible":true,"healthy":true,"status":{"IPv4":'
        b'{"lastUpdated":"2017-07-14T02:40:00Z","healthy":true}}}'
    )
    bad = node_healthz(fam, 1_500_000_000_500_000_000, taints=["ToBeDeletedByClusterAutoscaler"])
    assert bad.startswith(b"HTTP/1.1 503") and b'"nodeEligible":false' in bad


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["node-1", "node-2"]), st.booleans()),
        max_size=12,
    )
)
def test_weight_equals_count(spec: list[tuple[int, str, bool]]) -> None:
    eps = [Endpoint(f"10.0.0.{i}", n, ready=r, terminating=not r) for i, n, r in spec]
    want = len({i for i, n, r in spec if n == "node-1" and r})
    got = service_response("default", "hz", eps, "node-1", 4, True)
    assert f"X-Load-Balancing-Endpoint-Weight: {want}\r\n".encode() in got
    assert f'"localEndpoints": {want},'.encode() in got


# --- which family a Service's listener counts (issue: an IPv6-only Service answered 0 over IPv4)
def _servers(*svcs: tuple[int, LBService], families: tuple[int, ...] = (4, 6)) -> HealthServers:
    return HealthServers(HealthState("node-1", dict(svcs), True, 1, families), 0)


def _local_svc(vips: tuple[str, ...], *addresses: str) -> LBService:
    eps = tuple(Endpoint(a, "node-1") for a in addresses)
    return LBService("ns", "s", vips, (ServicePort("http", "TCP", 80),), eps, "Local")


def test_an_ipv6_only_service_counts_its_ipv6_endpoints_on_every_listener() -> None:
    svc = _local_svc(("fd00:18::a:0",), "fd00:19::5", "fd00:19::6")
    hs = _servers((31000, svc))
    for family in (4, 6):
        got = hs.service_answer(31000, family)("GET", "/healthz")
        assert got.startswith(b"HTTP/1.1 200 OK"), (family, got)
        assert b'"localEndpoints": 2,' in got
    agg = hs.aggregate()["services"]["ns/s"]["localEndpoints"]  # type: ignore[index]
    assert agg == {"IPv4": 2, "IPv6": 2}
    # An IPv4-only node (no IPv6 listener) says the same over IPv4.
    agg4 = _servers((31000, svc), families=(4,)).aggregate()["services"]["ns/s"]  # type: ignore[index]
    assert agg4["localEndpoints"] == {"IPv4": 2}


def test_an_ipv4_only_service_counts_its_ipv4_endpoints_on_every_listener() -> None:
    svc = _local_svc(("198.18.32.1",), "198.19.1.5")
    agg = _servers((31000, svc)).aggregate()["services"]["ns/s"]  # type: ignore[index]
    assert agg["localEndpoints"] == {"IPv4": 1, "IPv6": 1}


def test_a_dual_stack_service_counts_each_family_on_its_own_listener() -> None:
    # One pod with an address in each family, and a second IPv4-only endpoint: per family.
    svc = _local_svc(("198.18.32.1", "fd00:18::a:1"), "198.19.1.5", "198.19.1.6", "fd00:19::5")
    hs = _servers((31000, svc))
    agg = hs.aggregate()["services"]["ns/s"]  # type: ignore[index]
    assert agg["localEndpoints"] == {"IPv4": 2, "IPv6": 1}
    assert b'"localEndpoints": 1,' in hs.service_answer(31000, 6)("GET", "/healthz")
    assert b'"localEndpoints": 2,' in hs.service_answer(31000, 4)("GET", "/healthz")


def test_counted_family() -> None:
    assert counted_family(4, (6,)) == 6 and counted_family(6, (4,)) == 4
    assert counted_family(4, (4, 6)) == 4 and counted_family(6, (4, 6)) == 6
    assert counted_family(4, ()) == 4
    assert service_families((), [Endpoint("fd00::1", "n")]) == (6,)
    assert service_families(("198.18.0.1", "fd00::1"), []) == (4, 6)


def test_long_poll_query() -> None:
    assert long_poll("/portico/v1/services?after=7&wait=250") == (7, 0.25)
    assert long_poll("/portico/v1/services?wait=250&after=0") == (0, 0.25)
    assert long_poll("/portico/v1/services?after=7&wait=60000") == (7, LONG_POLL_MAX_SECONDS)
    for bad in ("", "?after=7", "?wait=10", "?after=-1&wait=10", "?after=x&wait=1", "?after"):
        assert long_poll("/portico/v1/services" + bad) is None


def test_the_aggregate_lists_every_service_in_force_and_holds_a_long_poll() -> None:
    """Cluster Services are listed with port 0; ``?after=<generation>`` is answered when the
    agent's round moves the generation, or after ``wait`` (then unchanged)."""

    async def main() -> None:
        svc = _local_svc(("198.18.0.1",), "198.19.0.5")
        state = HealthState("node-1", {31000: svc}, True, 1, (4,), applied=frozenset({"ns/c"}))
        hs = HealthServers(state, 0)
        now = hs.node_answer("GET", "/portico/v1/services")
        assert isinstance(now, bytes)
        doc = json.loads(now.split(b"\r\n\r\n", 1)[1])
        assert doc["allServices"] is True and doc["generation"] == 0
        assert doc["services"]["ns/c"] == {"healthCheckNodePort": 0, "localEndpoints": {}}
        assert doc["services"]["ns/s"]["healthCheckNodePort"] == 31000
        # Another generation than the one asked after: at once.
        assert isinstance(hs.node_answer("GET", "/portico/v1/services?after=3&wait=5000"), bytes)
        held = hs.node_answer("GET", "/portico/v1/services?after=0&wait=5000")
        assert inspect.isawaitable(held)
        task = asyncio.ensure_future(held)
        await asyncio.sleep(0.05)
        assert not task.done()
        state.applied, state.generation = frozenset({"ns/c", "ns/d"}), 1
        hs.changed()
        body = await asyncio.wait_for(task, 1.0)
        doc = json.loads(body.split(b"\r\n\r\n", 1)[1])
        assert doc["generation"] == 1 and "ns/d" in doc["services"]
        # Nothing moves: answered after ``wait``, unchanged.
        t0 = time.monotonic()
        late = hs.node_answer("GET", "/portico/v1/services?after=1&wait=100")
        assert inspect.isawaitable(late)
        body = await asyncio.wait_for(late, 1.0)
        assert 0.09 <= time.monotonic() - t0 < 0.5
        assert json.loads(body.split(b"\r\n\r\n", 1)[1])["generation"] == 1

    asyncio.run(main())

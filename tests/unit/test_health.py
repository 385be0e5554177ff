from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from portico_common.model import Endpoint
from portico_nodeagent.health import FamilyState, node_healthz, service_response

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

"""The agent's node-level listeners on real local sockets: its own port always, kube-proxy's
port while no other program holds it, and the command line that sets them."""

from __future__ import annotations

import asyncio
import json
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_common.model import Endpoint, LBService, ServicePort
from portico_common.ports import AGENT_HEALTH_PORT, KUBE_PROXY_HEALTHZ_PORT
from portico_nodeagent.healthserver import AGGREGATE_PATH, HealthServers, HealthState
from portico_nodeagent.main import parse_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def holder(port: int) -> socket.socket:
    """Another program's listener on ``port`` (as kube-proxy holds 10256)."""
    s = socket.socket()
    s.bind(("0.0.0.0", port))
    s.listen(1)
    return s


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def servers(own: int, kube_proxy: int) -> HealthServers:
    state = HealthState("node-1", {}, True, 1, (4,))
    return HealthServers(state, own, kube_proxy)


def test_both_node_ports_answer_health_and_the_aggregate() -> None:
    async def main() -> None:
        own, kp = free_port(), free_port()
        hs = servers(own, kp)
        await hs.start_node()
        try:
            for port in (own, kp):
                status, body = await get(port, "/healthz")
                assert status == 200 and json.loads(body)["healthy"] is True
                status, body = await get(port, AGGREGATE_PATH)
                assert status == 200 and json.loads(body)["node"] == "node-1"
            assert hs.conflicts == {}
        finally:
            hs.close()

    asyncio.run(main())


def test_kube_proxys_port_held_is_left_reported_and_taken_once_free() -> None:
    async def main() -> None:
        own, kp = free_port(), free_port()
        held = holder(kp)
        hs = servers(own, kp)
        try:
            await hs.start_node()
            # The agent's own port answers whatever holds kube-proxy's.
            status, body = await get(own, AGGREGATE_PATH)
            assert status == 200 and json.loads(body)["rulesCurrent"] is True
            assert set(hs.conflicts) == {kp} and "in use" in hs.conflicts[kp].lower()
            held.close()
            await hs.sync()  # after the next apply: taken, no longer reported
            assert (await get(kp, "/healthz"))[0] == 200
            assert hs.conflicts == {}
        finally:
            held.close()
            hs.close()

    asyncio.run(main())


def test_the_same_port_twice_is_one_listener_and_zero_is_off() -> None:
    assert servers(10262, 10262).node_ports == (10262,)
    assert servers(10262, 0).node_ports == (10262,)
    assert servers(0, 10256).node_ports == (10256,)


def test_command_line_ports() -> None:
    base = ["--node-name", "n1"]
    s = parse_args(base)
    assert (s.health_port, s.kube_proxy_healthz_port) == (
        AGENT_HEALTH_PORT,
        KUBE_PROXY_HEALTHZ_PORT,
    )
    assert (AGENT_HEALTH_PORT, KUBE_PROXY_HEALTHZ_PORT) == (10262, 10256)
    s = parse_args([*base, "--health-port", "20000", "--kube-proxy-healthz-port", "0"])
    assert (s.health_port, s.kube_proxy_healthz_port) == (20000, 0)
    # The flag's name before the agent had a port of its own still sets that port.
    assert parse_args([*base, "--healthz-port", "10256"]).health_port == 10256


# -- the aggregate's validator and its "not modified" answer --------------------------------------
def _etag(answer: bytes) -> str:
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    tags = [ln.split(":", 1)[1].strip().strip('"') for ln in head.split("\r\n")[1:]]
    names = [ln.split(":", 1)[0].lower() for ln in head.split("\r\n")[1:]]
    return tags[names.index("etag")]


_eps = st.lists(
    st.builds(
        Endpoint,
        st.sampled_from(["198.18.0.1", "198.18.0.2", "fd00::1"]),
        st.sampled_from(["node-1", "node-2"]),
    ),
    max_size=3,
).map(tuple)
_states = st.builds(
    lambda eps, rules, deleting, taints, gen, last: HealthState(
        node="node-1",
        services={
            31000: LBService(
                "ns", "web", ("198.19.0.1",), (ServicePort("http", "TCP", 80),), eps, "Local"
            )
        },
        rules_current=rules,
        last_applied_ns=last,
        families=(4, 6),
        deleting=deleting,
        taints=taints,
        applied=frozenset({"ns/web"}),
        generation=gen,
    ),
    _eps,
    st.booleans(),
    st.booleans(),
    st.sampled_from([(), ("node.kubernetes.io/exclude-from-external-load-balancers",)]),
    st.integers(0, 2),
    st.sampled_from([None, 1_700_000_000_000_000_000]),
)


@settings(max_examples=60, deadline=None)
@given(_states, _states)
def test_the_validator_changes_exactly_when_the_aggregate_does(
    a: HealthState, b: HealthState
) -> None:
    ans_a = HealthServers(a, 1).node_answer("GET", AGGREGATE_PATH)
    ans_b = HealthServers(b, 1).node_answer("GET", AGGREGATE_PATH)
    assert isinstance(ans_a, bytes) and isinstance(ans_b, bytes)
    same = HealthServers(a, 1).aggregate() == HealthServers(b, 1).aggregate()
    assert (_etag(ans_a) == _etag(ans_b)) == same


def test_unless_the_held_validator_the_answer_is_a_bodyless_304() -> None:
    state = HealthState("node-1", {}, True, 1, (4,), applied=frozenset({"ns/a"}))
    srv = HealthServers(state, 1)
    full = srv.node_answer("GET", AGGREGATE_PATH)
    assert isinstance(full, bytes) and full.startswith(b"HTTP/1.1 200 ")
    tag = _etag(full)
    same = srv.node_answer("GET", f"{AGGREGATE_PATH}?unless={tag}")
    assert isinstance(same, bytes) and same.startswith(b"HTTP/1.1 304 ")
    assert same.endswith(b"\r\n\r\n") and _etag(same) == tag
    state.rules_current = False  # any change of meaning: the full answer again
    changed = srv.node_answer("GET", f"{AGGREGATE_PATH}?unless={tag}")
    assert isinstance(changed, bytes) and changed.startswith(b"HTTP/1.1 200 ")
    assert _etag(changed) != tag and b'"rulesCurrent":false' in changed

"""A port a Service does not have (any more), asked through the gateway: the client learns it at
once — a TCP reset, an ICMP (or ICMPv6) port unreachable for UDP — instead of waiting for its
timeout, while the Service's own ports still answer. Both families, through the real gateway
(lbnode in the lab's gateway namespace) and the node agents.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from portico_lab.lab import Lab
from portico_lab.procs import Proc

from .dataplane_harness import (
    create,
    deleting_services,
    running_agents,
    running_gateway,
    running_operator,
)
from .netcheck import request
from .operator_harness import NS, Api, OperatorProcess, wait_for

GATEWAY = "gw-1"


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "gateway-ports", 200, "op-gw-ports") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab) as procs:
        yield procs


@pytest.fixture(scope="module")
def gateway(lab: Lab, agents: list[Proc]) -> Iterator[Proc]:
    with running_gateway(lab, GATEWAY) as proc:
        yield proc


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def ports(number: int) -> list[dict[str, Any]]:
    return [
        {"name": "http", "protocol": "TCP", "port": number, "targetPort": "http"},
        {"name": "udp", "protocol": "UDP", "port": number, "targetPort": "udp"},
    ]


def answers(lab: Lab, addr: str, port: int, proto: str, client: str = "client-1") -> bool:
    try:
        return bool(request(lab, client, addr, port, proto)["answer"])
    except ConnectionError:
        return False


def wait_answers(lab: Lab, addr: str, port: int, proto: str) -> None:
    wait_for(lambda: answers(lab, addr, port, proto), f"{addr}:{port}/{proto} answers")


# A TCP connect and a connected UDP socket's send and recv, each with a 2 s timeout: what each
# ended with, and after how long (measured here, not counting the interpreter's start).
_REFUSED = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {}
for kind in ("tcp", "udp"):
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2.0)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
        if kind == "udp":
            s.send(b"hello")
            s.recv(65535)
        got = "answered"
    except OSError as e:  # ConnectionRefusedError, TimeoutError, ...
        got = type(e).__name__
    out[kind] = [got, round(time.monotonic() - t0, 3)]
    s.close()
print(json.dumps(out))
"""


def refused(
    lab: Lab, addr: str, port: int, client: str = "client-1"
) -> dict[str, tuple[str, float]]:
    res = lab.exec(client, [sys.executable, "-S", "-c", _REFUSED, addr, str(port)], timeout=20)
    assert res.returncode == 0, res.stderr
    return {k: (v[0], v[1]) for k, v in json.loads(res.stdout).items()}


# ==============================================================================================
def test_a_port_the_service_no_longer_has_is_refused_at_once(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(
        api,
        services,
        "gw-ports",
        ipFamilyPolicy="PreferDualStack",
        ipFamilies=["IPv4", "IPv6"],
        ports=ports(80),
    )
    ips = api.wait_ips("gw-ports", 2)
    for ip in ips:
        wait_answers(lab, ip, 80, "http")
    # The Service moves from port 80 to 81 (a JSON patch: a strategic merge would add 81).
    move = [{"op": "replace", "path": "/spec/ports", "value": ports(81)}]
    api.core.patch_namespaced_service("gw-ports", NS, move)
    for ip in ips:
        wait_answers(lab, ip, 81, "http")
        wait_answers(lab, ip, 81, "udp")
    for ip in ips:
        got = refused(lab, ip, 80)
        # TCP: a reset (ECONNREFUSED at connect); UDP: a port unreachable (ECONNREFUSED at
        # recv) — each in well under a second, not the client's 2 s timeout.
        assert got["tcp"][0] == "ConnectionRefusedError", (ip, got)
        assert got["udp"][0] == "ConnectionRefusedError", (ip, got)
        # Under the SYN's 1 s retransmission (0.5 s was tight on a loaded machine).
        assert got["tcp"][1] < 0.9 and got["udp"][1] < 0.9, (ip, got)
        # The Service's own port is untouched.
        assert answers(lab, ip, 81, "http") and answers(lab, ip, 81, "udp"), ip


def test_a_client_outside_the_source_ranges_is_not_refused_but_dropped(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    """The firewall keeps an outsider out of every port, those the Service lacks included: it
    learns nothing (not even that the port is not there); an admitted client is refused."""
    one = f"{lab.plan.client(1).ipv4}/32"
    create(api, services, "gw-ports-fw", loadBalancerSourceRanges=[one], ports=ports(81))
    ip = api.wait_ips("gw-ports-fw")[0]
    wait_for(lambda: answers(lab, ip, 81, "http"), "the allowed client gets in")
    inside = refused(lab, ip, 80)
    assert inside["tcp"][0] == inside["udp"][0] == "ConnectionRefusedError", inside
    outside = refused(lab, ip, 80, "client-2")
    assert outside["tcp"][0] == outside["udp"][0] == "TimeoutError", outside
    assert not answers(lab, ip, 81, "http", "client-2")

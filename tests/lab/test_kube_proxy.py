"""Portico beside kube-proxy, as on kind and most clusters: kube-proxy (the control plane's
version, nftables or iptables mode) runs on every node next to Portico's agent.

kube-proxy programs a LoadBalancer address too when its ipMode is VIP (Portico's DSR mode).
Portico's DNAT runs one priority step before the standard one, and a connection's NAT is set by
the first NAT chain that acts, so Portico handles its VIPs whichever started first; the client
sees the same answer as without kube-proxy (tests/lab/test_dataplane.py). A kernel trace of one
connection shows whose rule DNATed it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from portico_lab.lab import Lab
from portico_lab.procs import Proc, netns_argv

from .dataplane_harness import (
    answered,
    create,
    deleting_services,
    http,
    running_agents,
    running_kube_proxy,
    running_operator,
    tables,
)
from .netcheck import routed
from .operator_harness import Api, OperatorProcess, wait_for

TRACE_TABLE = "ptcT-trace"


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "kube-proxy", 96, "op-kp") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab, "--verify-interval", "0.5") as procs:
        yield procs


@pytest.fixture(scope="module", params=["nftables", "iptables"])
def kube_proxy(request: pytest.FixtureRequest, lab: Lab, agents: list[Proc]) -> Iterator[str]:
    mode = request.param
    # Portico's table first, kube-proxy's after: a base chain registered later at the same
    # priority runs first, so from here only Portico's priority puts it ahead.
    for node in lab.node_names():
        wait_for(lambda n=node: ("inet", "portico") in tables(lab, n), f"{node}'s table")
    with running_kube_proxy(lab, mode):
        yield mode


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def programmed(api: Api, name: str) -> bool:
    conds = (api.lb(name).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conds)


def kube_proxy_has(lab: Lab, node: str, mode: str, vip: str) -> bool:
    """Whether kube-proxy on ``node`` programmed ``vip`` (so it would handle it if it ran first)."""
    if mode == "nftables":
        out = lab.exec(node, ["nft", "list", "map", "ip", "kube-proxy", "service-ips"]).stdout
    else:
        out = lab.exec(node, ["iptables-save", "-t", "nat"]).stdout
    return vip in out


def traced_dnat(lab: Lab, node: str, client: str, vip: str) -> list[str]:
    """The trace lines of one new connection to ``vip`` through ``node``, from a table of our
    own that marks the packets for tracing (removed afterwards)."""
    add = (
        f"add table inet {TRACE_TABLE}\n"
        f"add chain inet {TRACE_TABLE} pre {{ type filter hook prerouting priority -300 ; }}\n"
        f"add rule inet {TRACE_TABLE} pre ip daddr {vip} meta nftrace set 1\n"
    )
    subprocess.run(
        netns_argv(lab.netns_of(node), ["nft", "-f", "-"]), input=add, text=True, check=True
    )
    monitor = subprocess.Popen(
        netns_argv(lab.netns_of(node), ["timeout", "30", "nft", "monitor", "trace"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert monitor.stdout is not None
        for line in monitor.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # New connections until one is traced to the end: the monitor's netlink subscription
        # has no state to wait on, so the first ones may come before it (a fixed 0.3 s was not
        # always enough on a loaded machine); the end is the packet's source-NAT hook, which
        # kube-proxy's chains (and the pick's DNAT before it) have had their turn by.
        deadline = time.monotonic() + 20
        while not _traced_through(lines) and time.monotonic() < deadline:
            assert answered(lab, client, vip), "the VIP answers"
            settle = time.monotonic() + 1.0
            while not _traced_through(lines) and time.monotonic() < settle:
                time.sleep(0.05)
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
        reader.join(timeout=10)
        lab.exec(node, ["nft", "delete", "table", "inet", TRACE_TABLE])
    return lines


def _traced_through(lines: list[str]) -> bool:
    """A packet's trace reached the postrouting hook (kube-proxy's or the nat table's)."""
    return any(
        " ip kube-proxy nat-postrouting " in t or " ip nat POSTROUTING " in t for t in list(lines)
    )


def test_with_kube_proxy_portico_handles_its_vips_and_the_answer_is_the_same(
    lab: Lab, api: Api, kube_proxy: str, services: list[str]
) -> None:
    name = f"kp-local-{kube_proxy}"
    create(api, services, name, externalTrafficPolicy="Local")
    vip = api.wait_ips(name)[0]
    wait_for(lambda: programmed(api, name), "every node's agent applied the Service")
    wait_for(
        lambda: kube_proxy_has(lab, "node-2", kube_proxy, vip), "kube-proxy programmed the VIP"
    )
    client = str(lab.plan.client(1).ipv4)
    with routed(lab, "client-1", vip, "node-2"):
        first = wait_for(lambda: answered(lab, "client-1", vip), "the VIP answers through node-2")
        got = [first] + [answered(lab, "client-1", vip) for _ in range(5)]
        # the same answer as without kube-proxy: Local stays on node-2 and keeps the client IP
        assert {a["node"] for a in got if a} == {"node-2"}
        assert {a["client_ip"] for a in got if a} == {client}
        trace = traced_dnat(lab, "node-2", "client-1", vip)
    # Portico's pick chain took it (its DNAT accepts the packet in that hook) ...
    ours = [t for t in trace if " inet portico pick4-" in t and "(verdict accept)" in t]
    assert ours, "Portico's pick chain did not DNAT the connection:\n" + "\n".join(trace)
    # ... and kube-proxy's DNAT chain (nftables: ip kube-proxy nat-prerouting; iptables: ip nat
    # PREROUTING) was not even traversed: the connection's NAT was set when it came. (Its
    # source-NAT chain still sees the packet, and returns.)
    theirs = [
        t for t in trace if " ip kube-proxy nat-prerouting " in t or " ip nat PREROUTING " in t
    ]
    assert not theirs, "kube-proxy's DNAT chain saw the connection:\n" + "\n".join(theirs)
    assert any(" ip kube-proxy " in t or " ip nat " in t for t in trace), "kube-proxy is there"


def test_a_health_port_kube_proxy_holds_is_left_to_it_and_reported(
    lab: Lab, api: Api, agents: list[Proc], kube_proxy: str, services: list[str]
) -> None:
    # node-1's agent is down while the Service appears: kube-proxy binds its health port first,
    # as it does on a node where it started before the agent.
    agent1 = next(p for p in agents if p.name.endswith("node-1"))
    agent1.stop()
    try:
        name = f"kp-hc-{kube_proxy}"
        create(api, services, name, externalTrafficPolicy="Local")
        api.wait_ips(name)
        port = api.service(name).spec.health_check_node_port
        node1 = str(lab.host("node-1").ipv4)
        first = wait_for(lambda: healthz(lab, node1, port), "kube-proxy serves the health port")
    finally:
        agent1.start()

    def conflicts() -> dict[str, str]:
        agent = api.custom.get_cluster_custom_object(
            "portico.dev", "v1alpha1", "nodeagents", "node-1"
        )
        return dict((agent.get("status") or {}).get("healthPortConflicts") or {})

    seen: list[dict[str, str]] = [{}]

    def reported() -> dict[str, str] | None:
        seen[0] = conflicts()
        return seen[0] if seen[0].get(str(port)) else None

    try:
        held = wait_for(reported, f"node-1's NodeAgent names port {port}, which kube-proxy holds")
    except AssertionError as e:
        raise AssertionError(f"{e}; its healthPortConflicts: {seen[0]}") from None
    assert "in use" in held[str(port)].lower()
    # the same answer either way (the agent answers kube-proxy's way): two local endpoints
    assert first["status"] == 200 and first["body"]["localEndpoints"] == 2, first
    assert first["body"]["service"]["name"] == name
    again = healthz(lab, node1, port)
    assert again is not None and again["body"]["localEndpoints"] == 2


def healthz(lab: Lab, node_ip: str, port: int) -> dict[str, Any] | None:
    """The port's /healthz answer with its JSON body, or None while nothing answers."""
    r = http(lab, "client-1", node_ip, port)
    return {**r, "body": json.loads(r["body"])} if "status" in r else None

"""The gateway on a cluster node (the chart's gateway: hostNetwork on a labelled node; the kind
walkthrough): the gateway runs in node-1's own namespace, beside its node agent, and node-1 is
one of the nodes it forwards to.

Two things break there and nowhere else, each checked here for both families: netdev ``fwd``
cannot send a packet to the host it runs on (the host never answers its own neighbour
solicitation), so every flow the hash gave node-1 timed out; and the host never hears its own
ARP or NDP probe (its verdict came from whatever ARP the host itself sent out, so node-1 could
be judged unreachable and its endpoints dropped everywhere). Now node-1's flows go to its own
IP stack (``flowrules.deliver_locally``) and the gateway never probes its own addresses
(``localaddr``, ``neighbours.probe_targets``; the report check below sees it only when a
verdict came about, the unit test of ``probe_targets`` always)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from portico_lab.lab import Lab
from portico_lab.portico import gateway_argv
from portico_lab.procs import Proc

from .dataplane_harness import (
    FAMILIES,
    addr,
    create,
    deleting_services,
    family_spec,
    named,
    running_agents,
    running_operator,
)
from .netcheck import request
from .operator_harness import Api, OperatorProcess, wait_for

NODE = "node-1"  # the gateway's host
GATEWAY = "gw-on-node-1"  # its name (GatewayReport, ownerGateway)
BLOCK = 216  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)
REQUESTS = 24  # new connections per family: the hash gives node-1 about a third


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "gw-on-node", BLOCK, "op-gw-node") as op:
        yield op


@pytest.fixture(scope="module")
def gateway(lab: Lab, operator: OperatorProcess) -> Iterator[Proc]:
    """lbnode in node-1's namespace, on its LAN device, as a hostNetwork pod there runs it."""
    proc = Proc(
        f"portico-lbnode-{GATEWAY}",
        gateway_argv(lab, GATEWAY),  # its LAN device is eth0 there too
        lab.workdir / "logs" / f"lbnode-{GATEWAY}.log",
        netns=lab.netns_of(NODE),
    )
    with running_agents(lab):
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
            lab.exec(NODE, [sys.executable, "-m", "portico_lbnode", "--cleanup"])
            lab.kubectl("delete", "gatewayreport", GATEWAY, "--ignore-not-found", check=False)


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def healthy_nodes(api: Api, name: str) -> set[str]:
    status = api.lb(name).get("status") or {}
    return {n["node"] for n in status.get("nodes") or [] if n.get("healthy")}


def report_verdicts(lab: Lab) -> str:
    """The gateway's GatewayReport: its verdict on each node it probes."""
    return lab.kubectl(
        "get",
        "gatewayreport",
        GATEWAY,
        "-o",
        "jsonpath={range .status.nodes[*]}{.node}={.reachable} {end}",
        check=False,
    ).stdout.strip()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_gateways_own_node_serves_its_share_of_flows(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-on-node", family)
    # Local: the answering pod's node is the node the gateway gave the flow to.
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    try:
        wait_for(
            lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"},
            "every node healthy at the gateway, its own included",
            30,
        )
    except AssertionError as e:
        raise AssertionError(f"{e}: {api.lb(name).get('status')}; {gateway.log_tail()}") from e
    client = lab.plan.client(1)
    wait_for(lambda: _answer(lab, ip), "a first answer through the VIP", 20)
    nodes = []
    for _ in range(REQUESTS):
        answer = _answer(lab, ip)
        assert answer is not None, f"a connection through the VIP failed: {gateway.log_tail()}"
        assert answer["client_ip"] == addr(client, family)  # the client's own address
        nodes.append(answer["node"])
    # node-1's share went to its own stack and was answered there; the others were forwarded.
    assert NODE in nodes and set(nodes) - {NODE}, nodes
    # Never probed, never reported: its endpoints stay in every node's rules.
    verdicts = wait_for(
        lambda: v if "node-2=true node-3=true" in (v := report_verdicts(lab)) else None,
        "the GatewayReport's verdicts on the other nodes",
        20,
    )
    assert NODE not in verdicts, verdicts
    assert gateway.alive(), gateway.log_tail()


def _answer(lab: Lab, ip: str) -> dict[str, str] | None:
    try:
        return request(lab, "client-1", ip, 80)["answer"]  # type: ignore[no-any-return]
    except ConnectionError:
        return None


@pytest.mark.parametrize("family", FAMILIES)
def test_cluster_flows_given_to_the_gateways_node_are_answered(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    """The default policy: a flow the hash gives node-1 is DNATed by node-1's own rules to any
    pod. A pod on the DNATing node sees the client's own address (DSR), one elsewhere the
    node's: an answer from a node-1 pod with the client's address was DNATed on node-1."""
    name = named("gw-on-node-cl", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(
        lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"},
        "every node healthy at the gateway, its own included",
        30,
    )
    client = addr(lab.plan.client(1), family)
    wait_for(lambda: _answer(lab, ip), "a first answer through the VIP", 20)
    answers = []
    for _ in range(REQUESTS):
        answer = _answer(lab, ip)
        assert answer is not None, f"a connection through the VIP failed: {gateway.log_tail()}"
        answers.append((answer["node"], answer["client_ip"] == client))
    assert (NODE, True) in answers, answers

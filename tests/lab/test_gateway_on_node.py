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
verdict came about, the unit test of ``probe_targets`` always).

And two things that only a gateway on a node meets: NAT mode, where the node's own DNAT ran
first and took every flow whatever node the gateway chose (``natrules``: the gateway's NAT runs
first now and leaves its own node's slots to the node's rules); and an address the node gets
after the gateway started (read again at each ``--verify-interval``). Last, kind's own shape:
all of it beside kube-proxy in iptables mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from portico_lab.lab import Lab
from portico_lab.procs import Proc

from .dataplane_harness import (
    ALONE,
    FAMILIES,
    KUBE_PROXY_IPTABLES,
    KubeProxySwitch,
    addr,
    answered,
    create,
    deleting_services,
    family_spec,
    kube_proxy_switch,
    named,
    running_agents,
    running_gateway,
    running_operator,
)
from .netcheck import request
from .operator_harness import NS, Api, OperatorProcess, wait_for
from .test_gateway import healthy_nodes

NODE = "node-1"  # the gateway's host
GATEWAY = "gw-on-node-1"  # its name (GatewayReport, ownerGateway)
BLOCK = 216  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)
REQUESTS = 24  # new connections per family: the hash gives node-1 about a third
MOST_REQUESTS = 120  # ... and more, until what a test looks for shows (``_answers_until``)
POD_REQUESTS = 12  # from a pod on node-1 (NAT mode)


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "gw-on-node", BLOCK, "op-gw-node") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab) as procs:
        yield procs


def gateway_on_node(lab: Lab, *extra: str) -> AbstractContextManager[Proc]:
    """lbnode in node-1's namespace, on its LAN device (eth0 there too), as a hostNetwork pod
    there runs it."""
    return running_gateway(lab, GATEWAY, *extra, host=NODE)


@pytest.fixture(scope="module")
def gateway(lab: Lab, agents: list[Proc]) -> Iterator[Proc]:
    with gateway_on_node(lab) as proc:
        yield proc


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


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


# First in the module: it runs a gateway of its own in node-1, before the module's starts there.
def test_an_address_the_node_gets_after_the_gateway_started_is_its_own(
    lab: Lab, api: Api, agents: list[Proc], services: list[str]
) -> None:
    """node-1's IPv6 address comes after the gateway started (DHCP, an operator's change): the
    gateway reads its addresses again at each ``--verify-interval``, and node-1's IPv6 flows go
    to its own stack from then on. Read at start only, node-1 stayed a remote node for IPv6:
    NDP-probed (a host never hears its own probe) and sent flows by ``fwd`` to itself, where
    they were lost. IPv6 only: node-1's IPv4 address carries its agent's API connection."""
    gone = lab.exec(NODE, ["nft", "list", "table", "netdev", "portico-gw"])
    assert gone.returncode != 0, "another gateway runs in node-1: this test runs before it starts"
    own = f"{lab.plan.node(1).ipv6}/{lab.plan.lan_v6.prefixlen}"
    routes = lab.exec(NODE, ["ip", "-6", "route", "show"], check=True).stdout.splitlines()
    lab.exec(NODE, ["ip", "-6", "addr", "del", own, "dev", "eth0"], check=True)
    log = lab.workdir / "logs" / f"lbnode-{GATEWAY}.log"
    start = log.stat().st_size if log.exists() else 0  # the log is appended to

    def own_addresses() -> list[str]:
        """The gateway's "own addresses: ..." log lines of this run."""
        with log.open("rb") as f:
            f.seek(start)
            return [line for line in f.read().decode().splitlines() if "own addresses:" in line]

    v6 = str(lab.plan.node(1).ipv6)
    try:
        with gateway_on_node(lab, "--verify-interval", "3") as gw:
            first = wait_for(own_addresses, "the start's read", 20)
            assert v6 not in first[0], first
            # The Service is there before the address comes (node-1's IPv6 address is its
            # IPv6 flows' target; its health is asked at its IPv4 address, the lab's first).
            name = named("gw-on-node-late", 6)
            create(api, services, name, externalTrafficPolicy="Local", **family_spec(6))
            ip = api.wait_ips(name)[0]
            _restore(lab, own, routes)
            wait_for(
                lambda: any(v6 in line for line in own_addresses()),
                "the gateway sees the address added after its start",
                10,
            )
            wait_for(
                lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"},
                "every node healthy at the gateway, its own included",
                30,
            )
            wait_for(lambda: answered(lab, "client-1", ip), "a first answer through the VIP", 20)
            got = _answers_until(lab, ip, gw, lambda got: NODE in _nodes(got))
            assert NODE in _nodes(got), got
    finally:
        _restore(lab, own, routes)


def _restore(lab: Lab, own: str, routes: list[str]) -> None:
    """node-1's IPv6 address and every IPv6 route it had (idempotent)."""
    lab.exec(NODE, ["ip", "-6", "addr", "replace", own, "dev", "eth0", "nodad"], check=True)
    for route in routes:
        lab.exec(NODE, ["ip", "-6", "route", "replace", *route.split()])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_gateways_own_node_serves_its_share_of_flows(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    _own_node_serves_its_share(lab, api, gateway, services, family)


def _own_node_serves_its_share(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int, beside: str = ALONE
) -> None:
    name = named("gw-on-node", family) + _SUFFIX[beside]
    # Local: the answering pod's node is the node the gateway gave the flow to.
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    _kube_proxy_synced(lab, beside, name, ip, dsr=True)
    try:
        wait_for(
            lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"},
            "every node healthy at the gateway, its own included",
            30,
        )
    except AssertionError as e:
        raise AssertionError(f"{e}: {api.lb(name).get('status')}; {gateway.log_tail()}") from e
    client = lab.plan.client(1)
    wait_for(lambda: answered(lab, "client-1", ip), "a first answer through the VIP", 20)
    got = _answers_until(lab, ip, gateway, lambda got: NODE in _nodes(got) and len(_nodes(got)) > 1)
    assert {a["client_ip"] for a in got} == {addr(client, family)}  # the client's own address
    # node-1's share went to its own stack and was answered there; the others were forwarded.
    assert NODE in _nodes(got) and len(_nodes(got)) > 1, got
    # Never probed, never reported: its endpoints stay in every node's rules.
    verdicts = wait_for(
        lambda: v if "node-2=true node-3=true" in (v := report_verdicts(lab)) else None,
        "the GatewayReport's verdicts on the other nodes",
        20,
    )
    assert NODE not in verdicts, verdicts
    assert gateway.alive(), gateway.log_tail()


def _answers_until(
    lab: Lab, ip: str, gateway: Proc, enough: Callable[[list[dict[str, str]]], bool]
) -> list[dict[str, str]]:
    """New connections through the VIP, every one answered: at least REQUESTS, then until
    ``enough`` (the gateway's hash of random source ports spreads flows evenly, but a share
    of one node is missed in 24 now and then; at most MOST_REQUESTS)."""
    got: list[dict[str, str]] = []
    while len(got) < MOST_REQUESTS and (len(got) < REQUESTS or not enough(got)):
        answer = answered(lab, "client-1", ip)
        assert answer is not None, f"a connection through the VIP failed: {gateway.log_tail()}"
        got.append(answer)
    return got


def _nodes(got: list[dict[str, str]]) -> set[str]:
    return {a["node"] for a in got}


def _clients(got: list[dict[str, str]]) -> set[str]:
    return {a["client_ip"] for a in got}


def _origins(got: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(the answering pod's node, the address it saw) of each answer."""
    return {(a["node"], a["client_ip"]) for a in got}


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
    wait_for(lambda: answered(lab, "client-1", ip), "a first answer through the VIP", 20)
    # The hash gives node-1 a third of the flows and node-1 DNATs a third of those to its own
    # pods: one in nine shows it (24 requests miss it 6 % of the time, seen here; 120: 1 in 10^6).
    got = _answers_until(lab, ip, gateway, lambda got: (NODE, client) in _origins(got))
    assert (NODE, client) in _origins(got), got


@pytest.mark.parametrize("policy", ["Local", "Cluster"])
@pytest.mark.parametrize("family", FAMILIES)
def test_nat_mode_follows_the_gateways_choice_on_its_own_node(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int, policy: str
) -> None:
    _nat_mode_follows_the_gateways_choice(lab, api, gateway, services, family, policy)


def _nat_mode_follows_the_gateways_choice(
    lab: Lab,
    api: Api,
    gateway: Proc,
    services: list[str],
    family: int,
    policy: str,
    beside: str = ALONE,
) -> None:
    """NAT mode (``portico.dev/forwarding-mode: nat``) with the gateway on node-1: a flow the
    gateway gives node-2 or node-3 is DNATed to that node's nodePort and masqueraded (the pod
    sees node-1's address, the gateway host's); one it gives node-1 is left to node-1's own
    rules (the pod sees the client). Before, node-1's rules (their DNAT runs first) took every
    flow whatever the gateway chose: with ETP Local only node-1's pods answered (and none
    would, had node-1 no endpoint); with Cluster no flow reached another node's nodePort."""
    name = named(f"gw-on-node-nat-{policy.lower()}", family) + _SUFFIX[beside]
    create(api, services, name, externalTrafficPolicy=policy, **family_spec(family))
    api.core.patch_namespaced_service(
        name, NS, {"metadata": {"annotations": {"portico.dev/forwarding-mode": "nat"}}}
    )
    ip = api.wait_ips(name)[0]
    _kube_proxy_synced(lab, beside, name, ip, dsr=False)
    wait_for(
        lambda: ip in lab.exec(NODE, ["nft", "list", "table", "inet", "portico-gw-nat"]).stdout,
        "the gateway's NAT table has the VIP",
    )
    wait_for(
        lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"},
        "every node healthy at the gateway, its own included",
        30,
    )
    wait_for(lambda: answered(lab, "client-1", ip), "a first answer through the VIP", 20)
    client = addr(lab.plan.client(1), family)
    gateway_host = addr(lab.plan.node(1), family)
    others = {addr(lab.plan.node(i), family) for i in (2, 3)}
    every = {"node-1", "node-2", "node-3"}
    if policy == "Local":
        got = _answers_until(lab, ip, gateway, lambda got: _nodes(got) == every)
    else:
        got = _answers_until(lab, ip, gateway, lambda got: bool(others & _clients(got)))
    answers = sorted(_origins(got))
    if policy == "Local":
        # Each node's own pods, as the gateway's hash chose the node.
        assert {n for n, _ in answers} == every, answers
        assert all((c == client) == (n == NODE) for n, c in answers), answers
        assert {c for n, c in answers if n != NODE} == {gateway_host}, answers
    else:
        # node-2 or node-3 DNATed some flows (their own address, masquerading toward a pod
        # elsewhere): only a flow the gateway sent to their nodePort reaches their rules.
        assert others & {c for _, c in answers}, answers
    # A pod on node-1 reaching the VIP is node-1's own, as on any node (the gateway's table
    # takes LAN packets only): DNATed there, masqueraded by node-1 toward a pod elsewhere, so
    # no pod ever sees node-2's or node-3's address (it would, DNATed at their nodePorts).
    inside = []
    for _ in range(POD_REQUESTS):
        answer = request(lab, "echo-1-1", ip, 80)["answer"]
        inside.append((answer["node"], answer["client_ip"]))
    assert not others & {c for _, c in inside}, inside
    if policy == "Local" and beside == ALONE:
        # The annotation removed again: direct server return, every node's pods see the
        # client (a NAT rule or a natlocal slot left behind would masquerade some flows).
        api.core.patch_namespaced_service(
            name, NS, {"metadata": {"annotations": {"portico.dev/forwarding-mode": None}}}
        )
        wait_for(
            lambda: (
                ip not in lab.exec(NODE, ["nft", "list", "table", "inet", "portico-gw-nat"]).stdout
            ),
            "the VIP gone from the gateway's NAT table",
        )
        got = _answers_until(lab, ip, gateway, lambda got: _nodes(got) == every)
        assert _nodes(got) == every and _clients(got) == {client}, sorted(_origins(got))


@pytest.fixture(scope="module")
def switch(lab: Lab, agents: list[Proc]) -> Iterator[KubeProxySwitch]:
    with kube_proxy_switch(lab, agents) as s:
        yield s


def test_beside_kube_proxy_in_iptables_mode_as_on_kind(
    lab: Lab, api: Api, gateway: Proc, switch: KubeProxySwitch, services: list[str]
) -> None:
    """kind's own shape: kube-proxy in iptables mode (kind's default) on every node, the
    gateway's included. Portico's DNAT runs before kube-proxy's (-100): the agent's at -101,
    the gateway's NAT at -102; and kube-proxy leaves NAT mode's addresses (``ipMode: Proxy``)
    to the load balancer. So the own node's share, NAT mode's choice and the addresses the
    pods see are as without kube-proxy, both families, once kube-proxy has the Services."""
    switch.want(KUBE_PROXY_IPTABLES)
    try:
        for family in FAMILIES:
            _own_node_serves_its_share(lab, api, gateway, services, family, KUBE_PROXY_IPTABLES)
            for policy in ("Local", "Cluster"):
                _nat_mode_follows_the_gateways_choice(
                    lab, api, gateway, services, family, policy, KUBE_PROXY_IPTABLES
                )
    finally:
        switch.want(ALONE)


_SUFFIX = {ALONE: "", KUBE_PROXY_IPTABLES: "-kpi"}


def _kube_proxy_synced(lab: Lab, beside: str, name: str, ip: str, dsr: bool) -> None:
    """With kube-proxy beside: node-1's kube-proxy has the Service's chains (its comment names
    the Service port), and for an address in direct server return (``ipMode: VIP``) the VIP
    too, so that it could have taken the flows, had it come first."""
    if beside == ALONE:
        return
    save = "ip6tables-save" if ":" in ip else "iptables-save"

    def synced() -> bool:
        rules = lab.exec(NODE, [save, "-t", "nat"]).stdout
        return f"{NS}/{name}:http" in rules and (not dsr or ip in rules)

    wait_for(synced, f"node-1's kube-proxy has {name}", 30)

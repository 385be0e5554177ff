"""A node that drops off the LAN while Kubernetes still calls its endpoints ready (its kubelet
"still heartbeats"): the gateway stops sending it flows, and every other node stops DNATing
Cluster traffic to its pods, within about a second; when it comes back, both return. A
gateway that is itself cut off (it hears no ARP answer from anyone) takes nobody out."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from portico_lab.lab import Lab
from portico_lab.load import finish, outage, start_request_loop
from portico_lab.procs import Proc, netns_argv

from .dataplane_harness import (
    create,
    deleting_services,
    running_agents,
    running_gateway,
    running_operator,
)
from .operator_harness import Api, OperatorProcess, wait_for

GATEWAY = "gw-1"
RATE, COUNT = 20.0, 160  # 8 s of requests
DOWN_AFTER = 2.0  # the link goes down this long into the loop


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "deadnode", 232, "op-dead") as op:
        yield op


@pytest.fixture(scope="module")
def gateway(lab: Lab, operator: OperatorProcess) -> Iterator[Proc]:
    with running_agents(lab), running_gateway(lab, GATEWAY) as proc:
        yield proc


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def pods_of(lab: Lab, node: str) -> set[str]:
    return {str(p.ipv4) for p in lab.pods() if p.node == node}


def dnat_targets(lab: Lab, node: str, vip: str) -> set[str]:
    """The pod addresses ``node``'s rules DNAT the VIP's traffic to (its endpoint map)."""
    out = lab.exec(node, ["nft", "-j", "list", "map", "inet", "portico", "endpoint-addrs4"])
    if out.returncode != 0:  # the agent has not made its table yet
        return set()
    found = set()
    for item in json.loads(out.stdout)["nftables"]:
        for elem in (item.get("map") or {}).get("elem") or []:
            key, value = elem
            if json.dumps(key).find(f'"{vip}"') >= 0:
                found |= {v for v in json.dumps(value).split('"') if v.count(".") == 3}
    return found


def flows_to(lab: Lab, node: str, vip: str, pods: set[str], proto: str = "tcp") -> int:
    """``node``'s conntrack entries of ``proto`` flows to the VIP answered by one of ``pods``."""
    out = lab.exec(node, ["cat", "/proc/net/nf_conntrack"], check=True).stdout
    n = 0
    for line in out.splitlines():
        fields = line.split()
        if proto not in fields or f"dst={vip}" not in fields:
            continue
        sources = [f[4:] for f in fields if f.startswith("src=")]
        n += len(sources) > 1 and sources[1] in pods
    return n


# One datagram from each of many source ports (a flow each), each answered, to the VIP's port 80.
_UDP_FLOWS = r"""
import socket, sys
host, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
answered = 0
for sport in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", sport)); s.settimeout(1.0)
    s.sendto(b"flow", (host, 80))
    try:
        s.recvfrom(65536); answered += 1
    except OSError:
        pass
    s.close()
print(answered)
"""


def udp_flows(lab: Lab, vip: str, n: int = 30) -> int:
    res = lab.exec("client-2", [sys.executable, "-S", "-c", _UDP_FLOWS, vip, "43000", str(n)])
    assert res.returncode == 0, res.stderr
    return int(res.stdout)


def condition(api: Api, name: str, kind: str) -> dict[str, Any]:
    st = api.lb(name).get("status") or {}
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def report(api: Api) -> dict[str, Any]:
    obj = api.custom.get_cluster_custom_object("portico.dev", "v1alpha1", "gatewayreports", GATEWAY)
    return obj.get("status") or {}


def cluster_service(lab: Lab, api: Api, services: list[str], name: str) -> str:
    create(api, services, name, externalTrafficPolicy="Cluster")
    vip = api.wait_ips(name)[0]
    everyone = pods_of(lab, "node-1") | pods_of(lab, "node-2") | pods_of(lab, "node-3")
    wait_for(lambda: dnat_targets(lab, "node-1", vip) == everyone, "node-1 sends to every pod")
    wait_for(lambda: (api.lb(name).get("status") or {}).get("healthyNodes") == 3, "3 healthy nodes")
    return vip


def test_a_dead_node_leaves_every_nodes_rules_within_seconds(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    name = "dead-node"
    vip = cluster_service(lab, api, services, name)
    lost = pods_of(lab, "node-2")
    loop = start_request_loop(lab.netns_of("client-1"), vip, RATE, COUNT)
    try:
        time.sleep(DOWN_AFTER)  # the loop's own schedule: nothing to wait for but time
        # The first 40 requests left TIME_WAIT entries, some through node-1/3 to node-2's pods,
        # and so did 60 UDP flows (each answered but for a datagram lost now and then): about 40
        # pass node-1/3, each DNATed to a node-2 pod one time in three (30 flows missed all now
        # and then: 1 in 3,000).
        assert udp_flows(lab, vip, 60) >= 55
        others = ("node-1", "node-3")
        for proto in ("tcp", "udp"):
            assert sum(flows_to(lab, n, vip, lost, proto) for n in others), proto
        down_at = time.time()
        lab.fail_node("node-2", stop_heartbeat=False)
        wait_for(lambda: not dnat_targets(lab, "node-1", vip) & lost, "node-1 drops node-2's pods")
        requests = finish(loop)
    except BaseException:
        loop.kill()
        lab.restore_node("node-2")
        raise
    try:
        figures = outage(requests, down_at)
        print(f"link down: {figures}")
        # Kubernetes still calls node-2's endpoints ready: only the gateway's verdict took them.
        assert lab.wait_endpoints({p.name for p in lab.pods()}, service=name, timeout=5)
        assert figures.last_failure_after is not None  # the outage was seen at all
        # About 0.5 s (bench/deadnode.py); without the gateway's verdict and the operator's
        # exclusion, requests fail for as long as the link is down. 2 s of slack for a loaded
        # machine: the figure is the benchmark's, the bound only tells the two apart.
        assert figures.last_failure_after <= 2.0, figures
        late = [r for r in requests if r.at > down_at + 2.0]
        assert late and all(r.node for r in late) and "node-2" not in {r.node for r in late}
        assert not dnat_targets(lab, "node-3", vip) & lost
        # Their conntrack entries went with them (TCP too: those connections are dead).
        for proto in ("tcp", "udp"):
            assert sum(flows_to(lab, n, vip, lost, proto) for n in others) == 0, proto
        cond = condition(api, name, "NodesReachable")
        assert cond["status"] == "False" and cond["reason"] == "NodesUnreachable", cond
        assert "node-2" in report(api)["unreachableNodes"]
    finally:
        lab.restore_node("node-2")
    # Back: its endpoints return to the others' rules and it gets new flows again.
    wait_for(lambda: lost <= dnat_targets(lab, "node-1", vip), "node-2's pods back on node-1")
    wait_for(lambda: condition(api, name, "NodesReachable").get("status") == "True", "reachable")
    seen = finish(start_request_loop(lab.netns_of("client-1"), vip, RATE, 40))
    assert all(r.node for r in seen) and "node-2" in {r.node for r in seen}


CUT_OFF = "deadnode-cutoff"  # an nft table in the gateway's namespace


def test_a_gateway_that_hears_no_arp_answer_takes_no_node_out(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    name = "dead-guard"
    vip = cluster_service(lab, api, services, name)
    everyone = dnat_targets(lab, "node-1", vip)
    # The gateway's own link "breaks" for ARP answers: every node looks gone to it.
    rules = (
        f"add table netdev {CUT_OFF}; add chain netdev {CUT_OFF} in {{ type filter hook "
        f"ingress device eth0 priority -500; }}; add rule netdev {CUT_OFF} in arp operation "
        "reply drop"
    )
    lab.exec(GATEWAY, ["nft", rules], check=True)
    try:
        wait_for(lambda: len(report(api).get("unreachableNodes") or []) == 3, "all 3 unreachable")
        cond = wait_for(
            lambda: (
                (c := condition(api, name, "NodesReachable")).get("reason") == "VerdictIgnored"
                and c
            ),
            "the verdicts ignored",
        )
        assert cond["status"] == "True" and "more than half" in cond["message"], cond
        assert dnat_targets(lab, "node-1", vip) == everyone
        assert dnat_targets(lab, "node-3", vip) == everyone
    finally:
        lab.exec(GATEWAY, ["nft", "delete", "table", "netdev", CUT_OFF])
    wait_for(lambda: not report(api).get("unreachableNodes"), "every node reachable again")


def test_a_gateway_restart_keeps_a_dead_node_out(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    name = "dead-restart"
    vip = cluster_service(lab, api, services, name)
    lost = pods_of(lab, "node-2")
    lab.fail_node("node-2", stop_heartbeat=False)
    try:
        wait_for(lambda: not dnat_targets(lab, "node-1", vip) & lost, "node-2's pods out")
        before = api.custom.get_cluster_custom_object(
            "portico.dev", "v1alpha1", "gatewayreports", GATEWAY
        )["metadata"]["resourceVersion"]
        # A restarted gateway never heard node-2 answer: without its previous verdicts it would
        # have none for node-2, and node-2's endpoints would return to every node's rules.
        gateway.stop()
        gateway.start()
        wait_for(
            lambda: (
                api.custom.get_cluster_custom_object(
                    "portico.dev", "v1alpha1", "gatewayreports", GATEWAY
                )["metadata"]["resourceVersion"]
                != before
            ),
            "the restarted gateway's first report",
        )
        assert "node-2" in report(api)["unreachableNodes"]
        assert not dnat_targets(lab, "node-1", vip) & lost
    finally:
        lab.restore_node("node-2")
    wait_for(lambda: lost <= dnat_targets(lab, "node-1", vip), "node-2's pods back on node-1")


# The gateway's neighbour prober alone, in the gateway's namespace, for one node: one JSON line
# per verdict. Bounded by its argument in seconds.
_PROBER = r"""
import asyncio, contextlib, json, sys
from portico_lbnode.arpprobe import NeighbourProber
from portico_lbnode.neighbours import NeighbourSettings
node, address, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
def changed(n, st):
    print(json.dumps({"node": n, "reachable": st.reachable, "at": st.since}), flush=True)
p = NeighbourProber(NeighbourSettings(), ["eth0"], on_change=changed)
p.set_targets({node: address})
async def main():
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(p.run(), seconds)
asyncio.run(main())
"""


def next_verdict(proc: subprocess.Popen[str], timeout: float = 10) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no verdict in time"
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "the prober ended"
    return dict(json.loads(line))


def test_ndp_judges_an_ipv6_only_node(lab: Lab) -> None:
    """A node known by its IPv6 address only is asked by neighbour solicitation."""
    address = str(lab.host("node-3").ipv6)
    argv = [sys.executable, "-c", _PROBER, "node-3", address, "30"]
    proc = subprocess.Popen(
        netns_argv(lab.netns_of(GATEWAY), argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert next_verdict(proc)["reachable"] is True
        down_at = time.time()
        lab.fail_node("node-3", stop_heartbeat=False)
        try:
            out = next_verdict(proc)
            # About 0.45 s (three missed 0.1 s requests); the probes alone take over 2 s.
            assert out["reachable"] is False and out["at"] - down_at < 1.8, (out, down_at)
        finally:
            lab.restore_node("node-3")
        assert next_verdict(proc)["reachable"] is True
    finally:
        proc.kill()
        proc.wait()

"""The whole path, as a user's client takes it: the client ARPs (or solicits) for a VIP, the
gateway (lbnode, in the lab's gateway namespace) answers with its MAC, picks a healthy node by
its Maglev table and forwards the packet unchanged; the node's agent DNATs to a pod, and the
reply goes from the node straight to the client. No static routes: the VIPs are on the
clients' LAN, as on a flat bare-metal network.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from portico_common.metrics import package_version
from portico_lab.lab import Lab
from portico_lab.procs import Proc

from ..unit.metrics_catalog import documented
from .dataplane_harness import (
    AGENT_PORT,
    BESIDE,
    FAMILIES,
    KUBE_PROXY,
    KubeProxySwitch,
    addr,
    answered,
    beside_param,
    create,
    deleting_services,
    family_spec,
    http,
    kube_proxy_switch,
    named,
    running_agents,
    running_gateway,
    running_operator,
)
from .operator_harness import NS, Api, OperatorProcess, wait_for

GATEWAY = "gw-1"
GATEWAY_METRICS = 9474  # the gateway's --metrics-port, in its namespace


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "gateway", 160, "op-gw") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab) as procs:
        yield procs


@pytest.fixture(scope="module")
def gateway(lab: Lab, agents: list[Proc]) -> Iterator[Proc]:
    with running_gateway(lab, GATEWAY, "--metrics-port", str(GATEWAY_METRICS)) as proc:
        yield proc


@pytest.fixture(scope="module")
def switch(lab: Lab, agents: list[Proc]) -> Iterator[KubeProxySwitch]:
    with kube_proxy_switch(lab, agents) as s:
        yield s


@pytest.fixture()
def beside(request: pytest.FixtureRequest, switch: KubeProxySwitch) -> str:
    """Portico alone, or kube-proxy (nftables) beside it on every node."""
    return beside_param(request, switch)


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def gateway_mac(lab: Lab) -> str:
    out = lab.exec(GATEWAY, ["ip", "-j", "link", "show", "eth0"], check=True).stdout
    return str(json.loads(out)[0]["address"]).lower()


def status(api: Api, name: str) -> dict[str, Any]:
    return api.lb(name).get("status") or {}


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def healthy_nodes(api: Api, name: str) -> set[str]:
    return {n["node"] for n in status(api, name).get("nodes") or [] if n.get("healthy")}


# Connections from fixed source ports (one flow each), from several client addresses: the node
# that answered each, or null.
_FLOWS = r"""
import json, socket, sys
host, port = sys.argv[1], 80
srcs, first, n = sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
out = {}
for src in srcs:
    for sport in range(first, first + n):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(3.0)
        try:
            s.bind((src, sport))
            s.connect((host, port))
            s.sendall(b"GET /flow HTTP/1.0\r\n\r\n"); data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk: break
                data += chunk
            out[f"{src}:{sport}"] = json.loads(data.split(b"\r\n\r\n", 1)[1])["node"]
        except OSError as e:
            out[f"{src}:{sport}"] = None
            print(f"{src}:{sport} {type(e).__name__} {e}", file=sys.stderr)
        finally:
            s.close()
print(json.dumps(out))
"""


_MAC = r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"


def neighbour_macs(lab: Lab, client: str, ip: str, tries: int, wait: int) -> tuple[int, set[str]]:
    """Who answers ``client``'s neighbour solicitations for ``ip``: ARP (arping) for an IPv4
    address, NDP (ndisc6, every answer) for an IPv6 one; the exit status and the MACs seen."""
    if ":" in ip:
        argv = ["ndisc6", "-m", "-n", "-r", str(tries), "-w", str(wait * 1000), ip, "eth0"]
        res = lab.exec(client, argv)
        found = re.findall(rf"link-layer address:\s*({_MAC})", res.stdout)
    else:
        argv = ["arping", "-c", str(tries), "-w", str(wait), "-I", "eth0", ip]
        res = lab.exec(client, argv)
        found = re.findall(rf"\[({_MAC})\]", res.stdout)
    return res.returncode, {m.lower() for m in found}


def flows(lab: Lab, ip: str, sources: list[str], first: int, n: int) -> dict[str, str | None]:
    res = lab.exec(
        "client-1",
        [sys.executable, "-S", "-c", _FLOWS, ip, ",".join(sources), str(first), str(n)],
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    if res.stderr:
        print("failed flows:", res.stderr)
    return json.loads(res.stdout)


def suffixed(name: str, family: int, beside: str) -> str:
    """A Service name unique per family and per kube-proxy beside or not."""
    return named(name, family) + ("-kp" if beside == KUBE_PROXY else "")


# ==============================================================================================
@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_vip_answers_through_the_gateway_with_the_client_ip(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int, beside: str
) -> None:
    name = suffixed("gw-local", family, beside)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    first = wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers through the gateway")
    got = [first] + [answered(lab, "client-2", ip) for _ in range(6)]
    assert first["client_ip"] == addr(lab.plan.client(1), family)
    assert {a["client_ip"] for a in got[1:] if a} == {addr(lab.plan.client(2), family)}
    udp = wait_for(lambda: answered(lab, "client-1", ip, "udp"), "UDP answers too")
    assert udp["client_ip"] == addr(lab.plan.client(1), family)
    # The client's neighbour entry for the VIP (ARP or NDP) is the gateway's MAC.
    neigh = lab.exec("client-1", ["ip", f"-{family}", "neigh", "show", ip], check=True).stdout
    assert gateway_mac(lab) in neigh, neigh

    st = wait_for(
        lambda: (s := status(api, name)).get("healthyNodes") == 3 and s,
        "status: three healthy nodes",
    )
    assert st["ownerGateway"] == GATEWAY
    assert condition(st, "Announced")["status"] == "True"
    assert condition(st, "Healthy")["status"] == "True"
    # The operator's conditions survive the gateway's writes (separate field managers).
    assert condition(st, "Allocated")["status"] == "True"


@pytest.mark.parametrize("family", FAMILIES)
def test_arping_sees_exactly_one_mac_the_gateways_and_none_for_others(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    # ARP for IPv4, NDP (every Neighbor Advertisement, ndisc6 -m) for IPv6.
    name = named("gw-arp", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: answered(lab, "client-2", ip), "the VIP answers")
    _, macs = neighbour_macs(lab, "client-2", ip, 3, 4)
    assert macs == {gateway_mac(lab)}, macs
    # An address of the pool that no Service holds: nobody answers.
    free = str(ipaddress.ip_address(ip) + 20)
    rc, macs = neighbour_macs(lab, "client-2", free, 2, 2)
    assert rc != 0 and not macs, (rc, macs)


def test_ipv6_vip_through_ndp(lab: Lab, api: Api, gateway: Proc, services: list[str]) -> None:
    create(
        api,
        services,
        "gw-v6",
        ipFamilyPolicy="PreferDualStack",
        ipFamilies=["IPv6", "IPv4"],
        externalTrafficPolicy="Local",
    )
    ips = api.wait_ips("gw-v6", 2)
    v6 = next(i for i in ips if ":" in i)
    a = wait_for(lambda: answered(lab, "client-1", v6), "the IPv6 VIP answers")
    assert a["client_ip"] == str(lab.plan.client(1).ipv6)
    out = lab.exec("client-1", ["ndisc6", "-1", "-r", "2", v6, "eth0"]).stdout
    assert gateway_mac(lab).upper() in out.upper(), out


@pytest.mark.parametrize("family", FAMILIES)
def test_nodes_without_ready_local_endpoints_get_no_traffic(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-drain", family)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"}, "3 nodes")
    sources = [addr(lab.plan.client(1), family)]
    # node-3's pods: two not ready, and a third terminating but still serving (its /healthz
    # says 503: terminating endpoints do not count).
    extra = lab.add_pod("node-3")
    lab.set_pod_ready("echo-3-1", False)
    lab.set_pod_ready("echo-3-2", False)
    lab.terminate_pod(extra.name)
    try:
        wait_for(lambda: healthy_nodes(api, name) == {"node-1", "node-2"}, "node-3 out")
        st = status(api, name)
        node3 = next(n for n in st["nodes"] if n["node"] == "node-3")
        # The node agent's aggregate answer (or its healthCheckNodePort's 503) says why.
        assert not node3["healthy"] and "0 local endpoints" in node3["message"], node3
        seen = flows(lab, ip, sources, 41000, 40)
        assert None not in seen.values(), seen
        assert set(seen.values()) == {"node-1", "node-2"}, seen
    finally:
        lab.set_pod_ready("echo-3-1", True)
        lab.set_pod_ready("echo-3-2", True)
        lab.remove_pod(extra.name)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_failure_moves_only_that_nodes_flows(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-fail", family)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: len(healthy_nodes(api, name)) == 3, "three healthy nodes")
    sources = [addr(lab.plan.client(1), family)]
    before = flows(lab, ip, sources, 42000, 60)
    assert None not in before.values() and set(before.values()) == {
        "node-1",
        "node-2",
        "node-3",
    }, before
    lab.fail_node("node-2", stop_heartbeat=False)
    try:
        wait_for(lambda: "node-2" not in healthy_nodes(api, name), "node-2 out")
        after = flows(lab, ip, sources, 42000, 60)
    finally:
        lab.restore_node("node-2")
    assert None not in after.values(), after
    assert "node-2" not in after.values()
    moved = [f for f in before if before[f] != after[f]]
    assert moved and all(before[f] == "node-2" for f in moved), (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_client_ip_affinity_survives_a_change_of_the_node_set(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    # Local: the echo's node is the node the gateway chose.
    name = named("gw-aff", family)
    create(
        api,
        services,
        name,
        sessionAffinity="ClientIP",
        externalTrafficPolicy="Local",
        **family_spec(family),
    )
    ip = api.wait_ips(name)[0]
    wait_for(lambda: len(healthy_nodes(api, name)) == 3, "three healthy nodes")
    client = lab.plan.client(1)
    base = (client.ipv4 if family == 4 else client.ipv6) + 100
    sources = [str(base + k) for k in range(12)]
    plen = 32 if family == 4 else 128
    nodad = [] if family == 4 else ["nodad"]  # usable at once, no duplicate address detection
    for s in sources:
        argv = ["ip", "addr", "add", f"{s}/{plen}", "dev", "eth0", *nodad]
        lab.exec("client-1", argv, check=True)
    try:
        before = flows(lab, ip, sources, 43000, 3)
        # Every port of one client address: one node (the hash is of the address alone).
        for s in sources:
            assert len({before[f"{s}:{p}"] for p in range(43000, 43003)}) == 1, before
        lab.fail_node("node-3", stop_heartbeat=False)
        try:
            wait_for(lambda: "node-3" not in healthy_nodes(api, name), "node-3 out")
            after = flows(lab, ip, sources, 43000, 3)
        finally:
            lab.restore_node("node-3")
    finally:
        for s in sources:
            lab.exec("client-1", ["ip", "addr", "del", f"{s}/{plen}", "dev", "eth0"])
    # Clients whose node stays healthy keep it; node-3's move (to one node each).
    kept = [f for f in before if before[f] != "node-3"]
    assert kept and all(after[f] == before[f] for f in kept), (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_nat_mode_reaches_the_pod_through_the_node_port(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-nat", family)
    create(api, services, name, **family_spec(family))
    # Switched from direct server return to NAT while served.
    api.core.patch_namespaced_service(
        name, NS, {"metadata": {"annotations": {"portico.dev/forwarding-mode": "nat"}}}
    )
    ip = api.wait_ips(name)[0]
    wait_for(
        lambda: api.service(name).status.load_balancer.ingress[0].ip_mode == "Proxy",
        "ipMode Proxy: the client's address is not preserved",
    )
    # Until the gateway has taken the switch, the VIP still answers by direct server return.
    wait_for(
        lambda: ip in lab.exec(GATEWAY, ["nft", "list", "table", "inet", "portico-gw-nat"]).stdout,
        "the gateway's NAT table has the VIP",
    )
    # The NAT table comes first in the pass and the forwarding table's switch right after it
    # (a port handed to the IP stack must find its DNAT there): a connection in between still
    # went by direct server return. Once one is masqueraded, every later one is.
    client = addr(lab.plan.client(1), family)
    wait_for(
        lambda: (a := answered(lab, "client-1", ip)) and a["client_ip"] != client,
        "the VIP answers through a nodePort (masqueraded)",
    )
    # Masqueraded by the gateway: the pod sees the gateway's address, or a node's when the
    # node's rules sent the flow on to a pod elsewhere (Cluster).
    nodes = {addr(lab.host(n), family) for n in lab.node_names()}
    for _ in range(4):
        a = answered(lab, "client-1", ip)
        assert a and a["client_ip"] in {addr(lab.host(GATEWAY), family)} | nodes, a
    udp = wait_for(lambda: answered(lab, "client-1", ip, "udp"), "UDP through a nodePort too")
    assert udp["client_ip"] != addr(lab.plan.client(1), family)
    table = lab.exec(GATEWAY, ["nft", "list", "table", "inet", "portico-gw-nat"], check=True)
    assert ip in table.stdout
    st = status(api, name)
    assert condition(st, "Announced")["status"] == "True"


@pytest.mark.parametrize("family", FAMILIES)
def test_deleted_service_is_withdrawn(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-gone", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: answered(lab, "client-2", ip), "the VIP answers")
    api.core.delete_namespaced_service(name, NS)

    def unanswered() -> bool:
        rc, macs = neighbour_macs(lab, "client-2", ip, 1, 1)
        return rc != 0 and not macs

    wait_for(unanswered, "the gateway stops answering ARP / NDP for the VIP")
    # Nothing refers to the VIP any more but its flows' pins, which no rule reaches (no
    # dispatch element) and which expire with their timeout.
    out = lab.exec(GATEWAY, ["nft", "-j", "list", "table", "netdev", "portico-gw"], check=True)
    items = json.loads(out.stdout)["nftables"]
    kept = [i for i in items if not i.get("map", {}).get("name", "").startswith("flows")]
    assert ip not in json.dumps(kept)


def test_ipv6_only_local_service_is_served_and_its_health_port_counts_ipv6(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(
        api,
        services,
        "gw-v6only",
        ipFamilyPolicy="SingleStack",
        ipFamilies=["IPv6"],
        externalTrafficPolicy="Local",
    )
    v6 = api.wait_ips("gw-v6only")[0]
    assert ":" in v6
    a = wait_for(lambda: answered(lab, "client-1", v6), "the IPv6-only VIP answers")
    assert a["client_ip"] == str(lab.plan.client(1).ipv6)
    st = wait_for(
        lambda: (s := status(api, "gw-v6only")).get("healthyNodes") == 3 and s,
        "status: three healthy nodes",
    )
    assert condition(st, "Healthy")["status"] == "True"
    # kube-proxy's answer for an IPv6 Service, asked over the node's IPv4 address: its IPv6
    # endpoints (the lab runs two echo pods on each node).
    hcnp = api.service("gw-v6only").spec.health_check_node_port
    hz = http(lab, "client-1", str(lab.host("node-1").ipv4), hcnp)
    assert hz.get("status") == 200, hz
    assert json.loads(hz["body"])["localEndpoints"] == 2


def _blocked(lab: Lab, client: str, ip: str) -> bool:
    return answered(lab, client, ip) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_source_ranges_set_then_cleared_let_everyone_in_again(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int
) -> None:
    name = named("gw-ranges", family)
    one = f"{addr(lab.plan.client(1), family)}/{32 if family == 4 else 128}"
    create(api, services, name, loadBalancerSourceRanges=[one], **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: answered(lab, "client-1", ip), "the allowed client gets in")
    assert _blocked(lab, "client-2", ip)
    # The field removed (null in a patch, as `kubectl edit` sends when a field is deleted).
    api.core.patch_namespaced_service(name, NS, {"spec": {"loadBalancerSourceRanges": None}})
    assert not api.service(name).spec.load_balancer_source_ranges
    wait_for(lambda: answered(lab, "client-2", ip), "everyone gets in once the ranges are gone")
    assert not (api.lb(name)["spec"].get("sourceRanges") or [])
    # One node let client-2 in; the others apply the change in their own time.
    for node in lab.node_names():
        wait_for(
            lambda node=node: one.split("/")[0] not in _node_table(lab, node),
            f"{node} no longer filters by {one}",
        )


def _node_table(lab: Lab, node: str) -> str:
    return lab.exec(node, ["nft", "list", "table", "inet", "portico"], check=True).stdout


def test_source_ranges_are_read_as_kubernetes_reads_them(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    # Leading zeros, which the apiserver accepts: decimal, as kube-proxy reads them.
    c1 = str(lab.plan.client(1).ipv4)
    padded = ".".join(f"{int(o):03d}" for o in c1.split(".")) + "/32"
    create(api, services, "gw-zeros", loadBalancerSourceRanges=[padded])
    ip = api.wait_ips("gw-zeros")[0]
    wait_for(lambda: answered(lab, "client-1", ip), "the allowed client gets in")
    assert _blocked(lab, "client-2", ip)
    assert api.lb("gw-zeros")["spec"]["sourceRanges"] == [f"{c1}/32"]
    # A value Kubernetes cannot read never gets this far: the apiserver refuses it in the field
    # and in the legacy annotation alike (what the operator does if one does arrive — Valid=False,
    # a Warning Event, the last valid rules kept — is unit-tested: test_operator_source_ranges).


@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_client_ip_affinity_with_local_keeps_a_client_on_one_pod(
    lab: Lab, api: Api, gateway: Proc, services: list[str], family: int, beside: str
) -> None:
    name = suffixed("gw-pin", family, beside)
    create(
        api,
        services,
        name,
        sessionAffinity="ClientIP",
        externalTrafficPolicy="Local",
        **family_spec(family),
    )
    ip = api.wait_ips(name)[0]
    wait_for(lambda: len(healthy_nodes(api, name)) == 3, "three healthy nodes")
    first = wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers")
    got = [answered(lab, "client-1", ip) for _ in range(15)]
    # One client address: one node (the gateway hashes the address alone), one pod (pinned).
    assert None not in got, got
    assert {a["pod"] for a in got if a} == {first["pod"]}, [a and a["pod"] for a in got]


def probe_counts(lab: Lab) -> dict[tuple[str, str], float]:
    """The gateway's portico_gateway_probes_total by (kind, result)."""
    r = http(lab, GATEWAY, "127.0.0.1", GATEWAY_METRICS, "/metrics")
    assert r.get("status") == 200, r
    out = {}
    for m in re.finditer(
        r'^portico_gateway_probes_total\{kind="(\w+)",result="(\w+)"\} (\S+)$',
        r["body"],
        re.MULTILINE,
    ):
        out[(m[1], m[2])] = float(m[3])
    return out


def metrics_page(lab: Lab) -> dict[str, Any] | None:
    """The gateway's answer on its metrics port, once it serves one."""
    r = http(lab, GATEWAY, "127.0.0.1", GATEWAY_METRICS, "/metrics")
    return r if r.get("status") == 200 else None


def created_families(names: set[str]) -> set[str]:
    """The ``_created`` families of the counters (``_total``) and histograms in ``names``."""
    return {
        n
        for n in names
        if n.endswith("_created") and {n[: -len("_created")] + s for s in ("_total", "")} & names
    }


def test_the_gateway_serves_what_docs_metrics_lists(lab: Lab, gateway: Proc) -> None:
    """What portico-lbnode serves on --metrics-port, wherever in its code a metric is registered:
    exactly the gateway's sections of docs/metrics.md, with its build_info."""
    r = wait_for(lambda: metrics_page(lab), "the gateway serves its metrics", 30)
    served = set(re.findall(r"^# TYPE (\S+) ", r["body"], re.MULTILINE))
    # prometheus_client's <family>_created beside each counter and histogram (docs/metrics.md).
    assert served - created_families(served) == documented()["gateway"]
    build = re.findall(r"^portico_gateway_build_info\{(.*)\} 1\.0$", r["body"], re.MULTILINE)
    assert [dict(re.findall(r'(\w+)="([^"]*)"', labels)) for labels in build] == [
        {"version": package_version(), "python_version": platform.python_version()}
    ]


@pytest.mark.parametrize("beside", [KUBE_PROXY], indirect=True)
def test_beside_kube_proxy_the_gateway_asks_each_node_agent_once_on_its_own_port(
    lab: Lab, api: Api, gateway: Proc, services: list[str], beside: str
) -> None:
    create(api, services, "gw-agg", externalTrafficPolicy="Local")
    create(api, services, "gw-agg-cluster")
    api.wait_ips("gw-agg")
    api.wait_ips("gw-agg-cluster")
    wait_for(lambda: len(healthy_nodes(api, "gw-agg")) == 3, "three healthy nodes")
    wait_for(lambda: len(healthy_nodes(api, "gw-agg-cluster")) == 3, "three healthy nodes")
    for node in lab.node_names():
        # kube-proxy holds :10256 (the agent says so) ...
        report = api.custom.get_cluster_custom_object("portico.dev", "v1alpha1", "nodeagents", node)
        assert "10256" in ((report.get("status") or {}).get("healthPortConflicts") or {})
        # ... and the agent answers node health and its aggregate on its own port.
        ip = str(lab.host(node).ipv4)
        hz = http(lab, "client-1", ip, AGENT_PORT, "/healthz")
        assert hz.get("status") == 200 and json.loads(hz["body"])["healthy"] is True, hz
        agg = json.loads(http(lab, "client-1", ip, AGENT_PORT, "/portico/v1/services")["body"])
        assert agg["node"] == node and f"{NS}/gw-agg" in agg["services"], agg
    # The gateway asks each node once per interval for every Service (aggregate mode), never per
    # Service: no probe of a healthCheckNodePort or of kube-proxy's /healthz.
    before = probe_counts(lab)

    def answered(counts: dict[tuple[str, str], float]) -> float:
        """Aggregate probes answered, in full or "not modified" (the answer held still holds)."""
        return counts.get(("aggregate", "ok"), 0) + counts.get(("aggregate", "not_modified"), 0)

    wait_for(
        lambda: answered(probe_counts(lab)) >= answered(before) + 6,
        "two more rounds of aggregate probes",
    )
    after = probe_counts(lab)
    # Nothing changed meanwhile: the agents answered mostly "not modified", without a body.
    assert after.get(("aggregate", "not_modified"), 0) > before.get(
        ("aggregate", "not_modified"), 0
    )
    per_service = [k for k in after if k[0] != "aggregate" and after[k] != before.get(k, 0)]
    assert not per_service, (before, after)
    for name in ("gw-agg", "gw-agg-cluster"):
        messages = {n["node"]: n.get("message", "") for n in status(api, name)["nodes"]}
        assert all(m.startswith("node agent:") for m in messages.values()), messages

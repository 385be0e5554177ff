"""Operator → NodeRules → node agents → traffic: the whole node half of the data plane.

The operator and one agent per node run as processes of the lab (the agents in the node
namespaces, as a DaemonSet with hostNetwork would). Users create LoadBalancer Services; VIP
traffic reaches a node as the gateway will deliver it (here a static route in a client
namespace, ``VIP via <node>``), and the echo pods say which pod answered and which client
address they saw.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from portico_lab.lab import Lab
from portico_lab.procs import Proc, netns_argv

from .dataplane_harness import (
    AGENT_PORT,
    BESIDE,
    FAMILIES,
    KUBE_PROXY,
    KubeProxySwitch,
    addr,
    answered,
    attempts,
    beside_param,
    create,
    deleting_services,
    family_spec,
    http,
    kube_proxy_programmed,
    kube_proxy_switch,
    named,
    running_agents,
    running_operator,
)
from .netcheck import routed
from .operator_harness import NS, Api, OperatorProcess, wait_for

POOL = "dataplane"


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, POOL, 64, "op-dp") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab, "--verify-interval", "0.5") as procs:
        yield procs


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


@pytest.fixture(scope="module")
def switch(lab: Lab, agents: list[Proc]) -> Iterator[KubeProxySwitch]:
    with kube_proxy_switch(lab, agents) as s:
        yield s


@pytest.fixture()
def beside(request: pytest.FixtureRequest, switch: KubeProxySwitch) -> str:
    """Portico alone, or kube-proxy (nftables) beside it on every node."""
    return beside_param(request, switch)


def suffixed(name: str, family: int, beside: str) -> str:
    """A Service name unique per family and per kube-proxy beside or not."""
    return named(name, family) + ("-kp" if beside == KUBE_PROXY else "")


# ==============================================================================================
@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_local_service_answers_with_the_client_ip_and_serves_healthz(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int, beside: str
) -> None:
    # Beside kube-proxy, it holds the health port (either answers it the same way).
    name = suffixed("dp-local", family, beside)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    hcnp = api.service(name).spec.health_check_node_port
    client = lab.plan.client(1)
    with routed(lab, "client-1", ip, "node-2"):
        first = wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers through node-2")
        got = [first] + [answered(lab, "client-1", ip) for _ in range(5)]
        udp = wait_for(lambda: answered(lab, "client-1", ip, "udp"), "UDP answers too")
    assert {a["node"] for a in got if a} == {"node-2"}, "Local left the node"
    assert {a["client_ip"] for a in got if a} | {udp["client_ip"]} == {addr(client, family)}

    # The health ports, asked over the node's address of the Service's family.
    node2 = addr(lab.host("node-2"), family)
    hz = wait_for(
        lambda: (r := http(lab, "client-1", node2, hcnp)).get("status") == 200 and r,
        "healthCheckNodePort answers 200",
    )
    assert hz["headers"]["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert hz["headers"]["Content-Type"] == "application/json"
    assert json.loads(hz["body"]) == {
        "service": {"namespace": NS, "name": name},
        "localEndpoints": 2,
        "serviceProxyHealthy": True,
    }
    agg = json.loads(http(lab, "client-1", node2, AGENT_PORT, "/portico/v1/services")["body"])
    assert agg["rulesCurrent"] is True and agg["nodeEligible"] is True
    assert agg["services"][f"{NS}/{name}"]["localEndpoints"][f"IPv{family}"] == 2
    node_hz = http(lab, "client-1", node2, AGENT_PORT, "/healthz")
    assert node_hz["status"] == 200 and json.loads(node_hz["body"])["healthy"] is True

    # A long poll of the aggregate is held until the agent's next round, which the change to
    # Cluster makes: then it lists the Service with health check port 0 (in force, not Local).
    assert agg["allServices"] is True
    now = json.loads(http(lab, "client-1", node2, AGENT_PORT, "/portico/v1/services")["body"])
    gen = now["generation"]
    # Held up to 5 s (the agent's cap): the round after the change (operator, NodeRules, the
    # agent's apply) comes well within it on a loaded machine, where 1.5 s was not always.
    poll = f"/portico/v1/services?after={gen}&wait=5000"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(http, lab, "client-1", node2, AGENT_PORT, poll, 8.0)
        concurrent.futures.wait([held], timeout=0.5)
        assert not held.done(), "the long poll was answered before the agent's next round"
        api.core.patch_namespaced_service(name, NS, {"spec": {"externalTrafficPolicy": "Cluster"}})
        polled = json.loads(held.result(20)["body"])
    assert polled["generation"] > gen
    key = f"{NS}/{name}"
    wait_for(
        lambda: (
            json.loads(http(lab, "client-1", node2, AGENT_PORT, "/portico/v1/services")["body"])[
                "services"
            ]
            .get(key, {})
            .get("healthCheckNodePort")
            == 0
        ),
        "the Service listed as in force, Cluster",
    )

    # Cluster: the health port stops listening at once (refused, not 503).
    wait_for(
        lambda: http(lab, "client-1", node2, hcnp).get("error") == "refused",
        "the health port closed",
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_pod_not_ready_drains_healthz_and_rules(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int
) -> None:
    name = named("dp-drain", family)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    hcnp = api.service(name).spec.health_check_node_port
    node3 = addr(lab.host("node-3"), family)
    wait_for(lambda: http(lab, "client-1", node3, hcnp).get("status") == 200, "healthz 200")
    lab.set_pod_ready("echo-3-1", False)
    try:
        hz = wait_for(
            lambda: (
                (r := http(lab, "client-1", node3, hcnp))
                .get("headers", {})
                .get("X-Load-Balancing-Endpoint-Weight")
                == "1"
                and r
            ),
            "healthz counts one ready endpoint",
        )
        assert hz["status"] == 200
        with routed(lab, "client-1", ip, "node-3"):
            got = [answered(lab, "client-1", ip) for _ in range(6)]
        assert {a["pod"] for a in got if a} == {"echo-3-2"}, "traffic to a not-ready pod"
        lab.set_pod_ready("echo-3-2", False)
        hz = wait_for(
            lambda: (r := http(lab, "client-1", node3, hcnp)).get("status") == 503 and r,
            "healthz 503 without ready local endpoints",
        )
        assert json.loads(hz["body"])["localEndpoints"] == 0
    finally:
        lab.set_pod_ready("echo-3-1", True)
        lab.set_pod_ready("echo-3-2", True)


@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_cluster_service_reaches_other_nodes_and_masquerades_only_then(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int, beside: str
) -> None:
    name = suffixed("dp-cluster", family, beside)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    client = addr(lab.plan.client(1), family)
    node1 = addr(lab.host("node-1"), family)
    seen: dict[str, set[str]] = {}
    with routed(lab, "client-1", ip, "node-1"):
        wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers through node-1")
        for _ in range(40):
            a = answered(lab, "client-1", ip)
            if a:
                seen.setdefault(a["node"], set()).add(a["client_ip"])
            if len(seen) == 3:
                break
    assert set(seen) == {"node-1", "node-2", "node-3"}, seen
    assert seen["node-1"] == {client}, "a local endpoint saw a masqueraded client"
    assert seen["node-2"] == seen["node-3"] == {node1}, "other nodes must see the node's address"


@pytest.mark.parametrize("family", FAMILIES)
def test_deleted_service_stops_answering(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int
) -> None:
    name = named("dp-gone", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    with routed(lab, "client-1", ip, "node-1"):
        wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers")
        api.core.delete_namespaced_service(name, NS)
        wait_for(lambda: answered(lab, "client-1", ip) is None, "the VIP stops answering")
    shards = api.custom.list_cluster_custom_object("portico.dev", "v1alpha1", "noderules")
    keys = {k for o in shards["items"] for k in (o["spec"].get("services") or {})}
    assert f"{NS}/{name}" not in keys


# Requests in a loop, one line per request ("ok" or the error), until a stop file appears; bounded
# in count and time.
_LOOP = r"""
import os, socket, sys, time
host, stop, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
end = time.monotonic() + seconds
for _ in range(n):
    if os.path.exists(stop) or time.monotonic() > end:
        break
    try:
        s = socket.create_connection((host, 80), timeout=2)
        s.sendall(b"GET /probe HTTP/1.0\r\n\r\n"); data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        print("ok" if data.startswith(b"HTTP/1.") and b" 200 " in data[:16] else "bad", flush=True)
    except OSError as e:
        print(f"error {type(e).__name__}", flush=True)
    time.sleep(0.05)
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_flushed_table_and_agent_restart_keep_traffic(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int
) -> None:
    name = named("dp-keep", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    status = lab.workdir / "agents" / "node-2.status.json"
    out, stop = lab.workdir / f"{name}.loop", lab.workdir / f"{name}.stop"
    stop.unlink(missing_ok=True)
    with routed(lab, "client-1", ip, "node-2"):
        wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers")
        lab.exec("node-2", ["nft", "flush", "table", "inet", "portico"], check=True)
        wait_for(lambda: answered(lab, "client-1", ip), "the verifier restored the table")
        agent = next(p for p in agents if p.name.endswith("node-2"))
        argv = [sys.executable, "-S", "-c", _LOOP, ip, str(stop), "1200", "60"]
        with out.open("w") as sink:
            loop = subprocess.Popen(netns_argv(lab.netns_of("client-1"), argv), stdout=sink)
        try:

            def lines() -> list[str]:
                return out.read_text().splitlines() if out.exists() else []

            def answered_more(n: int) -> bool:
                got = lines()
                assert loop.poll() is None, f"the request loop ended early: {got[-5:]}"
                return got.count("ok") >= n

            wait_for(lambda: answered_more(5), "requests flow")
            stopped_at = time.time()
            agent.stop()
            # Stopped, its rules stay in force.
            before = lines().count("ok")
            wait_for(lambda: answered_more(before + 5), "requests flow with the agent stopped")
            agent.start()

            def applied_since_restart() -> bool:
                try:
                    return json.loads(status.read_text()).get("applied", 0) > stopped_at
                except (OSError, ValueError):
                    return False  # not there yet, or being written

            wait_for(applied_since_restart, "the restarted agent applied its rules", 30)
            before = lines().count("ok")
            wait_for(lambda: answered_more(before + 5), "requests flow after the restart")
        finally:
            stop.touch()
            loop.wait(timeout=10)
        got = lines()
        assert got and set(got) == {"ok"}, f"{len(got) - got.count('ok')} of {len(got)} failed"
        assert json.loads(status.read_text())["error"] is None


# A client that keeps its source port (as DNS resolvers and games do): each datagram from the
# same port, the answering pod of each.
_FIXED_PORT = r"""
import json, socket, sys, time
host, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
six = ":" in host
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if six else "0.0.0.0", sport)); s.settimeout(1.5)
out = []
for _ in range(n):
    s.sendto(b"hello", (host, 80))
    try:
        out.append(json.loads(s.recvfrom(65535)[0])["pod"])
    except (socket.timeout, TimeoutError):
        out.append(None)
print(json.dumps(out))
"""


def fixed_port_pods(lab: Lab, ip: str, sport: int, n: int) -> list[str | None]:
    res = lab.exec("client-1", [sys.executable, "-S", "-c", _FIXED_PORT, ip, str(sport), str(n)])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_client_with_a_fixed_port_follows_an_endpoint_change(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int
) -> None:
    name = named("dp-udp", family)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    with routed(lab, "client-1", ip, "node-1"):
        wait_for(lambda: answered(lab, "client-1", ip, "udp"), "UDP answers through node-1")
        first = fixed_port_pods(lab, ip, 40053, 3)
        assert len(set(first)) == 1 and first[0] in ("echo-1-1", "echo-1-2"), first
        pinned = first[0]
        other = "echo-1-2" if pinned == "echo-1-1" else "echo-1-1"
        # The pinned pod stops being ready; its process still answers (the lab's pods do), so
        # only a stale conntrack entry could keep the client on it.
        lab.set_pod_ready(pinned, False)
        try:
            wait_for(
                lambda: fixed_port_pods(lab, ip, 40053, 1) == [other],
                f"the same client port reaches {other}",
                timeout=30,
            )
            assert set(fixed_port_pods(lab, ip, 40053, 3)) == {other}
        finally:
            lab.set_pod_ready(pinned, True)


@pytest.mark.parametrize("family", FAMILIES)
def test_pods_reach_a_vip_also_back_to_themselves(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int
) -> None:
    name = named("dp-hairpin", family)
    create(api, services, name, **family_spec(family))
    ip = api.wait_ips(name)[0]
    me = addr(lab.pod("echo-1-1"), family)
    node1 = addr(lab.host("node-1"), family)
    bridge = lab.exec("node-1", ["bridge", "-d", "link", "show"], check=True).stdout
    assert "hairpin on" in bridge, "the lab must set hairpin mode as the kubelet does"
    seen: dict[str, str] = {}
    wait_for(lambda: answered(lab, "echo-1-1", ip), "a pod reaches the VIP")
    for _ in range(60):
        a = answered(lab, "echo-1-1", ip)
        if a:
            seen[a["pod"]] = a["client_ip"]
        if "echo-1-1" in seen and "echo-1-2" in seen:
            break
    # Back to itself: masqueraded (else the reply would bypass the DNAT); to its neighbour on
    # the same node: its own address; to other nodes: the node's.
    assert "echo-1-1" in seen and "echo-1-2" in seen, seen
    assert seen["echo-1-2"] == me
    assert seen["echo-1-1"] != me
    assert {v for k, v in seen.items() if not k.startswith("echo-1-")} <= {node1}


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {}
    )


def test_programmed_names_the_node_whose_agent_lags(
    lab: Lab, api: Api, agents: list[Proc], services: list[str]
) -> None:
    create(api, services, "dp-prog")
    api.wait_ips("dp-prog")
    wait_for(
        lambda: _condition(api.lb("dp-prog"), "Programmed").get("status") == "True",
        "Programmed True once every node applied",
    )
    reports = api.custom.list_cluster_custom_object("portico.dev", "v1alpha1", "nodeagents")
    by_node = {o["metadata"]["name"]: o for o in reports["items"]}
    assert set(by_node) >= set(lab.node_names())
    for node in lab.node_names():
        assert _condition(by_node[node], "Programmed")["status"] == "True"
        assert by_node[node]["status"]["services"] >= 1
    agent3 = next(p for p in agents if p.name.endswith("node-3"))
    agent3.stop()
    try:
        lab.set_pod_ready("echo-1-1", False)  # an endpoint change node-3 cannot apply now
        # The condition names every node not yet programmed: under load node-1 or node-2 may
        # show in a first False too (their apply came later than the operator's 2 s grace), so
        # wait for the one that names node-3 alone.
        lagging = wait_for(
            lambda: (
                (c := _condition(api.lb("dp-prog"), "Programmed")).get("status") == "False"
                and "node-3" in c["message"]
                and "node-1" not in c["message"]
                and "node-2" not in c["message"]
                and c
            ),
            "Programmed False, naming node-3 alone, while node-3's agent is down",
            30,
        )
        assert lagging["reason"] == "NodesLagging"
    finally:
        lab.set_pod_ready("echo-1-1", True)
        agent3.start()
    wait_for(
        lambda: _condition(api.lb("dp-prog"), "Programmed").get("status") == "True",
        "Programmed True again once node-3 caught up",
    )


HOLDER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("held", flush=True)
deadline = time.time() + 120  # bounded, whatever happens to the test
s.settimeout(0.5)
while time.time() < deadline:
    try:
        c, _ = s.accept()
    except TimeoutError:
        continue
    c.settimeout(2); c.recv(4096)  # the request first: closing with it unread sends a reset
    c.sendall(b"HTTP/1.1 418 I'm a teapot\\r\\nContent-Length: 0\\r\\n\\r\\n"); c.close()
"""


def test_a_health_port_another_program_holds_is_left_to_it_reported_and_taken_once_free(
    lab: Lab, api: Api, agents: list[Proc], services: list[str]
) -> None:
    # kube-proxy, where it runs, holds every healthCheckNodePort: here a stand-in on node-3.
    port = 32111
    holder = subprocess.Popen(
        netns_argv(lab.netns_of("node-3"), [sys.executable, "-c", HOLDER, str(port)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        create(api, services, "dp-held", externalTrafficPolicy="Local", healthCheckNodePort=port)
        api.wait_ips("dp-held")
        node3, node2 = str(lab.host("node-3").ipv4), str(lab.host("node-2").ipv4)
        wait_for(lambda: http(lab, "client-1", node2, port).get("status") == 200, "node-2 serves")

        def reported() -> Any:
            agent = api.custom.get_cluster_custom_object(
                "portico.dev", "v1alpha1", "nodeagents", "node-3"
            )
            return (agent.get("status") or {}).get("healthPortConflicts", {}).get(str(port))

        why = wait_for(reported, "node-3's NodeAgent names the held port")
        assert "in use" in why.lower()
        assert http(lab, "client-1", node3, port).get("status") == 418  # left to its holder
    finally:
        holder.kill()
        holder.wait()
    # Freed: the agent takes it at its next change (any Service's).
    create(api, services, "dp-held-2")
    ok = wait_for(
        lambda: (r := http(lab, "client-1", node3, port)).get("status") == 200 and r,
        "node-3 serves the port once free",
    )
    assert json.loads(ok["body"])["service"] == {"namespace": NS, "name": "dp-held"}
    wait_for(lambda: reported() is None, "the conflict is no longer reported")


@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_pods_and_the_node_reach_a_local_vip_whose_endpoints_are_elsewhere(
    lab: Lab, api: Api, agents: list[Proc], services: list[str], family: int, beside: str
) -> None:
    # kube-proxy's short-circuit: traffic that starts inside the cluster is not external, so
    # externalTrafficPolicy does not apply to it: it goes to the endpoints anywhere, with the
    # pod's own address. Only echo-2-1 (on node-2) backs this Service.
    name = suffixed("dp-short", family, beside)
    label = {"portico-test": name}
    api.core.patch_namespaced_pod("echo-2-1", NS, {"metadata": {"labels": label}})
    try:
        create(
            api,
            services,
            name,
            selector=label,
            externalTrafficPolicy="Local",
            ipFamilyPolicy="SingleStack",
            ipFamilies=[f"IPv{family}"],
        )
        ip = api.wait_ips(name)[0]
        pod = lab.pod("echo-1-1")
        pod_ip = str(pod.ipv4 if family == 4 else pod.ipv6)
        a = wait_for(lambda: answered(lab, "echo-1-1", ip), "a pod on node-1 reaches the VIP")
        assert (a["pod"], a["client_ip"]) == ("echo-2-1", pod_ip)
        b = wait_for(lambda: answered(lab, "node-1", ip), "node-1 itself reaches the VIP")
        assert b["pod"] == "echo-2-1"
        # a pod that backs the Service reaching itself through the VIP
        c = wait_for(lambda: answered(lab, "echo-2-1", ip), "the backend reaches itself")
        assert c["pod"] == "echo-2-1"
        # from outside, through node-1 (no local endpoint): nothing, as Local says
        with routed(lab, "client-1", ip, "node-1"):
            assert answered(lab, "client-1", ip) is None
        with routed(lab, "client-1", ip, "node-2"):
            ext = wait_for(lambda: answered(lab, "client-1", ip), "through node-2 it answers")
            host = lab.plan.client(1)
            assert ext["client_ip"] == str(host.ipv4 if family == 4 else host.ipv6)
    finally:
        api.core.patch_namespaced_pod(
            "echo-2-1", NS, {"metadata": {"labels": {"portico-test": None}}}
        )


def no_endpoint_verdict(lab: Lab, node: str, vip: str) -> str | None:
    """What ``node``'s Portico rules do with ``vip`` for want of endpoints (a drop, or a
    reject through reject-chain), or None while it has endpoints there."""
    six = ":" in vip
    out = lab.exec(node, ["nft", "list", "map", "inet", "portico", f"noendpoints{6 if six else 4}"])
    for line in out.stdout.replace(",", "\n").splitlines():
        if f"{vip} . tcp . 80 :" in line:
            return line.split(":")[-1].strip().rstrip("}").strip()
    return None


@contextmanager
def labelled(api: Api, pods: list[str], label: dict[str, str]) -> Iterator[None]:
    """The pods carry ``label`` (a Service's selector) until the block ends."""
    try:
        for pod in pods:
            api.core.patch_namespaced_pod(pod, NS, {"metadata": {"labels": label}})
        yield
    finally:
        for pod in pods:
            unlabel(api, pod, label)


def unlabel(api: Api, pod: str, label: dict[str, str]) -> None:
    api.core.patch_namespaced_pod(pod, NS, {"metadata": {"labels": dict.fromkeys(label)}})


@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_service_scaled_to_zero_refuses_every_request(
    lab: Lab,
    api: Api,
    switch: KubeProxySwitch,
    services: list[str],
    family: int,
    beside: str,
) -> None:
    # Its pods, echo-2-1 and echo-3-1, are chosen by a label that is then taken off (their
    # processes keep running, as a scaled-down pod's may for its grace period: only rules
    # could still send traffic there). Asked through node-1, from outside and from a pod there.
    # Beside kube-proxy, node-1's kube-proxy is a sync behind meanwhile; it answered through
    # its stale rules once Portico's said "refuse" (the filter that refuses knows the VIP, and
    # kube-proxy's DNAT, which ran after Portico's NAT had done nothing, had changed it).
    name = suffixed("dp-zero", family, beside)
    label = {"portico-test": name}
    pods = ["echo-2-1", "echo-3-1"]
    with labelled(api, pods, label):
        create(api, services, name, selector=label, **family_spec(family))
        ip = api.wait_ips(name)[0]
        with routed(lab, "client-1", ip, "node-1"):
            wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers through node-1")
            wait_for(lambda: answered(lab, "echo-1-2", ip), "a pod on node-1 reaches the VIP")
            if beside == KUBE_PROXY:
                wait_for(lambda: kube_proxy_programmed(lab, "node-1", ip), "kube-proxy has it")
            with switch.behind("node-1"):
                for pod in pods:
                    unlabel(api, pod, label)
                wait_for(
                    lambda: no_endpoint_verdict(lab, "node-1", ip),
                    "node-1's rules have no endpoint for the VIP",
                )
                outside = attempts(lab, "client-1", ip, 15)
                inside = attempts(lab, "echo-1-2", ip, 15)
    assert (outside, inside) == (["refused"] * 15, ["refused"] * 15)


@pytest.mark.parametrize("beside", BESIDE, indirect=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_client_pinned_by_client_ip_is_sent_only_where_portico_sends_it(
    lab: Lab,
    api: Api,
    switch: KubeProxySwitch,
    services: list[str],
    family: int,
    beside: str,
) -> None:
    # ClientIP affinity, externalTrafficPolicy Local, over echo-1-1 and echo-1-2 (node-1) and
    # echo-2-1: a client through node-1 is pinned to one of node-1's pods. Then both leave the
    # endpoints: node-1 has no local endpoint and drops the client's traffic (the gateway moves
    # the client to another node). Beside kube-proxy a sync behind, that traffic was answered by
    # kube-proxy's own pick with its own pins, not Portico's: how a pinned client reached
    # another pod (reported: 1 of 15 requests from one client).
    name = suffixed("dp-pin", family, beside)
    label = {"portico-test": name}
    pods = ["echo-1-1", "echo-1-2", "echo-2-1"]
    with labelled(api, pods, label):
        create(
            api,
            services,
            name,
            selector=label,
            sessionAffinity="ClientIP",
            externalTrafficPolicy="Local",
            **family_spec(family),
        )
        ip = api.wait_ips(name)[0]
        with routed(lab, "client-1", ip, "node-1"):
            first = wait_for(lambda: answered(lab, "client-1", ip), "the VIP answers via node-1")
            pinned = [answered(lab, "client-1", ip) for _ in range(15)]
            assert {a and a["pod"] for a in pinned} == {first["pod"]}, pinned
            if beside == KUBE_PROXY:
                wait_for(lambda: kube_proxy_programmed(lab, "node-1", ip), "kube-proxy has it")
            with switch.behind("node-1"):
                for pod in pods[:2]:
                    unlabel(api, pod, label)
                wait_for(
                    lambda: no_endpoint_verdict(lab, "node-1", ip) == "drop",
                    "node-1's rules have no local endpoint for the VIP",
                )
                got = attempts(lab, "client-1", ip, 15)
    assert got == ["timeout"] * 15, got

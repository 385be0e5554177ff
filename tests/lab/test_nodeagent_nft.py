"""The node agent's nftables rules in a real node namespace, with real traffic.

VIP traffic reaches a node the way the gateway will deliver it (the packet unchanged, to the
node's MAC): here through a static route in a client namespace, ``VIP via <node LAN IP>``. The
pods are the lab's echo servers, which report the client address they saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from portico_common.model import Endpoint, LBService, NodeInfo, ServicePort
from portico_lab.lab import Lab
from portico_lab.procs import netns_argv
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import document_of, replace_table
from portico_nodeagent.rulesindex import index_rules
from portico_operator.slices import endpoints_from_slices

from .netcheck import request, routed

DEFAULT_PODS = {f"echo-{n}-{m}" for n in (1, 2, 3) for m in (1, 2)}
AGENT = [sys.executable, "-m", "portico_nodeagent"]

# A client that reports what happened instead of raising: an answer, "refused" or "timeout",
# and how long it took.
_PROBE = r"""
import json, socket, sys, time
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
t0 = time.monotonic()
out = {}
try:
    if proto == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.connect((host, port)); s.send(b"hello"); out["answer"] = json.loads(s.recv(65535))
    else:
        s = socket.create_connection((host, port), timeout=timeout)
        s.sendall(b"hello\n"); out["answer"] = json.loads(s.makefile().readline())
except ConnectionRefusedError:
    out["error"] = "refused"
except (socket.timeout, TimeoutError):
    out["error"] = "timeout"
out["seconds"] = time.monotonic() - t0
print(json.dumps(out))
"""


def probe(lab: Lab, where: str, host: str, port: int, proto: str = "tcp", timeout: float = 1.5):
    res = lab.exec(
        where, [sys.executable, "-S", "-c", _PROBE, proto, host, str(port), str(timeout)]
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def slices(lab: Lab) -> list[dict[str, Any]]:
    return lab.wait_endpoints(DEFAULT_PODS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nodeagent")


@pytest.fixture(autouse=True, scope="module")
def _cleanup_tables(lab: Lab) -> Iterator[None]:
    yield
    for node in lab.node_names():
        lab.exec(node, [*AGENT, "--cleanup"])


def vip(lab: Lab, k: int, family: int = 4) -> str:
    # From the top of the slot's VIP range, far from what a VIPPool test hands out first.
    rng = lab.plan.vip_range_v4 if family == 4 else lab.plan.vip_range_v6
    return str(rng.network_address + rng.num_addresses - 16 - k)


def echo_service(slices: list[dict[str, Any]], name: str, vips: tuple[str, ...], **kw: Any):
    eps = endpoints_from_slices(slices)
    only = kw.pop("only", None)
    if only is not None:
        eps = tuple(e for e in eps if e.node in only)
    ports = kw.pop(
        "ports",
        (
            ServicePort("http", "TCP", 80, None, "http"),
            ServicePort("udp", "UDP", 80, None, "udp"),
        ),
    )
    return LBService("default", name, vips, ports, eps, **kw)


def node_info(lab: Lab, node: str) -> NodeInfo:
    host = lab.host(node)
    idx = int(node.rsplit("-", 1)[1])
    zone = "zone-a" if idx % 2 else "zone-b"
    return NodeInfo(node, zone, (str(host.ipv4), str(host.ipv6)))


def apply_once(lab: Lab, node: str, doc: dict[str, Any], workdir: Path) -> dict[str, Any]:
    rules = workdir / f"{node}.rules.json"
    status = workdir / f"{node}.status.json"
    rules.write_text(json.dumps(doc))
    res = lab.exec(node, [*AGENT, "--rules", str(rules), "--once", "--status", str(status)])
    assert res.returncode == 0, res.stderr
    # whatever was there before, the kernel now holds exactly the render
    assert kernel_index(lab, node).differences(index_rules(doc)) == []
    return json.loads(status.read_text())


def kernel_index(lab: Lab, node: str):
    res = lab.exec(node, ["nft", "-j", "list", "table", "inet", "portico"], check=True)
    return index_rules(json.loads(res.stdout))


def answers(lab: Lab, client: str, addr: str, n: int, proto: str = "http") -> list[dict]:
    return [request(lab, client, addr, 80, proto)["answer"] for _ in range(n)]


def _pods_seen(lab: Lab, addr: str, want: set[str], key: str = "pod", most: int = 60) -> set[str]:
    """What ``key`` of client-1's answers showed, asking until ``want`` was seen or ``most``
    requests: random endpoint picks reach every endpoint, but not within a fixed few (both of
    two pods in 12: 1 miss in 2,000; in 60: 1 in 10^17)."""
    seen: set[str] = set()
    for _ in range(most):
        seen.add(request(lab, "client-1", addr, 80)["answer"][key])
        if want <= seen:
            break
    return seen


# ==============================================================================================
def test_rules_list_back_as_rendered_and_reapply_changes_nothing(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    svc = echo_service(
        slices,
        "agent-a",
        (vip(lab, 1), vip(lab, 1, 6)),
        session_affinity="ClientIP",
        source_ranges=("198.18.0.0/15", "fd00::/8"),
    )
    # and one without affinity (the flat maps), with NAT mode's nodePort too
    flat = echo_service(slices, "agent-a-flat", (vip(lab, 11), vip(lab, 11, 6)))
    flat = replace(
        flat,
        forwarding_mode="NAT",
        ports=tuple(replace(p, node_port=31180 + i) for i, p in enumerate(flat.ports)),
    )
    doc = render_node_rules([svc, flat], node_info(lab, "node-1"))
    first = apply_once(lab, "node-1", doc, workdir)
    assert first["error"] is None and first["commands"] > 0
    assert kernel_index(lab, "node-1").differences(index_rules(doc)) == []
    again = apply_once(lab, "node-1", doc, workdir)  # a restart: nothing to change
    assert (again["mode"], again["commands"]) == ("none", 0)
    # a full replace made from the index alone (the agent's fallback) builds the same table
    replacement = workdir / "replace.json"
    replacement.write_text(json.dumps(replace_table(document_of(index_rules(doc)))))
    lab.exec("node-1", ["nft", "-j", "-f", str(replacement)], check=True)
    assert kernel_index(lab, "node-1").differences(index_rules(doc)) == []
    # Portico touches no other table
    tables = lab.exec("node-1", ["nft", "-j", "list", "tables"], check=True).stdout
    ours = [t["table"] for t in json.loads(tables)["nftables"] if "table" in t]
    assert [(t["family"], t["name"]) for t in ours] == [("inet", "portico")]


def test_local_policy_preserves_the_client_ip_and_stays_on_the_node(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    v4, v6 = vip(lab, 2), vip(lab, 2, 6)
    svc = echo_service(slices, "agent-local", (v4, v6), external_traffic_policy="Local")
    apply_once(lab, "node-2", render_node_rules([svc], node_info(lab, "node-2")), workdir)
    client = lab.plan.client(1)
    with routed(lab, "client-1", v4, "node-2"), routed(lab, "client-1", v6, "node-2"):
        got = answers(lab, "client-1", v4, 8) + answers(lab, "client-1", v4, 4, "udp")
        got6 = answers(lab, "client-1", v6, 4)
    assert {a["node"] for a in got + got6} == {"node-2"}
    assert {a["pod"] for a in got} <= {"echo-2-1", "echo-2-2"}
    assert {a["client_ip"] for a in got} == {str(client.ipv4)}
    assert {a["client_ip"] for a in got6} == {str(client.ipv6)}


def test_local_policy_without_local_endpoints_drops(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    addr = vip(lab, 3)
    svc = echo_service(slices, "agent-local-none", (addr,), external_traffic_policy="Local")
    elsewhere = tuple(e for e in svc.endpoints if e.node != "node-3")
    node3 = node_info(lab, "node-3")
    with routed(lab, "client-1", addr, "node-3"):
        apply_once(lab, "node-3", render_node_rules([svc], node3), workdir)
        assert probe(lab, "client-1", addr, 80)["answer"]["node"] == "node-3"
        gone = LBService(**{**svc.__dict__, "endpoints": elsewhere})
        apply_once(lab, "node-3", render_node_rules([gone], node3), workdir)
        for proto in ("tcp", "udp"):
            assert probe(lab, "client-1", addr, 80, proto, timeout=1)["error"] == "timeout"


def test_cluster_policy_masquerades_only_toward_other_nodes(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    remote, local = vip(lab, 4), vip(lab, 5)
    svcs = [
        echo_service(slices, "agent-remote", (remote,), only={"node-2"}),
        echo_service(slices, "agent-here", (local,), only={"node-1"}),
    ]
    apply_once(lab, "node-1", render_node_rules(svcs, node_info(lab, "node-1")), workdir)
    client, node1 = lab.plan.client(2), lab.plan.node(1)
    with routed(lab, "client-2", remote, "node-1"), routed(lab, "client-2", local, "node-1"):
        far = answers(lab, "client-2", remote, 4) + answers(lab, "client-2", remote, 2, "udp")
        near = answers(lab, "client-2", local, 4) + answers(lab, "client-2", local, 2, "udp")
    assert {a["node"] for a in far} == {"node-2"}
    assert {a["client_ip"] for a in far} == {str(node1.ipv4)}  # masqueraded to node-1
    assert {a["node"] for a in near} == {"node-1"}
    assert {a["client_ip"] for a in near} == {str(client.ipv4)}  # not masqueraded


def test_no_endpoints_rejects_fast(lab: Lab, workdir: Path) -> None:
    addrs = (vip(lab, 6), vip(lab, 6, 6))
    svc = LBService(
        "default",
        "agent-empty",
        addrs,
        (ServicePort("tcp", "TCP", 80, None, 8080), ServicePort("udp", "UDP", 80, None, 8080)),
    )
    apply_once(lab, "node-1", render_node_rules([svc], node_info(lab, "node-1")), workdir)
    for addr in addrs:
        with routed(lab, "client-1", addr, "node-1"):
            for proto in ("tcp", "udp", "udp"):  # twice: the first ICMP error is not the last
                got = probe(lab, "client-1", addr, 80, proto, timeout=3)
                # Well under the SYN's 1 s retransmission (what a lost or late reject costs);
                # 0.5 s was tight on a loaded machine.
                assert got.get("error") == "refused" and got["seconds"] < 0.9, (addr, proto, got)


def test_source_ranges_allow_and_deny(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    addr = vip(lab, 7)
    allowed = lab.plan.client(1).ipv4
    svc = echo_service(
        slices, "agent-fw", (addr,), source_ranges=(f"{allowed}/32",), only={"node-1"}
    )
    apply_once(lab, "node-1", render_node_rules([svc], node_info(lab, "node-1")), workdir)
    with routed(lab, "client-1", addr, "node-1"), routed(lab, "client-2", addr, "node-1"):
        for proto in ("tcp", "udp"):
            ok = probe(lab, "client-1", addr, 80, proto)
            assert ok["answer"]["client_ip"] == str(allowed)
            assert probe(lab, "client-2", addr, 80, proto, timeout=1)["error"] == "timeout"


def test_client_ip_affinity_pins_then_releases(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    addr = vip(lab, 8)
    svc = echo_service(
        slices, "agent-aff", (addr,), session_affinity="ClientIP", session_affinity_timeout=2
    )
    doc = render_node_rules([svc], node_info(lab, "node-1"))
    apply_once(lab, "node-1", doc, workdir)
    sets = [c["add"]["set"]["name"] for c in doc["nftables"] if "set" in c["add"]]
    client = str(lab.plan.client(1).ipv4)

    def pinned() -> list[str]:
        out = []
        for name in sets:
            res = lab.exec("node-1", ["nft", "-j", "list", "set", "inet", "portico", name])
            for item in json.loads(res.stdout)["nftables"]:
                for e in (item.get("set") or {}).get("elem") or []:
                    out.append(e["elem"]["val"] if isinstance(e, dict) else e)
        return out

    with routed(lab, "client-1", addr, "node-1"):
        got = answers(lab, "client-1", addr, 10)
        assert len({a["pod"] for a in got}) == 1  # 6 pods, 10 requests: pinned
        assert pinned() == [client]
        deadline = time.monotonic() + 6
        while pinned() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pinned() == []  # released after the timeout


def test_running_agent_changes_elements_and_restores_a_flushed_table(
    lab: Lab, slices: list[dict[str, Any]], workdir: Path
) -> None:
    addr = vip(lab, 9)
    node = node_info(lab, "node-1")
    rules, status = workdir / "run.rules.json", workdir / "run.status.json"
    both = echo_service(slices, "agent-run", (addr,), only={"node-1"})
    rules.write_text(json.dumps(render_node_rules([both], node)))
    status.unlink(missing_ok=True)
    argv = [*AGENT, "--rules", str(rules), "--status", str(status), "--verify-interval", "0.3"]
    proc = subprocess.Popen(netns_argv(lab.netns_of("node-1"), argv), stderr=subprocess.PIPE)

    def wait_status(pred: Any, what: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = json.loads(status.read_text())
                if pred(st):
                    return st
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent status never showed {what}")

    try:
        with routed(lab, "client-1", addr, "node-1"):
            wait_status(lambda s: s.get("hash"), "a first apply")
            both_pods = {"echo-1-1", "echo-1-2"}
            assert _pods_seen(lab, addr, both_pods) == both_pods
            # One endpoint goes: a small transaction, not a reload.
            keep = str(lab.plan.pod(1, 1).ipv4)
            eps = tuple(e for e in both.endpoints if e.address == keep or ":" in e.address)
            one = LBService(**{**both.__dict__, "endpoints": eps})
            old_hash = json.loads(status.read_text())["hash"]
            rules.write_text(json.dumps(render_node_rules([one], node)))
            st = wait_status(lambda s: s.get("hash") != old_hash, "the second apply")
            assert st["mode"] == "incremental" and st["commands"] < 12
            assert {a["pod"] for a in answers(lab, "client-1", addr, 6)} == {"echo-1-1"}

            # Someone flushes the table: the agent puts it back.
            lab.exec("node-1", ["nft", "flush", "table", "inet", "portico"], check=True)
            wait_status(lambda s: s.get("restores", 0) >= 1, "a restore", timeout=5)
            assert kernel_index(lab, "node-1").same_as(index_rules(render_node_rules([one], node)))
            assert {a["pod"] for a in answers(lab, "client-1", addr, 3)} == {"echo-1-1"}

            # Stopping the agent leaves the rules in force; a new one changes nothing.
            proc.terminate()
            assert proc.wait(timeout=10) == 0
            assert {a["pod"] for a in answers(lab, "client-1", addr, 2)} == {"echo-1-1"}
            again = apply_once(lab, "node-1", render_node_rules([one], node), workdir)
            assert (again["mode"], again["commands"]) == ("none", 0)

            # --cleanup removes the table and nothing else.
            res = lab.exec("node-1", [*AGENT, "--cleanup"])
            assert res.returncode == 0, res.stderr
            listing = lab.exec("node-1", ["nft", "-j", "list", "tables"], check=True).stdout
            assert not [t for t in json.loads(listing)["nftables"] if "table" in t]
            assert probe(lab, "client-1", addr, 80, timeout=1).get("answer") is None
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_traffic_distribution_hints_keep_traffic_in_the_zone(lab: Lab, workdir: Path) -> None:
    """kube-controller-manager writes zone hints for trafficDistribution: PreferClose; the rules
    of a zone-a node then send only to zone-a pods (node-1's and node-3's)."""
    name = "agent-zonal"
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"app": "echo"},
            "trafficDistribution": "PreferClose",
            "ports": [
                {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                {"name": "udp", "port": 8080, "targetPort": "udp", "protocol": "UDP"},
            ],
        },
    }
    core = client.CoreV1Api(lab.api)
    disco = client.DiscoveryV1Api(lab.api)
    core.create_namespaced_service("default", body)
    try:
        deadline = time.monotonic() + 30
        eps: tuple[Endpoint, ...] = ()
        while time.monotonic() < deadline:
            items = disco.list_namespaced_endpoint_slice(
                "default", label_selector=f"kubernetes.io/service-name={name}"
            ).items
            got = [lab.api.sanitize_for_serialization(s) for s in items]
            eps = endpoints_from_slices(got)
            if len(eps) >= 6 and all(e.for_zones for e in eps):
                break
            time.sleep(0.2)
        assert len(eps) >= 6 and all(e.for_zones == (e.zone,) for e in eps), eps
        addr = vip(lab, 10)
        svc = LBService(
            "default",
            name,
            (addr,),
            (ServicePort("http", "TCP", 80, None, "http"),),
            eps,
            traffic_distribution="PreferClose",
        )
        apply_once(lab, "node-1", render_node_rules([svc], node_info(lab, "node-1")), workdir)
        with routed(lab, "client-1", addr, "node-1"):
            got = answers(lab, "client-1", addr, 16)
            nodes = _pods_seen(lab, addr, {"node-1", "node-3"}, key="node")
        assert {a["node"] for a in got} <= {"node-1", "node-3"}
        assert nodes == {"node-1", "node-3"}  # over 4 pods on 2 nodes
        for a in got:  # masqueraded only when the pod is on node-3
            want = lab.plan.node(1).ipv4 if a["node"] == "node-3" else lab.plan.client(1).ipv4
            assert a["client_ip"] == str(want)
    finally:
        core.delete_namespaced_service(name, "default")


def test_endpoint_fields_come_from_the_lab_slices(slices: list[dict[str, Any]]) -> None:
    eps = endpoints_from_slices(slices)
    assert {e.node for e in eps} == {"node-1", "node-2", "node-3"}
    by_family = {
        4: [e for e in eps if ":" not in e.address],
        6: [e for e in eps if ":" in e.address],
    }
    assert len(by_family[4]) == len(by_family[6]) == 6
    assert all(
        isinstance(e, Endpoint) and {p.name for p in e.ports} == {"http", "udp"} for e in eps
    )

"""The lab is real: a real apiserver allocates ports, a real controller manager writes
EndpointSlices, and real packets cross real namespaces."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest
from kubernetes import client
from portico_lab.lab import Lab

from .netcheck import request

NS = "default"


def slices_by_pod(lab: Lab, service: str = "echo") -> dict[str, dict[str, Any]]:
    disco = client.DiscoveryV1Api(lab.api)
    out = {}
    for s in disco.list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={service}"
    ).items:
        for ep in s.endpoints or []:
            out.setdefault(ep.target_ref.name, {"family": s.address_type, "ep": ep})
    return out


def wait_for(pred: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_control_plane_is_the_pinned_kubernetes(lab: Lab) -> None:
    out = lab.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.2"' in out.replace('":"', '": "')
    nodes = client.CoreV1Api(lab.api).list_node().items
    assert sorted(n.metadata.name for n in nodes) == ["node-1", "node-2", "node-3"]
    for n in nodes:
        ready = next(c for c in n.status.conditions if c.type == "Ready")
        assert ready.status == "True"


def test_apiserver_allocates_node_port_and_health_check_node_port(lab: Lab) -> None:
    core = client.CoreV1Api(lab.api)
    svc = core.create_namespaced_service(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lb-local"},
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "selector": {"app": "echo"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        },
    )
    try:
        node_port = svc.spec.ports[0].node_port
        hcnp = svc.spec.health_check_node_port
        assert 30000 <= node_port <= 32767
        assert hcnp is not None and 30000 <= hcnp <= 32767 and hcnp != node_port
        assert ipaddress.ip_address(svc.spec.cluster_ip) in lab.plan.service_cidr_v4
        # A Cluster-policy Service gets no healthCheckNodePort: the allocation is the real one.
        patched = core.patch_namespaced_service(
            "lb-local", NS, {"spec": {"externalTrafficPolicy": "Cluster"}}
        )
        assert patched.spec.health_check_node_port is None
    finally:
        core.delete_namespaced_service("lb-local", NS)


def test_endpointslices_follow_the_lab(lab: Lab) -> None:
    by_pod = wait_for(
        lambda: slices_by_pod(lab) if len(slices_by_pod(lab)) == 6 else None, "6 pods"
    )
    for name, entry in by_pod.items():
        ep = entry["ep"]
        node = "node-" + name.split("-")[1]
        assert ep.node_name == node
        assert ep.zone == ("zone-a" if node in ("node-1", "node-3") else "zone-b")
        assert ep.conditions.ready and ep.conditions.serving and not ep.conditions.terminating

    pod = lab.add_pod("node-2")
    try:
        ep = wait_for(lambda: slices_by_pod(lab).get(pod.name), f"{pod.name} in a slice")["ep"]
        assert ep.node_name == "node-2" and ep.zone == "zone-b" and ep.conditions.ready
        assert str(pod.ipv4) in ep.addresses or str(pod.ipv6) in ep.addresses

        lab.set_pod_ready(pod.name, False)
        ep = wait_for(
            lambda: (e := slices_by_pod(lab)[pod.name]["ep"]).conditions.ready is False and e,
            "not ready",
        )
        assert ep.conditions.serving is False and ep.conditions.terminating is False

        lab.set_pod_ready(pod.name, True)
        wait_for(lambda: slices_by_pod(lab)[pod.name]["ep"].conditions.ready, "ready again")

        lab.terminate_pod(pod.name)
        ep = wait_for(
            lambda: (e := slices_by_pod(lab)[pod.name]["ep"]).conditions.terminating and e,
            "terminating",
        )
        # A terminating pod that is still Ready keeps serving (KEP-1672).
        assert ep.conditions.ready is False and ep.conditions.serving is True
    finally:
        lab.remove_pod(pod.name)
    wait_for(lambda: pod.name not in slices_by_pod(lab), f"{pod.name} gone from slices")


def test_client_reaches_a_pod_through_its_node(lab: Lab) -> None:
    target = lab.plan.pod(2, 1)
    client_host = lab.plan.client(1)
    route = lab.exec("client-1", ["ip", "route", "get", str(target.ipv4)], check=True).stdout
    assert f"via {lab.plan.node(2).ipv4}" in route

    got = request(lab, "client-1", str(target.ipv4))
    assert got["answer"]["pod"] == target.name and got["answer"]["node"] == "node-2"
    # No NAT anywhere: the pod sees the client's own address and port.
    assert got["answer"]["client_ip"] == str(client_host.ipv4)
    assert got["answer"]["client_port"] == got["local_port"]

    udp = request(lab, "client-2", str(target.ipv4), proto="udp")
    assert udp["answer"]["proto"] == "udp"
    assert udp["answer"]["client_ip"] == str(lab.plan.client(2).ipv4)

    v6 = request(lab, "client-1", str(target.ipv6))
    assert v6["answer"]["client_ip"] == str(client_host.ipv6)


def test_pods_reach_pods_on_other_nodes(lab: Lab) -> None:
    src, dst = lab.plan.pod(1, 1), lab.plan.pod(3, 2)
    got = request(lab, src.name, str(dst.ipv4))
    assert got["answer"]["pod"] == dst.name
    assert got["answer"]["client_ip"] == str(src.ipv4)


def test_failed_node_is_cut_off_and_comes_back(lab: Lab) -> None:
    target = lab.plan.pod(3, 1)
    lab.fail_node("node-3")
    try:
        assert "node-3" not in lab.nodes_up()
        with pytest.raises(ConnectionError):
            request(lab, "client-1", str(target.ipv4))
    finally:
        lab.restore_node("node-3")
    assert "node-3" in lab.nodes_up()
    got = wait_for(lambda: _try(lambda: request(lab, "client-1", str(target.ipv4))), "reachable")
    assert got["answer"]["pod"] == target.name


def test_added_gateway_is_on_the_lan(lab: Lab) -> None:
    gw = lab.add_gateway()
    assert gw.name == "gw-2"
    # A TCP connection to a closed port is refused (RST) only if the host is really there.
    res = lab.exec(
        "client-1",
        [
            "python3",
            "-c",
            f"import socket\ntry:\n socket.create_connection(('{gw.ipv4}', 9), timeout=2)\n"
            "except ConnectionRefusedError:\n print('refused')",
        ],
    )
    assert res.stdout.strip() == "refused", res.stderr
    neigh = lab.exec("client-1", ["ip", "neigh", "show", str(gw.ipv4)]).stdout
    assert "lladdr" in neigh


def _try(fn: Any) -> Any:
    try:
        return fn()
    except ConnectionError:
        return None

"""What the data-plane lab tests share: the operator on a pool of their own, the node agents,
Services they create and delete, and small clients run in the lab's namespaces."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.portico import (
    cleanup_kube_proxy,
    start_gateway,
    start_kube_proxies,
    start_node_agents,
)
from portico_lab.procs import Proc

from .netcheck import request
from .operator_harness import NS, Api, OperatorProcess, wait_for

AGENT = [sys.executable, "-m", "portico_nodeagent"]

# One HTTP request, its status line, headers and body, or the error (refused, timeout).
_HTTP = r"""
import json, socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
try:
    s = socket.create_connection((host, port), timeout=2)
    # Connection: close, so that a keep-alive server (kube-proxy) ends the answer too
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()); data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    out["status"] = int(lines[0].split()[1])
    out["headers"] = dict(l.split(": ", 1) for l in lines[1:])
    out["body"] = body.decode()
except ConnectionRefusedError:
    out["error"] = "refused"
except ConnectionResetError:  # accepted just as the listener closed
    out["error"] = "reset"
except (socket.timeout, TimeoutError):
    out["error"] = "timeout"
print(json.dumps(out))
"""


def http(lab: Lab, where: str, host: str, port: int, path: str = "/healthz") -> dict[str, Any]:
    res = lab.exec(where, [sys.executable, "-S", "-c", _HTTP, host, str(port), path], timeout=10)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@contextmanager
def running_operator(
    lab: Lab, api: Api, pool: str, block: int, identity: str
) -> Iterator[OperatorProcess]:
    """An operator allocating from its own pool: the ``block``-th /27 (and /123) of the lab's VIP
    ranges, so modules never share addresses."""
    v4 = ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address + 32 * block}/27")
    v6 = ipaddress.ip_network(f"{lab.plan.vip_range_v6.network_address + 32 * block}/123")
    api.create_pool(pool, [str(v4), str(v6)])
    op = OperatorProcess(lab, identity).start()
    try:
        wait_for(lambda: "first full listing" in op.log.read_text(), "the operator lists", 30)
        yield op
    finally:
        op.stop()
        api.delete_pool(pool)


@contextmanager
def running_agents(lab: Lab, *extra: str) -> Iterator[list[Proc]]:
    procs = start_node_agents(lab, *extra)
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        for node in lab.node_names():
            lab.exec(node, [*AGENT, "--cleanup"])
        for p in procs:
            if p.popen is not None and p.popen.returncode not in (0, None):
                print(p.log_tail())


def tables(lab: Lab, node: str) -> set[tuple[str, str]]:
    """The (family, name) of every nftables table on ``node``."""
    out = lab.exec(node, ["nft", "-j", "list", "tables"], check=True).stdout
    items = json.loads(out)["nftables"]
    return {(t["table"]["family"], t["table"]["name"]) for t in items if "table" in t}


@contextmanager
def running_kube_proxy(lab: Lab, mode: str) -> Iterator[list[Proc]]:
    """kube-proxy in ``mode`` on every node; afterwards its rules are cleaned up and the nodes
    go back to the tables they had (iptables-nft leaves its empty tables behind)."""
    before = {node: tables(lab, node) for node in lab.node_names()}
    procs = start_kube_proxies(lab, mode)
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        cleanup_kube_proxy(lab)
        for node, had in before.items():
            for family, name in sorted(tables(lab, node) - had):
                lab.exec(node, ["nft", "delete", "table", family, name], check=True)


@contextmanager
def running_gateway(lab: Lab, name: str) -> Iterator[Proc]:
    """The gateway ``name`` (lbnode in its lab namespace); its tables removed afterwards."""
    proc = start_gateway(lab, name)
    try:
        yield proc
    finally:
        proc.stop()
        lab.exec(name, [sys.executable, "-m", "portico_lbnode", "--cleanup"])
        # Its GatewayReport stays after a stop (a restart carries its verdicts over): not here.
        lab.kubectl("delete", "gatewayreport", name, "--ignore-not-found", check=False)
        if proc.popen is not None and proc.popen.returncode not in (0, None):
            print(proc.log_tail())


@contextmanager
def deleting_services(api: Api) -> Iterator[list[str]]:
    """The names appended to the list are deleted at the end."""
    names: list[str] = []
    try:
        yield names
    finally:
        for n in names:
            try:
                api.core.delete_namespaced_service(n, NS)
            except ApiException as e:
                if e.status != 404:
                    raise


def create(api: Api, names: list[str], name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "echo"},
            # Named target ports: they resolve through the EndpointSlices' ports.
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
                {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": "udp"},
            ],
            **spec,
        },
    }
    names.append(name)
    api.core.create_namespaced_service(NS, body)
    return body


def answered(lab: Lab, client: str, addr: str, proto: str = "http") -> dict[str, Any] | None:
    try:
        return request(lab, client, addr, 80, proto)["answer"]
    except ConnectionError:
        return None


# Both families: every test that sends traffic to a VIP runs for IPv4 and IPv6.
FAMILIES = [4, 6]


def family_spec(family: int) -> dict[str, Any]:
    """The Service fields that make it single-stack in ``family`` (4 or 6)."""
    return {"ipFamilyPolicy": "SingleStack", "ipFamilies": [f"IPv{family}"]}


def named(name: str, family: int) -> str:
    """A Service name unique per family: ``name`` for IPv4, ``name-v6`` for IPv6."""
    return name if family == 4 else f"{name}-v6"


def addr(host: Any, family: int) -> str:
    """The address of ``family`` of a lab host or pod (anything with ``ipv4`` and ``ipv6``)."""
    return str(host.ipv4 if family == 4 else host.ipv6)

"""What the data-plane lab tests share: the operator on a pool of their own, the node agents,
Services they create and delete, and small clients run in the lab's namespaces."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from portico_common.ports import AGENT_HEALTH_PORT, KUBE_PROXY_HEALTHZ_PORT
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
AGENT_PORT = AGENT_HEALTH_PORT  # the agents' own node /healthz and aggregate view

# One HTTP request, its status line, headers and body, or the error (refused, timeout).
_HTTP = r"""
import json, socket, sys
host, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
out = {}
try:
    s = socket.create_connection((host, port), timeout=timeout)
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


def http(
    lab: Lab, where: str, host: str, port: int, path: str = "/healthz", timeout: float = 2.0
) -> dict[str, Any]:
    """One request; ``timeout``: for the connection and for each read."""
    argv = [sys.executable, "-S", "-c", _HTTP, host, str(port), path, str(timeout)]
    res = lab.exec(where, argv, timeout=timeout + 8)
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
def running_gateway(lab: Lab, name: str, *extra: str, host: str | None = None) -> Iterator[Proc]:
    """The gateway ``name`` (lbnode in its lab namespace, or in ``host``'s); its tables removed
    afterwards."""
    proc = start_gateway(lab, name, *extra, host=host)
    try:
        yield proc
    finally:
        proc.stop()
        lab.exec(host or name, [sys.executable, "-m", "portico_lbnode", "--cleanup"])
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


# Beside what the data-plane tests run: Portico alone, or with kube-proxy (nftables mode) on every
# node as on kind and most clusters. Tests parametrized over it run their kube-proxy cases last
# in their module (tests/lab/conftest.py orders them), so kube-proxy starts once per module.
ALONE, KUBE_PROXY = "alone", "kube-proxy"
KUBE_PROXY_IPTABLES = "kube-proxy-iptables"  # kind's default mode
_KUBE_PROXY_MODES = {KUBE_PROXY: "nftables", KUBE_PROXY_IPTABLES: "iptables"}
BESIDE = [ALONE, KUBE_PROXY]


class KubeProxySwitch:
    """kube-proxy beside a module's agents, started when a test first wants it and kept until
    the module ends. As on a cluster where it came first, kube-proxy binds its ports before the
    agents do: :10256 and the health ports of the Services that exist then."""

    def __init__(self, lab: Lab, agents: list[Proc]) -> None:
        self.lab, self.agents = lab, agents
        self._stack: ExitStack | None = None
        self._procs: list[Proc] = []
        self._beside = ALONE

    @property
    def on(self) -> bool:
        return self._stack is not None

    def want(self, beside: str) -> None:
        """``ALONE``, ``KUBE_PROXY`` (nftables mode) or ``KUBE_PROXY_IPTABLES``."""
        if beside == self._beside:
            return
        self.stop()
        if beside != ALONE:
            self.start(_KUBE_PROXY_MODES[beside])
        self._beside = beside

    def start(self, mode: str = "nftables") -> None:
        lab = self.lab
        # Portico's table first, kube-proxy's after (see test_kube_proxy): its agents made it.
        for node in lab.node_names():
            wait_for(lambda n=node: ("inet", "portico") in tables(lab, n), f"{node}'s table")
        for p in self.agents:
            p.stop()  # their rules stay in force
        self._stack = ExitStack()
        try:
            self._procs = self._stack.enter_context(running_kube_proxy(lab, mode))
            for node in lab.node_names():
                wait_for(
                    lambda n=node: (
                        http(lab, n, "127.0.0.1", KUBE_PROXY_HEALTHZ_PORT).get("status") == 200
                    ),
                    f"kube-proxy on {node} serves :{KUBE_PROXY_HEALTHZ_PORT}/healthz (synced)",
                    60,
                )
        finally:
            for p in self.agents:
                p.start()
        for node in lab.node_names():
            wait_for(
                lambda n=node: http(lab, n, "127.0.0.1", AGENT_PORT).get("status") == 200,
                f"{node}'s agent serves its own port again",
                30,
            )

    def stop(self) -> None:
        self._beside = ALONE
        stack, self._stack, self._procs = self._stack, None, []
        if stack is not None:
            stack.close()

    @contextmanager
    def behind(self, node: str) -> Iterator[None]:
        """``node``'s kube-proxy keeps the rules it has (stopped, SIGSTOP) until the block
        ends: its view a sync behind Portico's, as within its min-sync-period (1 s: a change
        that follows another by less waits) or a long sync. Nothing without kube-proxy."""
        proc = next((p for p in self._procs if p.name == f"kube-proxy-{node}"), None)
        if proc is None or proc.popen is None:
            yield
            return
        os.kill(proc.popen.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(proc.popen.pid, signal.SIGCONT)


@contextmanager
def kube_proxy_switch(lab: Lab, agents: list[Proc]) -> Iterator[KubeProxySwitch]:
    switch = KubeProxySwitch(lab, agents)
    try:
        yield switch
    finally:
        switch.stop()


def kube_proxy_programmed(lab: Lab, node: str, vip: str) -> bool:
    """Whether ``node``'s kube-proxy (nftables) sends ``vip`` to endpoints."""
    family = "ip6" if ":" in vip else "ip"
    out = lab.exec(node, ["nft", "list", "map", family, "kube-proxy", "service-ips"]).stdout
    return f"{vip} " in out


# Connections to port 80 of an address, all at once (each its own source port), with a short
# timeout: the pod that answered each, or why none did.
_ATTEMPTS = r"""
import json, socket, sys, threading
host, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = [None] * n
def one(i):
    try:
        s = socket.create_connection((host, 80), timeout=timeout)
        s.sendall(b"GET /attempt HTTP/1.0\r\n\r\n"); data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        out[i] = json.loads(data.split(b"\r\n\r\n", 1)[1])["pod"]
    except ConnectionRefusedError:
        out[i] = "refused"
    except (socket.timeout, TimeoutError):
        out[i] = "timeout"
    except OSError as e:
        out[i] = type(e).__name__
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def attempts(lab: Lab, where: str, addr: str, n: int, timeout: float = 1.0) -> list[str]:
    """``n`` connections from ``where`` to ``addr``:80 at once: each answering pod, or
    "refused" / "timeout"."""
    argv = [sys.executable, "-S", "-c", _ATTEMPTS, addr, str(n), str(timeout)]
    res = lab.exec(where, argv, timeout=timeout + 30)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout))


def beside_param(request: pytest.FixtureRequest, switch: KubeProxySwitch) -> str:
    """For a module's ``beside`` fixture (indirect parameter): kube-proxy on or off as asked."""
    beside = str(getattr(request, "param", ALONE))
    switch.want(beside)
    return beside

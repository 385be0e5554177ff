"""Runs Portico itself in a lab: its CRDs, an IPPool on the lab's VIP range, the operator as a
process of the lab, a node agent in every node's namespace (as a kubelet would run the
DaemonSet's pod, with the host's network), and a demo LoadBalancer Service, for `portico-lab up`
to show it working."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .binaries import REPO_ROOT
from .lab import Lab, LabError
from .procs import Proc

CRDS = REPO_ROOT / "crds"
SYSTEM_NAMESPACE = "portico-system"


def operator_argv(lab: Lab, identity: str, *extra: str) -> list[str]:
    """The command line of a portico-operator replica run against this lab."""
    return [
        sys.executable,
        "-m",
        "portico_operator",
        "--kubeconfig",
        str(lab.kubeconfig),
        "--namespace",
        SYSTEM_NAMESPACE,
        "--identity",
        identity,
        *extra,
    ]


def node_agent_argv(lab: Lab, node: str, *extra: str) -> list[str]:
    """The command line of the node agent of ``node`` (run it in the node's namespace)."""
    return [
        sys.executable,
        "-m",
        "portico_nodeagent",
        "--kubeconfig",
        str(lab.kubeconfig),
        "--node-name",
        node,
        *extra,
    ]


def start_node_agents(lab: Lab, *extra: str) -> list[Proc]:
    """One agent per node, each in its node's network namespace; logs in the lab's logs/."""
    procs = []
    for node in lab.node_names():
        status = lab.workdir / "agents" / f"{node}.status.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        procs.append(
            Proc(
                f"portico-node-agent-{node}",
                node_agent_argv(lab, node, "--status", str(status), *extra),
                lab.workdir / "logs" / f"node-agent-{node}.log",
                netns=lab.netns_of(node),
            ).start()
        )
    return procs


def install_crds(lab: Lab, timeout: str = "60s") -> None:
    """Portico's CRDs, served, and its system namespace (for the operator's Lease)."""
    lab.kubectl(
        "apply",
        "-f",
        str(CRDS / "portico.dev_ippools.yaml"),
        "-f",
        str(CRDS / "portico.dev_loadbalancers.yaml"),
        "-f",
        str(CRDS / "portico.dev_noderules.yaml"),
        "-f",
        str(CRDS / "portico.dev_nodeagents.yaml"),
    )
    lab.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/ippools.portico.dev",
        "crd/loadbalancers.portico.dev",
        "crd/noderules.portico.dev",
        "crd/nodeagents.portico.dev",
        f"--timeout={timeout}",
    )
    lab.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)


def install(lab: Lab) -> Proc:
    """CRDs, the `lab` IPPool (the lab's VIP ranges) and a running operator."""
    install_crds(lab, "30s")
    pool = {
        "apiVersion": "portico.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "lab"},
        "spec": {
            "addresses": [str(lab.plan.vip_range_v4), str(lab.plan.vip_range_v6)],
            "avoidBuggyIPs": True,
        },
    }
    _apply(lab, pool)
    proc = Proc(
        "portico-operator",
        operator_argv(lab, "lab-operator"),
        lab.workdir / "logs" / "operator.log",
    ).start()
    lab.procs.append(proc)
    lab.procs.extend(start_node_agents(lab))
    return proc


def demo_service(lab: Lab, name: str = "echo-lb", timeout: float = 30) -> str:
    """A LoadBalancer Service with externalTrafficPolicy Local over the echo pods; returns its
    address once the operator has written it."""
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
    _apply(lab, svc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.kubectl(
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
            check=False,
        ).stdout
        if out.strip():
            return out.strip()
        time.sleep(0.1)
    raise LabError(f"{name} got no address in {timeout:.0f}s; see {lab.workdir}/logs/operator.log")


_ASK = r"""
import json, socket, sys, time
deadline = time.time() + float(sys.argv[2])
while True:
    try:
        s = socket.create_connection((sys.argv[1], 80), timeout=0.5)
        s.sendall(b"hello\n"); print(s.makefile().readline().strip()); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.05)
"""


def demo_traffic(
    lab: Lab, ip: str, client: str = "client-1", node: str = "node-2", timeout: float = 15
) -> str:
    """Delivers ``ip`` from ``client`` to ``node`` (a static route, as the gateway will once it
    exists) and returns the echo pod's answer to one request: which pod, and the client address
    it saw."""
    via = str(lab.host(node).ipv4)
    lab.exec(client, ["ip", "route", "replace", f"{ip}/32", "via", via], check=True)
    res = lab.exec(
        client, [sys.executable, "-S", "-c", _ASK, ip, str(timeout)], timeout=timeout + 5
    )
    if res.returncode != 0:
        raise LabError(f"{ip} did not answer through {node}: {res.stderr.strip()[-300:]}")
    return res.stdout.strip()


def _apply(lab: Lab, obj: dict) -> None:
    path = lab.workdir / f"{obj['kind'].lower()}-{obj['metadata']['name']}.json"
    Path(path).write_text(json.dumps(obj))
    lab.kubectl("apply", "-f", str(path))

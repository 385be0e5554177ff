"""Runs Portico itself in a lab: its CRDs, a VIPPool on the lab's VIP range, the operator as a
process of the lab, a node agent in every node's namespace (as a kubelet would run the
DaemonSet's pod, with the host's network), the gateway (lbnode) in the first gateway's
namespace, and a demo LoadBalancer Service, for `portico-lab up` to show it working."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .binaries import REPO_ROOT, bin_dir
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


KUBE_PROXY_MODES = ("nftables", "iptables")


def kube_proxy_argv(lab: Lab, node: str, mode: str) -> list[str]:
    """kube-proxy (the control plane's version) for lab node ``node``, as kind or kubeadm would
    run it: host network, every Service, the lab's pod ranges as the cluster CIDR."""
    if mode not in KUBE_PROXY_MODES:
        raise LabError(f"kube-proxy mode {mode!r}: want one of {', '.join(KUBE_PROXY_MODES)}")
    # Every node's pod range (node i: 198.19.(64*slot + i).0/24, fd00:19:slot:i::/64).
    pods = [
        lab.plan.pod_cidr_v4(1).supernet(new_prefix=19),
        lab.plan.pod_cidr_v6(1).supernet(new_prefix=48),
    ]
    return [
        str(bin_dir() / "kube-proxy"),
        f"--kubeconfig={lab.kubeconfig}",
        f"--hostname-override={node}",
        f"--proxy-mode={mode}",
        f"--cluster-cidr={','.join(map(str, pods))}",
        # A network namespace's conntrack table size is the host's to set.
        "--conntrack-max-per-core=0",
        "--healthz-bind-address=0.0.0.0:10256",
        "--metrics-bind-address=127.0.0.1:10249",
        "--v=1",
    ]


def start_kube_proxies(lab: Lab, mode: str) -> list[Proc]:
    """kube-proxy on every node, beside Portico's agents (it holds what it binds first:
    healthCheckNodePorts and :10256); logs in the lab's logs/."""
    return [
        Proc(
            f"kube-proxy-{node}",
            kube_proxy_argv(lab, node, mode),
            lab.workdir / "logs" / f"kube-proxy-{node}.log",
            netns=lab.netns_of(node),
        ).start()
        for node in lab.node_names()
    ]


def cleanup_kube_proxy(lab: Lab) -> None:
    """Removes kube-proxy's rules (every mode's) from every node, as ``kube-proxy --cleanup``."""
    for node in lab.node_names():
        lab.exec(node, [str(bin_dir() / "kube-proxy"), "--cleanup"], check=False)


def gateway_argv(lab: Lab, gateway: str, *extra: str) -> list[str]:
    """The command line of the lbnode of lab host ``gateway`` (run it in its namespace)."""
    return [
        sys.executable,
        "-m",
        "portico_lbnode",
        "--kubeconfig",
        str(lab.kubeconfig),
        "--name",
        gateway,
        "--interface",
        "eth0",
        *extra,
    ]


def gateway_names(lab: Lab) -> list[str]:
    prefix = f"{lab.plan.prefix}-"
    return sorted(n[len(prefix) :] for n in lab.net.namespaces() if n.startswith(prefix + "gw-"))


def start_gateway(lab: Lab, gateway: str, *extra: str, host: str | None = None) -> Proc:
    """The gateway program in its host's namespace, as the lbnode DaemonSet or unit would run
    it on a gateway machine; log in the lab's logs/. ``host``: the lab host it runs on when
    that is not the gateway host of its name (a node, as the chart's hostNetwork gateway)."""
    return Proc(
        f"portico-lbnode-{gateway}",
        gateway_argv(lab, gateway, *extra),
        lab.workdir / "logs" / f"lbnode-{gateway}.log",
        netns=lab.netns_of(host or gateway),
    ).start()


def install_crds(lab: Lab, timeout: str = "60s") -> None:
    """Portico's CRDs, served, and its system namespace (for the operator's Lease)."""
    lab.kubectl(
        "apply",
        "-f",
        str(CRDS / "portico.dev_vippools.yaml"),
        "-f",
        str(CRDS / "portico.dev_loadbalancers.yaml"),
        "-f",
        str(CRDS / "portico.dev_noderules.yaml"),
        "-f",
        str(CRDS / "portico.dev_nodeagents.yaml"),
        "-f",
        str(CRDS / "portico.dev_gatewayreports.yaml"),
    )
    lab.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/vippools.portico.dev",
        "crd/loadbalancers.portico.dev",
        "crd/noderules.portico.dev",
        "crd/nodeagents.portico.dev",
        "crd/gatewayreports.portico.dev",
        f"--timeout={timeout}",
    )
    lab.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)


def install(lab: Lab) -> Proc:
    """CRDs, the `lab` VIPPool (the lab's VIP ranges) and a running operator."""
    install_crds(lab, "30s")
    pool = {
        "apiVersion": "portico.dev/v1alpha1",
        "kind": "VIPPool",
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
    # One gateway for now: several gateways sharing VIPs (and failing over) is the next step.
    gateways = gateway_names(lab)
    if gateways:
        lab.procs.append(start_gateway(lab, gateways[0]))
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


def demo_traffic(lab: Lab, ip: str, client: str = "client-1", timeout: float = 15) -> str:
    """One request from ``client`` to ``ip``, as a user would make it: the client ARPs for the
    VIP, the gateway answers and forwards to a healthy node, whose agent DNATs to a pod. Returns
    the echo pod's answer: which pod, and the client address it saw."""
    res = lab.exec(
        client, [sys.executable, "-S", "-c", _ASK, ip, str(timeout)], timeout=timeout + 5
    )
    if res.returncode != 0:
        raise LabError(
            f"{ip} did not answer {client}: {res.stderr.strip()[-300:]}; see "
            f"{lab.workdir}/logs/lbnode-*.log"
        )
    return res.stdout.strip()


def wait_gateway_status(lab: Lab, namespace: str, name: str, timeout: float = 15) -> None:
    """Until the LoadBalancer's status names its gateway and its healthy nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.kubectl(
            "get",
            "loadbalancer",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.status.ownerGateway}/{.status.healthyNodes}",
            check=False,
        ).stdout.strip()
        gateway, _, healthy = out.partition("/")
        if gateway and healthy not in ("", "0"):
            return
        time.sleep(0.1)
    raise LabError(f"{namespace}/{name}: no gateway status in {timeout:.0f}s")


def _apply(lab: Lab, obj: dict) -> None:
    path = lab.workdir / f"{obj['kind'].lower()}-{obj['metadata']['name']}.json"
    Path(path).write_text(json.dumps(obj))
    lab.kubectl("apply", "-f", str(path))

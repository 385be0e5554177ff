"""The node half of the data plane, end to end: operator → NodeRules → node agents → traffic.

Brings up a lab, the operator and one agent per node, and measures:
  A. Service created → first successful request through a node (VIP routed from a client to
     node-1, as the gateway will deliver it), p50 / p99 over N Services created one by one
     (goal ≤ 150 / ≤ 300 ms);
  B. a pod going not-ready → its node's healthCheckNodePort answer changed, p50 / p99;
  C. with S selector-less Services x 3 ports (their EndpointSlices written by the bench): one
     endpoint change of one Cluster Service → bytes and writes the operator sent for NodeRules
     (goal ≤ 64 KiB in ≤ 3 writes), the largest NodeRules object, operator and agent memory.

    .venv/bin/python bench/dataplane.py [--n 100] [--flips 20] [--services 1000] [--nodes 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import Operator, pct, wait_idle, wait_until
from kubernetes import client
from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import install_crds, start_node_agents
from portico_lab.procs import netns_argv, rss_kib

NS = "default"
POOL = "bench-dp"

# A long-lived client in a client namespace: for each command line it probes until success and
# prints when. "tcp IP" connects to IP:80 and reads the echo's answer; "hz IP PORT WEIGHT" GETs
# the health port until X-Load-Balancing-Endpoint-Weight is WEIGHT.
_PROBER = r"""
import json, socket, sys, time
def tcp(ip):
    s = socket.create_connection((ip, 80), timeout=0.01)
    s.sendall(b"hello\n"); s.settimeout(1)
    return json.loads(s.makefile().readline())
def hz(ip, port, weight):
    s = socket.create_connection((ip, int(port)), timeout=0.2)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); s.settimeout(1)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
    if f"X-Load-Balancing-Endpoint-Weight: {weight}\r\n".encode() not in data:
        raise ValueError("not yet")
    return weight
for line in sys.stdin:
    cmd, *args = line.split()
    deadline = time.time() + 30
    while True:
        try:
            got = tcp(*args) if cmd == "tcp" else hz(*args)
            print(json.dumps({"t": time.time(), "got": got}), flush=True); break
        except (OSError, ValueError):
            if time.time() > deadline:
                print(json.dumps({"t": None}), flush=True); break
            time.sleep(0.002)
"""


class Prober:
    def __init__(self, lab: Lab, where: str) -> None:
        self.p = subprocess.Popen(
            netns_argv(lab.netns_of(where), [sys.executable, "-S", "-c", _PROBER]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> dict[str, Any]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def service(name: str, ip: str | None = None, **spec: Any) -> dict[str, Any]:
    ann = {"portico.dev/load-balancer-ips": ip} if ip else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "annotations": ann},
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": False,
            "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            **spec,
        },
    }


def part_a(lab: Lab, core: client.CoreV1Api, prober: Prober, addrs: list[str]) -> list[float]:
    out = []
    for i, ip in enumerate(addrs):
        name = f"dp-a-{i}"
        t0 = time.time()
        core.create_namespaced_service(NS, service(name, ip))
        got = prober.ask(f"tcp {ip}")
        if got["t"] is None:
            raise RuntimeError(f"{name} ({ip}) never answered")
        out.append(got["t"] - t0)
    return out


def part_b(lab: Lab, core: client.CoreV1Api, prober: Prober, ip: str, flips: int) -> list[float]:
    core.create_namespaced_service(NS, service("dp-b", ip, externalTrafficPolicy="Local"))
    hcnp = wait_until(
        lambda: core.read_namespaced_service("dp-b", NS).spec.health_check_node_port,
        "a healthCheckNodePort",
        30,
    )
    node2 = str(lab.host("node-2").ipv4)
    assert prober.ask(f"hz {node2} {hcnp} 2")["t"], "healthz never counted 2"
    out = []
    for i in range(flips):
        ready = i % 2 == 1
        # kube-controller-manager delays a Service's next EndpointSlice sync by up to 1 s after
        # the last (endpointSliceChangeMinSyncDelay): flips closer than that measure it, not us.
        time.sleep(1.2)
        t0 = time.time()
        lab.set_pod_ready("echo-2-1", ready)
        got = prober.ask(f"hz {node2} {hcnp} {2 if ready else 1}")
        if got["t"] is None:
            raise RuntimeError("healthz never changed")
        out.append(got["t"] - t0)
    lab.set_pod_ready("echo-2-1", True)
    return out


def selectorless(name: str, ip: str | None, endpoints: list[str], ready: bool = True):
    svc = service(name, ip)
    del svc["spec"]["selector"]
    svc["spec"]["ports"] = [
        {"name": f"p{k}", "port": 80 + k, "targetPort": 8080, "protocol": "TCP"} for k in range(3)
    ]
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": f"p{k}", "port": 8080, "protocol": "TCP"} for k in range(3)],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": ready}, "nodeName": n} for a, n in endpoints
        ],
    }
    return svc, eps


def ms(xs: list[float], p: float) -> str:
    return f"{pct(xs, p) * 1000:.0f} ms" if xs else "-"


def part_c(lab: Lab, op: Operator, count: int) -> dict[str, Any]:
    core = client.CoreV1Api(lab.api)
    disc = client.DiscoveryV1Api(lab.api)
    custom = client.CustomObjectsApi(lab.api)
    pods = [(str(p.ipv4), p.node) for p in lab.pods()][:3]

    def make(i: int) -> None:
        svc, eps = selectorless(f"dp-c-{i}", None, pods)
        core.create_namespaced_service(NS, svc)
        disc.create_namespaced_endpoint_slice(NS, eps)

    t0 = time.time()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(make, range(count)))
    created = time.time() - t0

    def entries() -> int:
        items = custom.list_cluster_custom_object("portico.dev", "v1alpha1", "noderules")["items"]
        return sum(len(o["spec"].get("services") or {}) for o in items)

    wait_until(lambda: entries() >= count, f"{count} NodeRules entries", 600, 0.5)
    wait_idle(op)
    time.sleep(1.5)  # the rules flusher's last writes

    def snapshot() -> dict[str, Any]:
        items = custom.list_cluster_custom_object("portico.dev", "v1alpha1", "noderules")["items"]
        return {k: e for o in items for k, e in (o["spec"].get("services") or {}).items()}

    before = snapshot()
    m0 = op.metrics() or {}
    key = 'portico_operator_api_write_bytes_total{kind="noderules"}'
    # Every result (success, conflict...): the writes sent.
    wkey = 'portico_operator_api_writes_total{kind="noderules",'
    t1 = time.time()
    disc.patch_namespaced_endpoint_slice(
        "dp-c-0-1",
        NS,
        {
            "endpoints": [
                {"addresses": [pods[0][0]], "conditions": {"ready": False}, "nodeName": pods[0][1]}
            ]
            + [
                {"addresses": [a], "conditions": {"ready": True}, "nodeName": n}
                for a, n in pods[1:]
            ]
        },
    )

    def flipped() -> bool:
        for o in custom.list_cluster_custom_object("portico.dev", "v1alpha1", "noderules")["items"]:
            e = (o["spec"].get("services") or {}).get(f"{NS}/dp-c-0")
            if e:
                return any(x.get("ready") is False for x in e["endpoints"])
        return False

    wait_until(flipped, "the entry shows the endpoint not ready", 30)
    took = time.time() - t1
    time.sleep(1.0)
    m1 = op.metrics() or {}
    after = snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    items = custom.list_cluster_custom_object("portico.dev", "v1alpha1", "noderules")["items"]
    sizes = [len(json.dumps(o)) for o in items]
    return {
        "services": count,
        "created_s": created,
        "bytes": m1.get(key, 0) - m0.get(key, 0),
        "writes": sum(v for k, v in m1.items() if k.startswith(wkey))
        - sum(v for k, v in m0.items() if k.startswith(wkey)),
        "change_s": took,
        "shards": len(items),
        "largest": max(sizes),
        "total": sum(sizes),
        "changed": changed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--flips", type=int, default=20)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    cfg = LabConfig(nodes=args.nodes, pods_per_node=2, zones=2, gateways=1, clients=1)
    with Lab.up(cfg) as lab:
        install_crds(lab)
        v4 = lab.plan.vip_range_v4
        pool = f"{v4.network_address + 4096}/20"
        custom = client.CustomObjectsApi(lab.api)
        custom.create_cluster_custom_object(
            "portico.dev",
            "v1alpha1",
            "vippools",
            {
                "apiVersion": "portico.dev/v1alpha1",
                "kind": "VIPPool",
                "metadata": {"name": POOL},
                "spec": {"addresses": [pool]},
            },
        )
        op = Operator(lab, "bench-dp")
        agents = start_node_agents(lab)
        lab.procs.extend(agents)
        core = client.CoreV1Api(lab.api)
        wait_until(lambda: "first full listing" in op.log.read_text(), "the operator", 60)
        node1 = str(lab.host("node-1").ipv4)
        lab.exec("client-1", ["ip", "route", "replace", pool, "via", node1], check=True)
        prober = Prober(lab, "client-1")
        try:
            base = v4.network_address + 4096
            a = part_a(lab, core, prober, [str(base + 10 + i) for i in range(args.n)])
            # A pod change touches every Service that selects it: B measures one Service.
            for i in range(args.n):
                core.delete_namespaced_service(f"dp-a-{i}", NS)
            wait_until(
                lambda: (
                    not [
                        s
                        for s in core.list_namespaced_service(NS).items
                        if s.metadata.name.startswith("dp-a-")
                    ]
                ),
                "part A's Services gone",
                120,
            )
            b = part_b(lab, core, prober, str(base + 5), args.flips)
            c = part_c(lab, op, args.services)
            rss_op = rss_kib(op.pid) / 1024
            rss_agents = [rss_kib(p.pid) / 1024 for p in agents]
        finally:
            prober.close()
            op.stop()
    print("| measure | p50 | p99 | goal |\n|---|---|---|---|")
    print(
        f"| A. Service created → first answer through a node ({args.n}) | "
        f"{ms(a, 50)} | {ms(a, 99)} | ≤ 150 / ≤ 300 ms |"
    )
    print(
        f"| B. pod not-ready/ready → node's healthz changed ({args.flips}) | "
        f"{ms(b, 50)} | {ms(b, 99)} | within 1 s |"
    )
    print()
    print("| C. one endpoint change, Services x 3 ports | value | goal |\n|---|---|---|")
    print(f"| Services loaded (created in {c['created_s']:.0f} s) | {c['services']} | 1,000 |")
    print(f"| NodeRules bytes written by the operator | {c['bytes']:.0f} B | ≤ 64 KiB |")
    print(f"| NodeRules writes | {c['writes']:.0f} | ≤ 3 |")
    print(f"| entries that changed | {len(c['changed'])} ({', '.join(c['changed'][:5])}) | 1 |")
    print(f"| change visible in NodeRules after | {c['change_s'] * 1000:.0f} ms | |")
    print(
        f"| NodeRules objects / largest / all | {c['shards']} / {c['largest'] / 1024:.1f} KiB"
        f" / {c['total'] / 1024:.0f} KiB | far below 1.5 MiB |"
    )
    print(f"| operator RSS | {rss_op:.0f} MiB | |")
    print(f"| agent RSS (max of {len(rss_agents)}) | {max(rss_agents):.0f} MiB | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

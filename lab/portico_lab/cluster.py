"""The lab's stand-in for kubelets: Node and Pod objects whose status tells the truth.

There is no kubelet. The lab creates each Node with its InternalIP, zone and capacity, keeps its
node Lease renewed (as a kubelet does) so the node lifecycle controller keeps it Ready, and writes
each Pod's status (podIP, phase, Ready) from what the lab really did in the pod's namespace.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .controlplane import K8S_VERSION
from .plan import Host, Pod

LEASE_SECONDS = 40
RENEW_EVERY = 10.0
ZONE_LABEL = "topology.kubernetes.io/zone"
LAB_LABEL = "portico.dev/lab"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now_s() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry(fn: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Retries while the apiserver says 'not yet' (a namespace's default ServiceAccount is
    created by a controller a moment after the namespace, for instance)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ApiException as e:
            transient = e.status in (403, 429, 500, 503) and (
                e.status != 403 or "serviceaccount" in (e.body or "").lower()
            )
            if not transient or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {e.status} {e.reason}: {e.body}") from e
            time.sleep(0.1)


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)

    # -- nodes ---------------------------------------------------------------------------------
    def register_node(self, host: Host, zone: str, pod_cidrs: list[str]) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": host.name,
                "labels": {
                    "kubernetes.io/hostname": host.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    ZONE_LABEL: zone,
                    "topology.kubernetes.io/region": "lab",
                    LAB_LABEL: "node",
                },
            },
            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs},
        }
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        self.set_node_ready(host, True)
        self.renew_lease(host.name)

    def set_node_ready(self, host: Host, ready: bool) -> None:
        t = _now_s()

        def cond(kind: str, status: str, reason: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": f"lab: {reason}",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }

        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        status = {
            "addresses": [
                {"type": "InternalIP", "address": str(host.ipv4)},
                {"type": "InternalIP", "address": str(host.ipv6)},
                {"type": "Hostname", "address": host.name},
            ],
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("Ready", "True" if ready else "False", "KubeletReady" if ready else "LabDown"),
                cond("NetworkUnavailable", "False", "RouteCreated"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "nodeInfo": {
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "portico-lab://1",
                "kernelVersion": "",
                "osImage": "portico lab netns",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        # A JSON patch replaces each field whole: a strategic merge would merge the two
        # InternalIP addresses by their "type" key and reject the second as a duplicate.
        ops = [{"op": "add", "path": f"/status/{k}", "value": v} for k, v in status.items()]
        self.core.patch_node_status(host.name, ops)

    def renew_lease(self, node: str) -> None:
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now(),
            },
        }
        try:
            self.coord.patch_namespaced_lease(node, "kube-node-lease", body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def ensure_service_account(self, name: str, namespace: str) -> None:
        body: Any = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
        try:
            self.core.create_namespaced_service_account(namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise

    # -- pods ----------------------------------------------------------------------------------
    def create_pod(self, pod: Pod, namespace: str, labels: dict[str, str]) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": pod.node,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "echo",
                        "image": "portico.dev/lab-echo:netns",
                        "ports": [
                            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                            {"name": "udp", "containerPort": 8080, "protocol": "UDP"},
                        ],
                    }
                ],
            },
        }
        retry(lambda: self.core.create_namespaced_pod(namespace, body), f"create pod {pod.name}")

    def set_pod_status(self, pod: Pod, host: Host, namespace: str, ready: bool) -> None:
        t = _now_s()
        r = "True" if ready else "False"

        def cond(kind: str, status: str) -> dict[str, str]:
            return {"type": kind, "status": status, "lastTransitionTime": t}

        status = {
            "phase": "Running",
            "hostIP": str(host.ipv4),
            "hostIPs": [{"ip": str(host.ipv4)}, {"ip": str(host.ipv6)}],
            "podIP": str(pod.ipv4),
            "podIPs": [{"ip": str(pod.ipv4)}, {"ip": str(pod.ipv6)}],
            "startTime": t,
            "conditions": [
                cond("PodScheduled", "True"),
                cond("Initialized", "True"),
                cond("ContainersReady", r),
                cond("Ready", r),
            ],
            "containerStatuses": [
                {
                    "name": "echo",
                    "image": "portico.dev/lab-echo:netns",
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": t}},
                }
            ],
        }
        self.core.patch_namespaced_pod_status(pod.name, namespace, {"status": status})

    def terminate_pod(self, name: str, namespace: str, grace_seconds: int) -> None:
        """Deletes with a grace period: with no kubelet to finish the job, the Pod stays
        Terminating (deletionTimestamp set) until the lab removes it."""
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds)

    def remove_pod(self, name: str, namespace: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise


class Heartbeat:
    """Renews the node Leases of the nodes that are up, every ``RENEW_EVERY`` seconds."""

    def __init__(self, cluster: Cluster, nodes: Callable[[], list[str]]) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            for node in self.nodes():
                try:
                    self.cluster.renew_lease(node)
                except Exception:
                    self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

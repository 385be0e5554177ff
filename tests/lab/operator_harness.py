"""Runs real portico-operator processes against the lab's apiserver, and small API helpers."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.portico import SYSTEM_NAMESPACE, operator_argv

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
NS = "default"
GROUP, VERSION = "portico.dev", "v1alpha1"
LEASE = "portico-operator"
TEST_LABEL = "portico-test"  # label of the Services a test creates, to list them cheaply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_FLAGS: dict[str, bool] = {}


def operator_has_flag(flag: str) -> bool:
    """Whether the portico-operator that runs here (PYTHONPATH decides) knows ``flag``: tests
    pass optional tuning flags only to an operator that has them."""
    if flag not in _FLAGS:
        out = subprocess.run(
            [sys.executable, "-m", "portico_operator", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        _FLAGS[flag] = flag in out.stdout
    return _FLAGS[flag]


class OperatorProcess:
    def __init__(self, lab: Lab, identity: str, *extra: str, metrics: bool = False) -> None:
        self.lab = lab
        self.identity = identity
        self.metrics_port = free_port() if metrics else 0
        if metrics:
            extra = (*extra, "--metrics-port", str(self.metrics_port))
        self.extra = extra
        self.log = lab.workdir / "logs" / f"operator-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log_start = 0  # where this process's lines begin in the (appended) log

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.lab.kubeconfig))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        self.paused = False
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                operator_argv(
                    self.lab,
                    self.identity,
                    "--lease-seconds",
                    "4",
                    "--renew-deadline",
                    "3",
                    "--retry-seconds",
                    "0.5",
                    *self.extra,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process handles SIGTERM only once continued
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    # -- freezing (SIGSTOP / SIGCONT) -----------------------------------------------------------
    def pause(self) -> None:
        assert self.proc is not None and self.alive()
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    # -- observable state -----------------------------------------------------------------------
    def log_since_start(self) -> str:
        """The log lines of the current process (the file collects every start's)."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def synced(self) -> bool:
        """This process has indexed its first full listing (it says so in its log)."""
        return self.alive() and "first full listing" in self.log_since_start()

    def metrics(self) -> dict[str, float]:
        """Its Prometheus metrics: 'name{labels}' -> value (needs metrics=True)."""
        assert self.metrics_port, "started without metrics=True"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def leading(self) -> bool:
        """portico_operator_leader is 1: this replica says it allocates."""
        try:
            return self.alive() and self.metrics().get("portico_operator_leader") == 1.0
        except OSError:
            return False

    def wait_synced(self, timeout: float = 30) -> None:
        wait_for(self.synced, f"{self.identity} indexed its first full listing", timeout)

    def wait_leading(self, api: Api, timeout: float = 30) -> None:
        """Synced, says it leads (metrics), and holds the Lease."""
        wait_for(
            lambda: self.synced() and self.leading() and lease_holder(api) == self.identity,
            f"{self.identity} leads",
            timeout,
        )


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except ApiException as e:
            last = e
            if e.status != 404:
                raise
        if last and not isinstance(last, ApiException):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Api:
    def __init__(self, lab: Lab) -> None:
        self.core = client.CoreV1Api(lab.api)
        self.custom = client.CustomObjectsApi(lab.api)
        self.coord = client.CoordinationV1Api(lab.api)

    # -- pools ---------------------------------------------------------------------------------
    def create_pool(self, name: str, addresses: list[str], **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VIPPool",
            "metadata": {"name": name},
            "spec": {"addresses": addresses, **spec},
        }
        return self.custom.create_cluster_custom_object(GROUP, VERSION, "vippools", body)

    def pool(self, name: str) -> dict[str, Any]:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "vippools", name)

    def delete_pool(self, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, "vippools", name)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- services ------------------------------------------------------------------------------
    def create_service(
        self,
        name: str,
        *,
        ns: str = NS,
        ports: list[tuple[str, int]] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": ns,
                "annotations": annotations or {},
                "labels": labels or {},
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "echo"},
                "ports": [
                    {"name": f"p{i}", "protocol": proto, "port": port, "targetPort": 8080}
                    for i, (proto, port) in enumerate(ports or [("TCP", 80)])
                ],
                **spec,
            },
        }
        return self.core.create_namespaced_service(ns, body)

    def service(self, name: str, ns: str = NS) -> Any:
        return self.core.read_namespaced_service(name, ns)

    def delete_service(self, name: str, ns: str = NS) -> None:
        try:
            self.core.delete_namespaced_service(name, ns)
        except ApiException as e:
            if e.status != 404:
                raise

    def ingress_ips(self, name: str, ns: str = NS) -> list[str]:
        lb = self.service(name, ns).status.load_balancer
        return [i.ip for i in (lb.ingress or [])] if lb else []

    def wait_ips(self, name: str, n: int = 1, ns: str = NS, timeout: float = 20) -> list[str]:
        return wait_for(
            lambda: (ips := self.ingress_ips(name, ns)) and len(ips) == n and ips,
            f"{n} address(es) on {ns}/{name}",
            timeout,
        )

    def condition(self, name: str, ns: str = NS) -> dict[str, Any] | None:
        conds = self.service(name, ns).status.conditions or []
        for c in conds:
            if c.type == "portico.dev/Allocated":
                return {"status": c.status, "reason": c.reason, "message": c.message}
        return None

    def wait_condition(
        self, name: str, status: str, reason: str | None = None, ns: str = NS, timeout: float = 20
    ) -> dict[str, Any]:
        def check() -> Any:
            c = self.condition(name, ns)
            ok = c and c["status"] == status and (reason is None or c["reason"] == reason)
            return c if ok else None

        return wait_for(check, f"{ns}/{name} condition {status}/{reason}", timeout)

    def lb(self, name: str, ns: str = NS) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "loadbalancers", name)

    def events(self, name: str, ns: str = NS) -> list[Any]:
        return [
            e for e in self.core.list_namespaced_event(ns).items if e.involved_object.name == name
        ]

    def raw_services(self, label: str, ns: str = NS) -> list[dict[str, Any]]:
        """The Services labelled ``portico-test=<label>``, as plain JSON (fast enough to poll
        every few milliseconds)."""
        resp = self.core.list_namespaced_service(
            ns, label_selector=f"{TEST_LABEL}={label}", _preload_content=False
        )
        return json.loads(resp.data)["items"]

    def raw_lbs(self, prefix: str, ns: str = NS) -> list[dict[str, Any]]:
        """Our LoadBalancer CRs whose name starts with ``prefix``, as plain JSON."""
        resp = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "loadbalancers", _preload_content=False
        )
        items = json.loads(resp.data)["items"]
        return [o for o in items if o["metadata"]["name"].startswith(prefix)]

    def service_condition(self, name: str, kind: str, ns: str = NS) -> dict[str, Any] | None:
        """The Service condition of type ``kind`` (e.g. portico.dev/Valid)."""
        for c in self.service(name, ns).status.conditions or []:
            if c.type == kind:
                return {"status": c.status, "reason": c.reason, "message": c.message or ""}
        return None


def lease_holder(api: Api) -> str | None:
    try:
        lease = api.coord.read_namespaced_lease(LEASE, SYSTEM_NAMESPACE)
    except ApiException:
        return None
    return lease.spec.holder_identity or None


def restart_apiserver(lab: Lab, timeout: float = 90) -> float:
    """Stops kube-apiserver and starts it again on the same etcd; returns the seconds it was
    unavailable. Its watch cache starts anew, so a watch resumed from a resourceVersion older
    than the restart is answered 410 Gone and the client must relist."""
    cp = lab.control_plane
    assert cp is not None
    t0 = time.monotonic()
    proc = cp.procs["kube-apiserver"]
    # SIGKILL, as in a crash: a graceful stop waits ~20 s on watches to frozen clients.
    assert proc.popen is not None
    proc.popen.kill()
    proc.popen.wait()
    proc.start()
    cp.wait_ready(timeout=timeout)
    return time.monotonic() - t0


def in_net(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)

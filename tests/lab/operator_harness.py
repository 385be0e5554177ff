"""Runs real portico-operator processes against the lab's apiserver, and small API helpers."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.portico import operator_argv

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
NS = "default"
GROUP, VERSION = "portico.dev", "v1alpha1"


class OperatorProcess:
    def __init__(self, lab: Lab, identity: str, *extra: str) -> None:
        self.lab = lab
        self.identity = identity
        self.extra = extra
        self.log = lab.workdir / "logs" / f"operator-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.lab.kubeconfig))
        self.log.parent.mkdir(parents=True, exist_ok=True)
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
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"addresses": addresses, **spec},
        }
        return self.custom.create_cluster_custom_object(GROUP, VERSION, "ippools", body)

    def pool(self, name: str) -> dict[str, Any]:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "ippools", name)

    def delete_pool(self, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, "ippools", name)
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
        **spec: Any,
    ) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
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


def in_net(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)

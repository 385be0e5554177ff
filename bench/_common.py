"""What the operator benchmarks share: a lab with Portico's CRDs and a pool, operator replicas
run as processes, a raw watch that times each Service's first ingress (and catches any address
that changes), percentiles. Imported by the scripts next to it (`python bench/x.py` puts bench/
on sys.path)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.portico import SYSTEM_NAMESPACE, install_crds, operator_argv
from portico_lab.procs import Proc

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "portico.dev", "v1alpha1"
LEASE = "portico-operator"


def free_port() -> int:
    """A TCP port nobody listens on now (other labs and benchmarks run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def wait_until(pred: Callable[[], Any], what: str, timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


# ---------------------------------------------------------------------------------------------
# the lab
# ---------------------------------------------------------------------------------------------
def install_portico(lab: Lab, namespaces: list[str], addresses: list[str]) -> None:
    """Portico's CRDs, the namespaces, and a VIPPool `bench` on `addresses`."""
    install_crds(lab)
    for ns in namespaces:
        lab.kubectl("create", "namespace", ns, check=False)
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VIPPool",
        "metadata": {"name": "bench"},
        "spec": {"addresses": addresses},
    }
    custom = client.CustomObjectsApi(lab.api)
    # Right after Established the new resource may still 404 for a moment.
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.create_cluster_custom_object(GROUP, VERSION, "vippools", pool)
            return
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def subnet(net: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix: int, index: int) -> str:
    """The index-th sub-network of `net` with the given prefix length (the lab's slot-dependent
    VIP range split between users)."""
    return str(list(net.subnets(new_prefix=prefix))[index])


def service(
    name: str,
    ns: str,
    *,
    lb_class: str | None = None,
    annotations: dict[str, str] | None = None,
    port: int = 80,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {
            "type": "LoadBalancer",
            # Thousands of Services would exhaust the 2,768 default nodePorts; DSR needs none.
            "allocateLoadBalancerNodePorts": False,
            "selector": {"app": "echo"},
            "ports": [{"port": port, "targetPort": 8080, "protocol": "TCP"}],
            **spec,
        },
    }
    if lb_class:
        body["spec"]["loadBalancerClass"] = lb_class
    return body


def lease_holder(lab: Lab) -> str | None:
    try:
        lease = client.CoordinationV1Api(lab.api).read_namespaced_lease(LEASE, SYSTEM_NAMESPACE)
    except ApiException:
        return None
    return lease.spec.holder_identity or None


def gone(core: client.CoreV1Api, name: str, ns: str) -> bool:
    try:
        core.read_namespaced_service(name, ns)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def ingress_snapshot(core: client.CoreV1Api, ns: str) -> dict[str, tuple[str, ...]]:
    """Every Service of the namespace that has an ingress, with its addresses (a fresh LIST)."""
    out = {}
    for s in core.list_namespaced_service(ns).items:
        lb = s.status.load_balancer if s.status else None
        ips = tuple(sorted(i.ip for i in (lb.ingress or []) if i.ip)) if lb else ()
        if ips and not s.metadata.deletion_timestamp:
            out[s.metadata.name] = ips
    return out


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------
class Operator:
    """One portico-operator replica (a process of its own session, killed with its parent)."""

    def __init__(self, lab: Lab, identity: str, *extra: str, metrics: bool = True) -> None:
        self.identity = identity
        self.metrics_port = free_port() if metrics else 0
        argv = operator_argv(lab, identity, *extra)
        if metrics:
            argv += ["--metrics-port", str(self.metrics_port)]
        self.log = lab.workdir / "logs" / f"operator-{identity}.log"
        env = dict(os.environ, KUBECONFIG=str(lab.kubeconfig))
        self.started = time.time()
        self.proc = Proc(f"operator-{identity}", argv, self.log, env=env).start()
        self.exited: float | None = None
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        assert self.proc.popen is not None
        self.proc.popen.wait()
        self.exited = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.exited is None and self.proc.alive()

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.exited is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.exited is not None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; never raises."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if not self.wait_exit(20):
                self.signal(signal.SIGKILL)
                self.wait_exit(5)

    def metrics(self) -> dict[str, float] | None:
        """Unlabelled and labelled samples by their full name; None while the port is closed."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = float(v)
        return out

    def queue_depth(self) -> float | None:
        m = self.metrics()
        if m is None:
            return None
        return sum(v for k, v in m.items() if k.startswith("portico_operator_work_queue_depth{"))

    def log_tail(self, n: int = 30) -> str:
        return self.proc.log_tail(n)


def wait_idle(op: Operator, timeout: float = 900) -> float:
    """Waits until the operator's work queues stay empty for 2 s; returns since when."""
    deadline = time.time() + timeout
    idle_since = None
    while time.time() < deadline:
        depth = op.queue_depth()
        if depth == 0:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 2:
                return idle_since
        else:
            idle_since = None
        time.sleep(0.2)
    raise TimeoutError("the operator never went idle")


# ---------------------------------------------------------------------------------------------
# the watch
# ---------------------------------------------------------------------------------------------
class IngressWatch(threading.Thread):
    """A raw watch on one namespace's Services: when each first appears (`added`) and first shows
    an ingress (`seen`), and every change of a live Service's ingress away from addresses it
    had (`changes`: name, before, after, when; a Service being deleted is not counted)."""

    def __init__(self, lab: Lab, ns: str) -> None:
        super().__init__(daemon=True)
        cp = lab.control_plane
        assert cp is not None and cp.files is not None
        self.ns = ns
        self.http = httpx.Client(
            base_url=cp.server, verify=cp.ssl_context(), timeout=httpx.Timeout(10, read=None)
        )
        self.seen: dict[str, float] = {}
        self.added: dict[str, float] = {}
        self.current: dict[str, tuple[str, ...]] = {}
        self.changes: list[tuple[str, tuple[str, ...], tuple[str, ...], float]] = []
        self.cond = threading.Condition()
        self.stop = False
        self.ready = threading.Event()

    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/services"

    def _relist(self) -> str:
        body = self.http.get(self._path()).json()
        for obj in body["items"]:
            self._record(obj, "ADDED")
        return body["metadata"]["resourceVersion"]

    def _record(self, obj: dict[str, Any], kind: str) -> None:
        now = time.time()
        meta = obj["metadata"]
        name = meta.get("name")
        ing = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = tuple(sorted(i["ip"] for i in ing if i.get("ip")))
        with self.cond:
            self.added.setdefault(name, now)
            if kind == "DELETED":
                self.current.pop(name, None)
                return
            old = self.current.get(name, ())
            if old and ips != old and not meta.get("deletionTimestamp"):
                self.changes.append((name, old, ips, now))
            if ips:
                self.current[name] = ips
            else:
                self.current.pop(name, None)
            if ips and name not in self.seen:
                self.seen[name] = now
                self.cond.notify_all()

    def run(self) -> None:
        rv = self._relist()
        self.ready.set()
        while not self.stop:
            params = {
                "watch": "1",
                "resourceVersion": rv,
                "timeoutSeconds": "300",
                "allowWatchBookmarks": "true",
            }
            try:
                with self.http.stream("GET", self._path(), params=params) as r:
                    for line in r.iter_lines():
                        if self.stop:
                            return
                        if not line:
                            continue
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":  # 410 Gone: list again
                            rv = self._relist()
                            break
                        obj = ev["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if ev["type"] != "BOOKMARK":
                            self._record(obj, ev["type"])
            except httpx.HTTPError:
                if self.stop:
                    return
                time.sleep(0.2)

    def wait(self, name: str, timeout: float = 30) -> float:
        deadline = time.time() + timeout
        with self.cond:
            while name not in self.seen:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"{name} got no ingress in {timeout:.0f}s")
                self.cond.wait(left)
            return self.seen[name]

    def close(self) -> None:
        self.stop = True
        with contextlib.suppress(Exception):
            self.http.close()


class FirstWatch(threading.Thread):
    """A raw list-and-watch of one collection (``path``): the wall time each key first came out
    of ``keys(obj)`` (e.g. the Services an EndpointSlice gives a ready endpoint, or that a
    NodeRules object holds with endpoints). ``wait(key)`` blocks until then."""

    def __init__(self, lab: Lab, path: str, keys: Callable[[dict[str, Any]], list[str]]) -> None:
        super().__init__(daemon=True)
        cp = lab.control_plane
        assert cp is not None and cp.files is not None
        self.path = path
        self.keys = keys
        self.http = httpx.Client(
            base_url=cp.server, verify=cp.ssl_context(), timeout=httpx.Timeout(10, read=None)
        )
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False
        self.ready = threading.Event()

    def _record(self, obj: dict[str, Any]) -> None:
        now = time.time()
        new = [k for k in self.keys(obj) if k not in self.seen]
        if new:
            with self.cond:
                for k in new:
                    self.seen.setdefault(k, now)
                self.cond.notify_all()

    def _relist(self) -> str:
        body = self.http.get(self.path).json()
        for obj in body["items"]:
            self._record(obj)
        return body["metadata"]["resourceVersion"]

    def run(self) -> None:
        rv = self._relist()
        self.ready.set()
        while not self.stop:
            params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
            try:
                with self.http.stream("GET", self.path, params=params) as r:
                    for line in r.iter_lines():
                        if self.stop:
                            return
                        if not line:
                            continue
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            rv = self._relist()
                            break
                        obj = ev["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._record(obj)
            except httpx.HTTPError:
                if self.stop:
                    return
                time.sleep(0.2)

    def wait(self, key: str, timeout: float = 30) -> float:
        deadline = time.time() + timeout
        with self.cond:
            while key not in self.seen:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"{self.path}: {key} not seen in {timeout:.0f}s")
                self.cond.wait(left)
            return self.seen[key]

    def close(self) -> None:
        self.stop = True
        with contextlib.suppress(Exception):
            self.http.close()


def ready_slice_services(obj: dict[str, Any]) -> list[str]:
    """FirstWatch keys of an EndpointSlice: ns/Service when it lists a ready endpoint."""
    meta = obj["metadata"]
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    ready = any(  # a nil ready means ready (API convention)
        (ep.get("conditions") or {}).get("ready") is not False for ep in obj.get("endpoints") or []
    )
    return [f"{meta.get('namespace')}/{svc}"] if svc and ready else []


def noderules_services(obj: dict[str, Any]) -> list[str]:
    """FirstWatch keys of a NodeRules object: ns/Service of each entry with a ready endpoint."""
    entries = (obj.get("spec") or {}).get("services") or {}
    return [
        k
        for k, e in entries.items()
        if e and any(ep.get("ready", True) for ep in e.get("endpoints") or [])  # omitted: ready
    ]


def wait_serving(
    core: client.CoreV1Api,
    watch: IngressWatch,
    ns: str,
    name: str,
    *,
    lb_class: str | None = None,
    timeout: float = 120,
    check: Callable[[], None] | None = None,
) -> float:
    """Creates a probe Service and waits until it has an ingress (the controller serves);
    `check` runs every second (to fail fast when the controller died). Returns seconds."""
    t0 = time.time()
    core.create_namespaced_service(ns, service(name, ns, lb_class=lb_class))
    deadline = t0 + timeout
    while True:
        try:
            watch.wait(name, timeout=min(1.0, max(0.0, deadline - time.time())))
            return time.time() - t0
        except TimeoutError:
            if time.time() >= deadline:
                raise
            if check:
                check()


def create_and_time(
    core: client.CoreV1Api, watch: IngressWatch, body: dict[str, Any], timeout: float = 30
) -> tuple[float, float]:
    """POSTs a Service and waits for its ingress: (ms from the POST sent, ms from its answer)."""
    name = body["metadata"]["name"]
    sent = time.time()
    core.create_namespaced_service(body["metadata"]["namespace"], body)
    answered = time.time()
    seen = watch.wait(name, timeout)
    return (seen - sent) * 1000, (seen - answered) * 1000

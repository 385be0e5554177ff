"""The lab: a real control plane plus a network of namespaces, and the actions tests need.

``Lab.up(LabConfig(...))`` builds everything and returns once the apiserver is ready, every Node
and Pod is registered and the ``echo`` Service's EndpointSlices list every pod. ``Lab.attach(slot)``
gives another process (the CLI) the same actions on a running lab. ``down()`` removes everything,
also from a lab whose owner crashed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from .binaries import bin_dir
from .cluster import LAB_LABEL, Cluster, Heartbeat, retry
from .controlplane import ControlPlane
from .netlab import NetError, Network, link_exists, list_netns
from .plan import (
    MAX_CLIENTS,
    MAX_GATEWAYS,
    MAX_NODES,
    MAX_PODS_PER_NODE,
    MAX_SLOTS,
    AddressPlan,
    Host,
    Pod,
    node_index,
    zone_of,
)
from .procs import Proc, netns_argv, pid_alive, terminate_pids

STATE_ROOT = Path(os.environ.get("PORTICO_LAB_STATE", "/run/portico"))
WORK_ROOT = Path(os.environ.get("PORTICO_LAB_WORK", "/tmp"))
ETCD_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else WORK_ROOT
POD_NAMESPACE = "default"
ECHO_LABELS = {"app": "echo", LAB_LABEL: "pod"}
ECHO_SERVICE = "echo"
ECHO_SCRIPT = Path(__file__).with_name("echo.py")
TERMINATING_GRACE = 3600


class LabError(RuntimeError):
    pass


@dataclass
class LabConfig:
    nodes: int = 3
    pods_per_node: int = 2
    zones: int = 2
    gateways: int = 1
    clients: int = 2
    slot: int | None = None  # None: the first free one


@dataclass
class LabState:
    """What another process needs to act on a running lab (``state.json``)."""

    slot: int
    config: dict[str, Any]
    owner_pid: int
    workdir: str
    kubeconfig: str = ""
    bin_dir: str = ""
    control_plane_pids: list[int] = field(default_factory=list)
    phase: str = "starting"
    timings: dict[str, float] = field(default_factory=dict)


def state_dir(slot: int) -> Path:
    return STATE_ROOT / f"lab-{slot}"


def read_state(slot: int) -> LabState | None:
    try:
        return LabState(**json.loads((state_dir(slot) / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


class Lab:
    def __init__(self, plan: AddressPlan, cfg: LabConfig, workdir: Path) -> None:
        self.plan = plan
        self.config = cfg
        self.workdir = workdir
        self.net = Network(plan)
        self.control_plane: ControlPlane | None = None
        self.heartbeat: Heartbeat | None = None
        self.procs: list[Proc] = []  # processes run against the lab (the operator): stopped first
        self._api: client.ApiClient | None = None
        self._cluster: Cluster | None = None
        self.state = LabState(
            slot=plan.slot, config=asdict(cfg), owner_pid=os.getpid(), workdir=str(workdir)
        )
        self.timings: dict[str, float] = {}

    # ======================================================================================
    # bring-up
    # ======================================================================================
    @classmethod
    def up(cls, cfg: LabConfig | None = None) -> Lab:
        cfg = cfg or LabConfig()
        _check_config(cfg)
        _check_privileges()
        bins = bin_dir()  # builds once if the cache is empty (minutes), else instant
        t0 = time.monotonic()
        plan = _claim_slot(cfg.slot)
        workdir = WORK_ROOT / f"portico-lab-{plan.slot}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        lab = cls(plan, cfg, workdir)
        lab.state.bin_dir = str(bins)
        lab._write_state()
        try:
            lab._bring_up(bins, t0)
        except BaseException:
            lab.down()
            raise
        return lab

    def _bring_up(self, bins: Path, t0: float) -> None:
        cfg, plan = self.config, self.plan
        cp = ControlPlane(plan, bins, self.workdir, ETCD_ROOT / f"portico-lab-{plan.slot}-etcd")
        self.control_plane = cp
        files = cp.write_pki()
        self.state.kubeconfig = str(files.kubeconfig)
        cp.start_apiserver()
        self.state.control_plane_pids = cp.pids()
        self._write_state()

        # The apiserver takes seconds to boot: build the network meanwhile.
        node_ids = list(range(1, cfg.nodes + 1))
        for i in node_ids:
            self.net.add_node(i)
        for i in node_ids:
            self.net.route_pod_cidrs(plan.node(i), node_ids, skip=i)
        for k in range(1, cfg.gateways + 1):
            self.net.add_gateway(k)
        for c in range(1, cfg.clients + 1):
            self.net.add_client(c, node_ids)
        pods = [plan.pod(i, j) for i in node_ids for j in range(1, cfg.pods_per_node + 1)]
        for pod in pods:
            self.net.add_pod(node_index(pod.node), pod)
            self._start_echo(pod)
        self.timings["network"] = time.monotonic() - t0

        cp.wait_ready(timeout=90)
        self.timings["readyz"] = time.monotonic() - t0
        cp.start_controller_manager()
        self.state.control_plane_pids = cp.pids()
        self._write_state()

        cluster = self.cluster
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda i: cluster.register_node(
                        plan.node(i),
                        zone_of(i, cfg.zones),
                        [str(plan.pod_cidr_v4(i)), str(plan.pod_cidr_v6(i))],
                    ),
                    node_ids,
                )
            )
        # The serviceaccounts controller creates this a few seconds after it starts; Pod admission
        # needs it. Creating it now (as kubeadm's addons do for theirs) saves those seconds.
        cluster.ensure_service_account("default", POD_NAMESPACE)
        self._ensure_echo_service()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: cluster.create_pod(p, POD_NAMESPACE, ECHO_LABELS), pods))
        self._wait_echo_listening(pods)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: self._report_pod(p, ready=True), pods))
        self.timings["registered"] = time.monotonic() - t0

        self.heartbeat = Heartbeat(cluster, self.nodes_up)
        self.heartbeat.start()
        self.wait_endpoints({p.name for p in pods}, timeout=60)
        self.timings["endpointslices"] = time.monotonic() - t0
        self.state.phase = "ready"
        self.state.timings = self.timings
        self._write_state()

    # ======================================================================================
    # attach (another process acting on a running lab)
    # ======================================================================================
    @classmethod
    def attach(cls, slot: int | None = None) -> Lab:
        slots = [slot] if slot is not None else list(range(MAX_SLOTS))
        for s in slots:
            st = read_state(s)
            if st is not None and st.phase == "ready" and pid_alive(st.owner_pid):
                lab = cls(AddressPlan(s), LabConfig(**st.config), Path(st.workdir))
                lab.state = st
                return lab
        raise LabError("no running lab" + (f" in slot {slot}" if slot is not None else ""))

    # ======================================================================================
    # access
    # ======================================================================================
    @property
    def kubeconfig(self) -> Path:
        return Path(self.state.kubeconfig)

    @property
    def bin_dir(self) -> Path:
        return Path(self.state.bin_dir)

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self.api)
        return self._cluster

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def node_names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.config.nodes + 1)]

    def nodes_up(self) -> list[str]:
        failed = self._failed_dir()
        return [n for n in self.node_names() if not (failed / n).exists()]

    def host(self, name: str) -> Host:
        kind, _, number = name.rpartition("-")
        if not number.isdigit():
            raise LabError(f"no lab host {name!r}")
        idx = int(number)
        hosts = {"node": self.plan.node, "gw": self.plan.gateway, "client": self.plan.client}
        if kind not in hosts:
            raise LabError(f"no lab host {name!r} (node-N, gw-N or client-N)")
        host = hosts[kind](idx)
        if host.netns not in list_netns():
            raise LabError(f"lab host {name!r} does not exist")
        return host

    def pod(self, name: str) -> Pod:
        m = re.fullmatch(r"echo-(\d+)-(\d+)", name)
        if not m:
            raise LabError(f"not a lab pod name: {name!r}")
        pod = self.plan.pod(int(m.group(1)), int(m.group(2)))
        if pod.netns not in list_netns():
            raise LabError(f"lab pod {name!r} does not exist")
        return pod

    def pods(self) -> list[Pod]:
        prefix = f"{self.plan.prefix}-"
        return [self.pod(n[len(prefix) :]) for n in self.net.namespaces() if "-echo-" in n]

    def netns_of(self, name: str) -> str:
        if name == "lan":
            return self.plan.lan_netns
        if name.startswith("echo-"):
            return self.pod(name).netns
        netns = self.host(name).netns
        assert netns is not None
        return netns

    # ======================================================================================
    # actions
    # ======================================================================================
    def exec(
        self, name: str, argv: Sequence[str], *, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside a lab host's or pod's network namespace."""
        return subprocess.run(
            netns_argv(self.netns_of(name), argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def add_pod(self, node: str, *, ready: bool = True) -> Pod:
        i = node_index(node)
        if node not in self.node_names():
            raise LabError(f"no lab node {node!r}")
        taken = [p.index for p in self.pods() if p.node == node]
        pod = self.plan.pod(i, max(taken, default=0) + 1)
        self.net.add_pod(i, pod)
        self._start_echo(pod)
        self.cluster.create_pod(pod, POD_NAMESPACE, ECHO_LABELS)
        self._wait_echo_listening([pod])
        self._report_pod(pod, ready=ready)
        return pod

    def set_pod_ready(self, name: str, ready: bool) -> None:
        self._report_pod(self.pod(name), ready=ready)

    def terminate_pod(self, name: str, grace_seconds: int = TERMINATING_GRACE) -> None:
        """The pod becomes Terminating (its process keeps running, as during a real grace
        period) until ``remove_pod``."""
        self.cluster.terminate_pod(self.pod(name).name, POD_NAMESPACE, grace_seconds)

    def remove_pod(self, name: str) -> None:
        pod = self.pod(name)
        self.cluster.remove_pod(pod.name, POD_NAMESPACE)
        self.net.remove_pod(pod)

    def fail_node(self, node: str, *, stop_heartbeat: bool = True) -> None:
        """Pulls the node's cable. Its kubelet stand-in stops renewing the Lease too (a cut-off
        kubelet cannot reach the apiserver), unless ``stop_heartbeat`` is False."""
        host = self.host(node)
        self.net.set_lan_link(host, up=False)
        if stop_heartbeat:
            self._failed_dir().mkdir(parents=True, exist_ok=True)
            (self._failed_dir() / node).touch()

    def restore_node(self, node: str) -> None:
        host = self.host(node)
        self.net.set_lan_link(host, up=True)
        (self._failed_dir() / node).unlink(missing_ok=True)
        self.cluster.renew_lease(node)
        self.cluster.set_node_ready(host, True)

    def add_gateway(self) -> Host:
        taken = set(self.net.namespaces())
        for k in range(1, 9):
            if self.plan.gateway(k).netns not in taken:
                return self.net.add_gateway(k)
        raise LabError("the lab has 8 gateways already")

    # ======================================================================================
    # waiting
    # ======================================================================================
    def wait_endpoints(
        self,
        ready: set[str],
        *,
        service: str = ECHO_SERVICE,
        timeout: float = 30,
    ) -> list[dict[str, Any]]:
        """Waits until the Service's EndpointSlices list exactly ``ready`` as ready pods."""
        disco = client.DiscoveryV1Api(self.api)
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            slices = disco.list_namespaced_endpoint_slice(
                POD_NAMESPACE, label_selector=f"kubernetes.io/service-name={service}"
            ).items
            seen = {
                ep.target_ref.name
                for s in slices
                for ep in (s.endpoints or [])
                if ep.conditions is not None
                and ep.conditions.ready
                and ep.target_ref is not None
                and ep.target_ref.name
            }
            if seen == ready:
                return [self.api.sanitize_for_serialization(s) for s in slices]
            time.sleep(0.05)
        raise LabError(f"EndpointSlices of {service} list {sorted(seen)}, want {sorted(ready)}")

    # ======================================================================================
    # teardown
    # ======================================================================================
    def down(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=15)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.control_plane is not None:
            self.control_plane.stop()
        _clean_slot(self.plan.slot, self.state)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ======================================================================================
    # internals
    # ======================================================================================
    def _failed_dir(self) -> Path:
        return state_dir(self.plan.slot) / "failed-nodes"

    def _write_state(self) -> None:
        d = state_dir(self.plan.slot)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(d / "state.json")

    def _start_echo(self, pod: Pod) -> None:
        log = self.workdir / "logs" / "pods" / f"{pod.name}.log"
        log.unlink(missing_ok=True)
        Proc(
            f"echo {pod.name}",
            [sys.executable, "-S", str(ECHO_SCRIPT), "--pod", pod.name, "--node", pod.node],
            log,
            netns=pod.netns,
            # Pods outlive the CLI call that added them; teardown kills them by namespace.
            tied_to_parent=False,
        ).start()

    def _wait_echo_listening(self, pods: list[Pod], timeout: float = 20) -> None:
        logs = {p.name: self.workdir / "logs" / "pods" / f"{p.name}.log" for p in pods}
        deadline = time.monotonic() + timeout
        pending = set(logs)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                try:
                    if "listening" in logs[name].read_text():
                        pending.discard(name)
                except OSError:
                    pass
            if pending:
                time.sleep(0.02)
        if pending:
            raise LabError(f"echo servers did not start: {sorted(pending)}")

    def _report_pod(self, pod: Pod, *, ready: bool) -> None:
        self.cluster.set_pod_status(pod, self.plan.node(node_index(pod.node)), POD_NAMESPACE, ready)

    def _ensure_echo_service(self) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ECHO_SERVICE, "namespace": POD_NAMESPACE},
            "spec": {
                "selector": {"app": "echo"},
                "ipFamilyPolicy": "PreferDualStack",
                "ports": [
                    {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                    {"name": "udp", "port": 8080, "targetPort": "udp", "protocol": "UDP"},
                ],
            },
        }
        retry(
            lambda: self.cluster.core.create_namespaced_service(POD_NAMESPACE, body),
            "create the echo Service",
        )


# ==========================================================================================
# slots
# ==========================================================================================
def _check_config(cfg: LabConfig) -> None:
    # The address plan's limits, so the two never disagree.
    for what, value, low, high in (
        ("nodes", cfg.nodes, 1, MAX_NODES),
        ("pods per node", cfg.pods_per_node, 0, MAX_PODS_PER_NODE),
        ("zones", cfg.zones, 1, 26),
        ("gateways", cfg.gateways, 0, MAX_GATEWAYS),
        ("clients", cfg.clients, 0, MAX_CLIENTS),
    ):
        if not low <= value <= high:
            raise LabError(f"{what} must be in {low}..{high}")


def _check_privileges() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (the lab creates network namespaces and veth links)")
    for tool in ("ip", "nsenter", "sysctl"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if problems:
        raise LabError("the lab cannot start: " + "; ".join(problems))


def _slot_is_stale(slot: int) -> bool:
    st = read_state(slot)
    return st is not None and not pid_alive(st.owner_pid)


def _claim_slot(wanted: int | None) -> AddressPlan:
    slots = [wanted] if wanted is not None else list(range(MAX_SLOTS))
    busy = []
    for s in slots:
        plan = AddressPlan(s)
        if link_exists(plan.host_link) or list_netns_with(plan.prefix):
            if not _slot_is_stale(s):
                busy.append(s)
                continue
            _clean_slot(s, read_state(s))
        try:
            Network(plan).create_lan()
        except NetError:
            busy.append(s)  # another process won the race
            continue
        return plan
    raise LabError(
        f"lab slot(s) {busy} are in use by running labs; `portico-lab down --all` removes them"
    )


def list_netns_with(prefix: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(prefix + "-")]


def _clean_slot(slot: int, st: LabState | None) -> None:
    """Removes every trace of a slot: processes, namespaces, links, state, etcd data."""
    if st is not None:
        ours = [p for p in st.control_plane_pids if _is_control_plane_process(p)]
        terminate_pids(ours, timeout=10)
    Network(AddressPlan(slot)).destroy()
    shutil.rmtree(ETCD_ROOT / f"portico-lab-{slot}-etcd", ignore_errors=True)
    shutil.rmtree(state_dir(slot), ignore_errors=True)
    if st is not None:
        # Keep the logs for a post-mortem; drop certificates and the rest.
        work = Path(st.workdir)
        for child in work.glob("*"):
            if child.name != "logs":
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def _is_control_plane_process(pid: int) -> bool:
    # A pid from a dead owner's state file may have been reused: check what it runs.
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(cmd.decode(errors="replace")).name in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    )


def stop_lab(slot: int, timeout: float = 60) -> bool:
    """Asks a slot's owner to tear its lab down, then removes whatever is left.

    Returns whether there was anything to stop."""
    st = read_state(slot)
    plan = AddressPlan(slot)
    present = st is not None or link_exists(plan.host_link) or bool(list_netns_with(plan.prefix))
    if st is not None and st.owner_pid != os.getpid() and pid_alive(st.owner_pid):
        terminate_pids([st.owner_pid], timeout=timeout)
    _clean_slot(slot, st)
    return present


@contextmanager
def running_lab(cfg: LabConfig | None = None) -> Iterator[Lab]:
    lab = Lab.up(cfg)
    try:
        yield lab
    finally:
        lab.down()

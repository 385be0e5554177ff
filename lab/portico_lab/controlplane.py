"""A real Kubernetes control plane on one machine: etcd, kube-apiserver, kube-controller-manager.

The apiserver listens on the lab host's LAN address, so that processes inside the lab's network
namespaces (node agents, gateways) reach it just as the test process in the root namespace does.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .certs import KeyPair, LabPKI, kubeconfig
from .plan import AddressPlan
from .procs import Proc, rss_kib

K8S_VERSION = "v1.34.2"


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class ControlPlaneFiles:
    kubeconfig: Path  # admin (system:masters)
    kcm_kubeconfig: Path
    ca: Path
    admin: KeyPair


class ControlPlane:
    def __init__(self, plan: AddressPlan, bin_dir: Path, workdir: Path, data_dir: Path) -> None:
        self.plan = plan
        self.bin = bin_dir
        self.workdir = workdir
        self.data_dir = data_dir  # etcd's data: tmpfs if possible
        self.logs = workdir / "logs"
        self.procs: dict[str, Proc] = {}
        self.files: ControlPlaneFiles | None = None

    @property
    def server(self) -> str:
        return f"https://{self.plan.host.ipv4}:{self.plan.apiserver_port}"

    # -- start -------------------------------------------------------------------------------
    def write_pki(self) -> ControlPlaneFiles:
        p = self.plan
        pki = LabPKI(self.workdir / "pki")
        first_service_v4 = str(p.service_cidr_v4.network_address + 1)
        apiserver = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_ips=[str(p.host.ipv4), str(p.host.ipv6), "127.0.0.1", first_service_v4],
            server_dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        admin = pki.issue("admin", "portico-lab-admin", orgs=["system:masters"])
        kcm = pki.issue("kcm", "system:kube-controller-manager")
        self._apiserver_pair = apiserver
        self._pki = pki
        files = ControlPlaneFiles(
            kubeconfig=self.workdir / "kubeconfig",
            kcm_kubeconfig=self.workdir / "kcm.kubeconfig",
            ca=pki.ca_cert,
            admin=admin,
        )
        files.kubeconfig.write_text(kubeconfig(self.server, pki.ca_cert, admin, "admin"))
        files.kcm_kubeconfig.write_text(
            kubeconfig(self.server, pki.ca_cert, kcm, "system:kube-controller-manager")
        )
        self.files = files
        return files

    def start(self) -> None:
        """Starts all three and returns once the apiserver is ready; see ``wait_ready``."""
        self.start_apiserver()
        self.wait_ready()
        self.start_controller_manager()

    def start_apiserver(self) -> None:
        p = self.plan
        files = self.files or self.write_pki()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        etcd_url = f"http://127.0.0.1:{p.etcd_client_port}"
        peer_url = f"http://127.0.0.1:{p.etcd_peer_port}"
        self.procs["etcd"] = Proc(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=lab",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=lab={peer_url}",
                "--listen-metrics-urls=",
                # The lab's etcd lives on tmpfs and dies with the lab: fsync buys nothing.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.logs / "etcd.log",
        ).start()
        pki = self._pki
        self.procs["kube-apiserver"] = Proc(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={p.host.ipv4}",
                f"--advertise-address={p.host.ipv4}",
                f"--secure-port={p.apiserver_port}",
                f"--tls-cert-file={self._apiserver_pair.cert}",
                f"--tls-private-key-file={self._apiserver_pair.key}",
                f"--client-ca-file={files.ca}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={p.service_cidr_v4},{p.service_cidr_v6}",
                "--service-node-port-range=30000-32767",
                "--authorization-mode=Node,RBAC",
                # The defaults of a real cluster (NamespaceLifecycle, LimitRanger, ServiceAccount,
                # DefaultTolerationSeconds, PodSecurity, ResourceQuota, webhooks, ...) plus the
                # NodeRestriction that kubeadm turns on.
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
                "--endpoint-reconciler-type=lease",
                "--event-ttl=1h",
                "--v=1",
            ],
            self.logs / "kube-apiserver.log",
        ).start()

    def start_controller_manager(self) -> None:
        assert self.files is not None
        pki = self._pki
        self.procs["kube-controller-manager"] = Proc(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={self.files.kcm_kubeconfig}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={self.files.ca}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-cluster-ip-range={self.plan.service_cidr_v4},{self.plan.service_cidr_v6}",
                "--v=1",
            ],
            self.logs / "kube-controller-manager.log",
        ).start()

    def ssl_context(self) -> ssl.SSLContext:
        assert self.files is not None
        ctx = ssl.create_default_context(cafile=str(self.files.ca))
        ctx.load_cert_chain(str(self.files.admin.cert), str(self.files.admin.key))
        return ctx

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        ctx = self.ssl_context()
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Polls /readyz until it answers 200; returns the seconds it took."""
        start = time.monotonic()
        last = "no answer"
        while time.monotonic() - start < timeout:
            for name, proc in self.procs.items():
                if not proc.alive():
                    raise ControlPlaneError(f"{name} exited:\n{proc.log_tail()}")
            try:
                status, body = self.get("/readyz", timeout=1.0)
                if status == 200:
                    return time.monotonic() - start
                last = f"{status}: {body[-300:]}"
            except (OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f}s: {last}")

    # -- facts -------------------------------------------------------------------------------
    def rss_kib(self) -> dict[str, int]:
        return {name: rss_kib(p.pid) for name, p in self.procs.items() if p.alive()}

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.popen is not None]

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        # Controllers first, etcd last, so nothing logs a storm of connection errors on the way.
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.get(name)
            if proc is not None:
                proc.stop(timeout=10)

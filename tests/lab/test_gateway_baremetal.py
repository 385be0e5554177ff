"""The bare-metal gateway as docs/gateway-baremetal.md sets it up, as far as the lab allows (no
systemd runs here): the RBAC rendered from the chart with the page's `helm template` line and
applied to the lab's real API server, the kubeconfig written by deploy/gateway's script from
the token the cluster put in the Secret, and `portico-lbnode` started as
deploy/gateway/portico-gateway.service would start it: its ExecStart, the environment of its
EnvironmentFile (deploy/gateway/gateway.env, the lab's values substituted), its user (an
unprivileged one here) and capabilities, in the lab's gateway namespace. A client is answered
through the VIP it serves."""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from portico_common.flagenv import env_var_for
from portico_lab.lab import Lab
from portico_lab.portico import SYSTEM_NAMESPACE
from portico_lab.procs import Proc

from ..unit.charts.test_manifests import CHART, KUBE_VERSION
from ..unit.packaging.product import pyproject
from .dataplane_harness import (
    answered,
    create,
    deleting_services,
    family_spec,
    http,
    running_agents,
    running_operator,
)
from .operator_harness import NS, Api, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "gateway"
UNIT = DEPLOY / "portico-gateway.service"
ENV_FILE = DEPLOY / "gateway.env"
SYSCTLS = DEPLOY / "99-portico-gateway.conf"
KUBECONFIG_SCRIPT = DEPLOY / "gateway-kubeconfig.sh"
DOC = REPO / "docs" / "gateway-baremetal.md"

GATEWAY = "gw-1"  # the lab's gateway host
BLOCK = 120  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)
SERVICE = "baremetal"
# Who the unit's User= stands for here: an unprivileged user that exists on the test machine.
UNPRIVILEGED = "nobody"
# What systemd gives a service besides its EnvironmentFile (systemd.exec(5)).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPABILITY_BITS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


# -- reading the files as systemd does ---------------------------------------------------------
def unit_directives(path: Path = UNIT) -> dict[str, list[str]]:
    """``Section.Key`` -> its values, in order (systemd's unit syntax: no continuation lines
    in ours)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a directive: {raw!r}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def one(directives: dict[str, list[str]], key: str) -> str:
    values = directives.get(key, [])
    assert len(values) == 1, (key, values)
    return values[0]


def environment_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The variables an EnvironmentFile= sets (KEY=VALUE lines; # comments; quotes removed)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}: {raw!r}"
        env[key] = value.strip().strip("'\"")
    return env


def commented_variables(path: Path = ENV_FILE) -> set[str]:
    return set(re.findall(r"^#(PORTICO_[A-Z0-9_]+)=", path.read_text(), re.M))


def gateway_variables() -> set[str]:
    """Every variable `portico-lbnode --help` names (each flag's [env ...])."""
    proc = subprocess.run(
        [sys.executable, "-m", "portico_lbnode", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(re.findall(r"\bPORTICO_[A-Z0-9_]+", proc.stdout))


def setpriv_argv(directives: dict[str, list[str]], user: str) -> list[str]:
    """The unit's User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=, as
    setpriv(1) does them (what systemd does before it executes ExecStart)."""
    ambient = one(directives, "Service.AmbientCapabilities").split()
    bounding = one(directives, "Service.CapabilityBoundingSet").split()
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in ambient)
    entry = pwd.getpwnam(user)
    argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
    argv += [
        "--bounding-set=-all," + ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in bounding)
    ]
    if one(directives, "Service.NoNewPrivileges") in ("yes", "true", "1", "on"):
        argv.append("--no-new-privs")
    return argv


def program_argv(directives: dict[str, list[str]]) -> list[str]:
    """ExecStart, the installed entry point replaced by the work tree's same function."""
    argv = shlex.split(one(directives, "Service.ExecStart"))
    script = Path(argv[0]).name
    assert pyproject()["project"]["scripts"][script] == "portico_lbnode.main:main", argv
    return [sys.executable, "-m", "portico_lbnode", *argv[1:]]


# -- the files ----------------------------------------------------------------------------------
def test_the_unit_runs_the_installed_gateway_from_its_env_file() -> None:
    d = unit_directives()
    assert program_argv(d)[3:] == []  # every setting comes from the EnvironmentFile
    assert one(d, "Service.ExecStart") == "/opt/portico/bin/portico-lbnode"
    assert one(d, "Service.EnvironmentFile") == "/etc/portico/gateway.env"
    assert one(d, "Service.Restart") == "always"
    assert "network-online.target" in one(d, "Unit.After").split()
    assert one(d, "Service.User") != "root"
    assert set(one(d, "Service.AmbientCapabilities").split()) == set(CAPABILITY_BITS)
    assert set(one(d, "Service.CapabilityBoundingSet").split()) == set(CAPABILITY_BITS)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify checks every directive and value (an unknown one is a warning,
    so the test wants no output at all) and that ExecStart is executable: a copy whose
    ExecStart is the test virtualenv's portico-lbnode, the same entry point."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian: apt-get install systemd)"
    installed = Path(sys.executable).parent / "portico-lbnode"
    assert os.access(installed, os.X_OK), installed
    text = UNIT.read_text()
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace("ExecStart=/opt/portico/bin/portico-lbnode", f"ExecStart={installed}")
    )
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_the_example_config_names_every_gateway_flag() -> None:
    """gateway.env: every flag a gateway is configured by (not the one-off --cleanup), each by
    the variable the program reads, so a copy of the file has no name the program ignores."""
    in_file = set(environment_file()) | commented_variables()
    assert in_file == gateway_variables() - {env_var_for("--cleanup")}
    assert {"PORTICO_INTERFACE", "PORTICO_KUBECONFIG"} <= set(environment_file())


def test_the_sysctl_file_applies(tmp_path: Path) -> None:
    """In a network namespace of its own (net.* sysctls are per namespace): every line is a
    sysctl this kernel has, and IPv4 forwarding is on after it."""
    script = f"sysctl -q -p {shlex.quote(str(SYSCTLS))} && sysctl -n net.ipv4.ip_forward"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


# -- the gateway in the lab -------------------------------------------------------------------
def kubectl(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(lab.bin_dir / "kubectl"), f"--kubeconfig={lab.kubeconfig}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def documented_rbac_render(lab: Lab) -> list[str]:
    """The page's `helm template` line, run with the lab's helm on this chart for the lab's
    Kubernetes version."""
    lines = [ln for ln in DOC.read_text().splitlines() if ln.startswith("helm template ")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0].partition(">")[0])
    assert argv[3] == "charts/portico" and "--kube-version" in argv, argv
    argv[0], argv[3] = str(lab.bin_dir / "helm"), str(CHART)
    argv[argv.index("--kube-version") + 1] = KUBE_VERSION
    return argv


@contextmanager
def gateway_rbac(lab: Lab) -> Iterator[str]:
    """The chart's gateway RBAC and token Secret, applied as the page says; the Secret's name.
    Everything it made is deleted afterwards."""
    render = subprocess.run(documented_rbac_render(lab), capture_output=True, text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    assert "kind: ClusterRole\n" in render.stdout and "service-account-token" in render.stdout
    try:
        applied = kubectl(lab, "apply", "-f", "-", stdin=render.stdout)
        assert applied.returncode == 0, applied.stderr
        secret = "portico-gateway-token"
        wait_for(
            lambda: (
                kubectl(
                    lab,
                    "-n",
                    SYSTEM_NAMESPACE,
                    "get",
                    "secret",
                    secret,
                    "-o",
                    "jsonpath={.data.token}",
                ).stdout
            ),
            "the token controller fills the gateway's Secret",
            30,
        )
        yield secret
    finally:
        kubectl(lab, "delete", "-f", "-", "--ignore-not-found", "--wait=false", stdin=render.stdout)


def write_kubeconfig(lab: Lab, where: Path) -> Path:
    """deploy/gateway/gateway-kubeconfig.sh, run as an administrator of the lab would."""
    out = where / "gateway.kubeconfig"
    env = {
        **os.environ,
        "KUBECONFIG": str(lab.kubeconfig),
        "PATH": f"{lab.bin_dir}:{os.environ['PATH']}",
        "NAMESPACE": SYSTEM_NAMESPACE,
    }
    proc = subprocess.run(
        [str(KUBECONFIG_SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o077 == 0, "the token must not be readable by others"
    return out


@contextmanager
def readable_by(user: str) -> Iterator[Path]:
    """A directory the unprivileged user can read (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="portico-baremetal-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def unit_environment(kubeconfig: Path) -> dict[str, str]:
    """What the service's process gets: gateway.env with the lab's values, PATH as systemd
    sets it, and the work tree's packages on the path in place of /opt/portico."""
    env = environment_file()
    lab_values = {
        "PORTICO_INTERFACE": "eth0",  # the gateway host's LAN device
        "PORTICO_KUBECONFIG": str(kubeconfig),
        "PORTICO_NAME": GATEWAY,  # the host name is the test machine's
    }
    assert set(lab_values) <= set(env) | commented_variables()
    env.update(lab_values)
    tree = [REPO / d for d in ("common", "operator", "nodeagent", "lbnode")]
    return {**env, "PATH": SYSTEMD_PATH, "PYTHONPATH": ":".join(map(str, tree))}


def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_the_gateway_serves_a_vip_as_the_unit_runs_it(lab: Lab, api: Api) -> None:
    directives = unit_directives()
    log = lab.workdir / "logs" / "lbnode-baremetal.log"
    with ExitStack() as stack:
        secret = stack.enter_context(gateway_rbac(lab))
        assert secret.endswith("-token")
        where = stack.enter_context(readable_by(UNPRIVILEGED))
        kubeconfig = write_kubeconfig(lab, where)
        # As the page installs it: root:portico-gateway 0640 (here: the unprivileged user's group).
        shutil.chown(kubeconfig, "root", pwd.getpwnam(UNPRIVILEGED).pw_gid)
        kubeconfig.chmod(0o640)
        env = unit_environment(kubeconfig)
        stack.enter_context(running_operator(lab, api, "baremetal", BLOCK, "op-bm"))
        stack.enter_context(running_agents(lab))
        proc = Proc(
            "portico-lbnode-baremetal",
            [*setpriv_argv(directives, UNPRIVILEGED), *program_argv(directives)],
            log,
            netns=lab.netns_of(GATEWAY),
            env=env,
        )
        start = log.stat().st_size if log.exists() else 0

        def stop_and_clean() -> None:
            proc.stop()
            lab.exec(GATEWAY, [sys.executable, "-m", "portico_lbnode", "--cleanup"])
            lab.kubectl("delete", "gatewayreport", GATEWAY, "--ignore-not-found", check=False)

        stack.callback(stop_and_clean)
        proc.start()
        names = stack.enter_context(deleting_services(api))
        create(api, names, SERVICE, externalTrafficPolicy="Local", **family_spec(4))
        ip = wait_for(
            lambda: (
                api.core.read_namespaced_service(SERVICE, NS).status.load_balancer.ingress or [None]
            )[0],
            "an address for the Service",
            30,
        ).ip
        v4 = ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address + 32 * BLOCK}/27")
        assert ipaddress.ip_address(ip) in v4

        def owner() -> str:
            return lab.kubectl(
                "get",
                "loadbalancer",
                "-n",
                NS,
                SERVICE,
                "-o",
                "jsonpath={.status.ownerGateway}",
                check=False,
            ).stdout.strip()

        wait_for(lambda: owner() == GATEWAY, "the LoadBalancer names the gateway its owner", 30)
        answer = wait_for(lambda: answered(lab, "client-1", ip), "an answer through the VIP", 20)
        assert answer["client_ip"] == str(lab.host("client-1").ipv4)

        # It ran as the unit says: not root, with exactly the unit's capabilities.
        assert proc.alive(), proc.log_tail()
        pid = proc.pid
        uid = pwd.getpwnam(UNPRIVILEGED).pw_uid
        assert status_field(pid, "Uid").split() == [str(uid)] * 4
        effective = int(status_field(pid, "CapEff"), 16)
        assert effective == sum(1 << b for b in CAPABILITY_BITS.values()), hex(effective)
        assert status_field(pid, "NoNewPrivs") == "1"

        # Its metrics on the env file's port, in its namespace; its report; no 403 met.
        port = int(env["PORTICO_METRICS_PORT"])
        metrics = http(lab, GATEWAY, "127.0.0.1", port, "/metrics")
        assert metrics.get("status") == 200 and "# TYPE" in metrics["body"], metrics
        assert lab.kubectl("get", "gatewayreport", GATEWAY, check=False).returncode == 0
        written = log.read_bytes()[start:].decode(errors="replace")
        assert "forbidden" not in written.lower(), written[-2000:]


def test_a_bad_variable_stops_the_gateway_at_start(lab: Lab) -> None:
    """A typo in /etc/portico/gateway.env: the program exits at once, naming the variable,
    before it touches the network (systemd would log it and retry)."""
    env = {**environment_file(), "PORTICO_METRICS_PORT": "94650x"}
    env["PYTHONPATH"] = ":".join(str(REPO / d) for d in ("common", "lbnode"))
    proc = lab.exec(
        GATEWAY,
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *program_argv(unit_directives())],
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "PORTICO_METRICS_PORT='94650x'" in proc.stderr

"""The Helm chart against the lab's real apiserver: every rendered values set passes
`kubectl apply --dry-run=server` (admission, schemas, the CRDs' validation), and the chart's
RBAC, applied for real, lets each ServiceAccount do exactly what its code does (the apiserver's
RBAC authorizer decides, through `kubectl auth can-i`). The outside gateway's kubeconfig is made
with the steps NOTES.txt prints, from the token the cluster put in the chart's Secret. The
CRDs are templates of the release: installed on a cluster without them, upgraded to a chart
that adds a field, kept (with the user's VIPPools) by `helm uninstall`. The pools of `pools`
come with that same first install: the operator, as the chart runs it and under its token,
makes them from the chart's ConfigMap, deletes one an upgrade drops, leaves a user's pool of
a listed name alone (an Event), and keeps them when the release goes."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from portico_lab.lab import Lab
from portico_lab.portico import (
    SYSTEM_NAMESPACE,
    gateway_names,
    install_crds,
    wait_gateway_status,
)

from ..unit.charts.test_gateway_chart import GATEWAY_ACCESS, notes
from ..unit.charts.test_manifests import (
    BASE_VALUES,
    CHART,
    CRD_FILES,
    KUBE_VERSION,
    NODE_AGENT_ACCESS,
    load,
)
from .dataplane_harness import (
    answered,
    create,
    deleting_services,
    family_spec,
    running_agents,
    running_gateway,
)
from .operator_harness import NS, Api, OperatorProcess, wait_for

NAMESPACE = "portico-chart-test"
# Names of their own (nameOverride): nothing here collides with what other lab tests install.
NAME = "chart-test"
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:{NAME}-operator"
AGENT_SA = f"system:serviceaccount:{NAMESPACE}:{NAME}-node-agent"
GATEWAY_SA = f"system:serviceaccount:{NAMESPACE}:{NAME}-gateway"
CRD_NAMES = sorted(load(path)["metadata"]["name"] for path in CRD_FILES.values())

VALUE_SETS = {
    "default": [],
    "gateway-outside": ["--set", "gateway.enabled=false"],
    "no-kube-proxy-port": ["--set", "nodeAgent.kubeProxyHealthzPort=0"],
    "own-ports": [
        "--set",
        "nodeAgent.healthPort=10300",
        "--set",
        "nodeAgent.kubeProxyHealthzPort=10256",
        "--set",
        "nodeAgent.metricsPort=9470",
        "--set",
        "gateway.metricsPort=0",
        "--set",
        "grafanaDashboard.enabled=true",
    ],
    "crds-apart": ["--set", "crds.enabled=false"],
    "probes-off-one-replica-pools": [
        "--set",
        "nodeAgent.healthPort=0",
        "--set",
        "operator.replicas=1",
        "--set",
        "pools[0].name=chart-test-lan",
        "--set",
        "pools[0].addresses[0]=198.18.40.0/28",
        "--set",
        "pools[0].addresses[1]=fd00:18::40:0/124",
        "--set",
        "gateway.name=gw-chart",
        "--set",
        "gateway.tolerations[0].operator=Exists",
    ],
}


def helm_template(lab: Lab, *args: str, crds: bool = True) -> str:
    """`helm template` as `helm install` renders it here."""
    argv = [str(lab.bin_dir / "helm"), "template", NAME, str(CHART), "--namespace", NAMESPACE]
    argv += [
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(BASE_VALUES),
        "--set",
        f"nameOverride={NAME}",
    ]
    proc = subprocess.run(
        [*argv, *([] if crds else ["--set", "crds.enabled=false"]), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def kubectl(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(lab.bin_dir / "kubectl"), f"--kubeconfig={lab.kubeconfig}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def namespace(lab: Lab, api: object) -> Iterator[str]:
    """The CRDs (the api fixture) and a namespace of the test's own, removed afterwards with
    every cluster-scoped object the tests applied."""
    kubectl(lab, "create", "namespace", NAMESPACE)
    try:
        yield NAMESPACE
    finally:
        kubectl(
            lab,
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            f"app.kubernetes.io/instance in ({NAME},{NAME}-rel,{NAME}-crd)",
            "--wait=false",
        )
        kubectl(lab, "delete", "namespace", NAMESPACE, "--wait=false")


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_server_dry_run(lab: Lab, namespace: str, values: str) -> None:
    manifest = helm_template(lab, *VALUE_SETS[values])
    proc = kubectl(lab, "apply", "--dry-run=server", "-f", "-", stdin=manifest)
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if line.strip()]
    assert applied and all(line.endswith("(server dry run)") for line in applied), proc.stdout
    objects = {line.split()[0] for line in applied}
    kinds = {o.split("/")[0] for o in objects}
    assert "deployment.apps" in kinds and "daemonset.apps" in kinds
    assert (
        "clusterrole.rbac.authorization.k8s.io" in kinds
    ) and "role.rbac.authorization.k8s.io" in kinds
    if values == "own-ports":  # the Grafana dashboard's ConfigMap, accepted
        assert f"configmap/{NAME}-dashboard" in objects, objects
    if values == "gateway-outside":
        assert f"secret/{NAME}-gateway-token" in objects
        assert f"statefulset.apps/{NAME}-gateway" not in objects
    else:
        assert f"statefulset.apps/{NAME}-gateway" in objects
    # The pools go into a ConfigMap (the operator makes them VIPPools), never a VIPPool.
    assert f"configmap/{NAME}-pools" in objects, objects
    assert not [o for o in objects if o.startswith("vippool")]
    # Nothing was made.
    assert kubectl(lab, "-n", namespace, "get", "deploy,ds,role", "-o", "name").stdout == ""


def can_i(lab: Lab, verb: str, resource: str, *args: str) -> bool:
    proc = kubectl(lab, "auth", "can-i", verb, resource, *args)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def may(lab: Lab, who: str, group: str, resource: str, verb: str, *where: str) -> bool:
    name, _, sub = resource.partition("/")
    args = [f"--subresource={sub}"] if sub else []
    return can_i(lab, verb, f"{name}.{group}" if group else name, "--as", who, *args, *where)


def test_rbac_applied_allows_what_the_code_does(lab: Lab, namespace: str) -> None:
    rbac = ["templates/rbac.yaml", "templates/serviceaccount.yaml"]
    rbac += ["templates/nodeagent-rbac.yaml", "templates/nodeagent-serviceaccount.yaml"]
    rbac += ["templates/gateway-rbac.yaml"]
    shown = [a for t in rbac for a in ("--show-only", t)]
    proc = kubectl(lab, "apply", "-f", "-", stdin=helm_template(lab, *shown, crds=False))
    assert proc.returncode == 0, proc.stderr

    # The gateway and the node agent: exactly their code's calls, cluster-wide.
    for who, access in ((GATEWAY_SA, GATEWAY_ACCESS), (AGENT_SA, NODE_AGENT_ACCESS)):
        for group, resource, verb in sorted(access):
            assert may(lab, who, group, resource, verb, "-A"), (who, resource, verb)
        resources = {(g, r) for g, r, _ in access}
        for group, resource in resources:
            for verb in ("delete", "update", "deletecollection"):
                if (group, resource, verb) not in access:
                    assert not may(lab, who, group, resource, verb, "-A"), (who, resource, verb)
        assert not may(lab, who, "", "secrets", "get", "-A")
    assert not may(lab, GATEWAY_SA, "portico.dev", "loadbalancers", "update", "-A")
    assert not may(lab, GATEWAY_SA, "portico.dev", "gatewayreports", "list", "-A")

    # The operator's Lease: in the release namespace only.
    for verb in ("get", "watch", "create", "update"):
        assert may(lab, OPERATOR_SA, "coordination.k8s.io", "leases", verb, "-n", namespace)
        assert not may(lab, OPERATOR_SA, "coordination.k8s.io", "leases", verb, "-n", "default")
    assert not may(lab, OPERATOR_SA, "coordination.k8s.io", "leases", "delete", "-n", namespace)
    assert may(lab, OPERATOR_SA, "portico.dev", "gatewayreports", "watch", "-A")

    # The pools ConfigMap: that one, in the release namespace, read only.
    for verb in ("get", "list", "watch"):
        assert can_i(lab, verb, f"configmaps/{NAME}-pools", "--as", OPERATOR_SA, "-n", namespace)
        assert not can_i(lab, verb, "configmaps/other", "--as", OPERATOR_SA, "-n", namespace)
        assert not can_i(lab, verb, f"configmaps/{NAME}-pools", "--as", OPERATOR_SA)
    assert not can_i(
        lab, "update", f"configmaps/{NAME}-pools", "--as", OPERATOR_SA, "-n", namespace
    )


def test_outside_gateway_kubeconfig_from_notes(lab: Lab, namespace: str, tmp_path: Path) -> None:
    """gateway.enabled=false: the Secret gets a token; NOTES.txt's steps make a kubeconfig that
    reads the LoadBalancers and nothing else."""
    manifest = helm_template(
        lab,
        "--set",
        "gateway.enabled=false",
        "--show-only",
        "templates/gateway-rbac.yaml",
        crds=False,
    )
    proc = kubectl(lab, "apply", "-f", "-", stdin=manifest)
    assert proc.returncode == 0, proc.stderr
    secret = f"{NAME}-gateway-token"
    deadline = time.monotonic() + 30
    while not kubectl(
        lab, "-n", namespace, "get", "secret", secret, "-o", "jsonpath={.data.token}"
    ).stdout:
        assert time.monotonic() < deadline, "the token controller never filled the Secret"
        time.sleep(0.2)

    text = notes(
        lab.bin_dir / "helm",
        tmp_path / "chart",
        "--namespace",
        NAMESPACE,
        "--set",
        f"nameOverride={NAME}",
        "--set",
        "gateway.enabled=false",
    )
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("TOKEN="))
    last = next(i for i, line in enumerate(lines) if "portico-lbnode --kubeconfig" in line)
    script = "set -eu\n" + "\n".join(line.strip() for line in lines[first:last]) + "\n"
    env = {
        **os.environ,
        "KUBECONFIG": str(lab.kubeconfig),
        "PATH": f"{lab.bin_dir}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, script + proc.stdout + proc.stderr
    gateway_kubeconfig = tmp_path / "gateway.kubeconfig"
    assert gateway_kubeconfig.is_file()

    def as_gateway(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(lab.bin_dir / "kubectl"), f"--kubeconfig={gateway_kubeconfig}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    whoami = as_gateway("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == GATEWAY_SA, whoami.stderr
    listed = as_gateway("get", "loadbalancers.portico.dev", "-A")
    assert listed.returncode == 0, listed.stderr
    refused = as_gateway("get", "secrets", "-n", namespace)
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    refused = as_gateway("get", "vippools.portico.dev")
    assert refused.returncode != 0 and "forbidden" in refused.stderr


def run_helm(lab: Lab, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """helm against the lab, in the test's namespace, with caches of the test's own."""
    env = {
        **os.environ,
        "KUBECONFIG": str(lab.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }
    argv = [str(lab.bin_dir / "helm"), *args, "--namespace", NAMESPACE]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_helm_install_upgrade_uninstall(lab: Lab, namespace: str, tmp_path: Path) -> None:
    """The real install path on a cluster whose CRDs were applied apart (the api fixture's,
    as with an older chart's crds/ folder): the install adopts them (--take-ownership), helm
    checks kubeVersion and the schema against the lab's apiserver, creates every object (the
    pools' ConfigMap for the operator, no VIPPool), upgrades in place and uninstalls all it made
    but the CRDs. (No kubelet runs the pods: this is the API side only.)"""
    release = f"{NAME}-rel"
    pool = f"{release}-lan"

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run_helm(lab, tmp_path, *args)

    # Names of their own; the gateway's names come from nameOverride, not the release.
    base = ["-f", str(BASE_VALUES), "--set", f"nameOverride={release}"]
    base += ["--set", f"pools[0].name={pool}"]
    base += ["--set", "pools[0].addresses[0]=198.18.40.32/28"]
    label = f"app.kubernetes.io/instance={release}"
    try:
        typo = helm("install", release, str(CHART), *base, "--set", "nodeAgent.helthPort=1")
        assert typo.returncode != 0 and "helthPort" in typo.stderr
        owned = helm("install", release, str(CHART), *base)
        assert owned.returncode != 0 and "exists and cannot be imported" in owned.stderr
        proc = helm("install", release, str(CHART), *base, "--take-ownership")
        assert proc.returncode == 0, proc.stderr
        assert "single\npoint of failure" in proc.stdout  # NOTES.txt, as helm prints it
        owner = kubectl(lab, "get", "crd", "vippools.portico.dev", "-o", "jsonpath={.metadata}")
        assert f'"meta.helm.sh/release-name":"{release}"' in owner.stdout
        assert '"helm.sh/resource-policy":"keep"' in owner.stdout
        assert f"from the ConfigMap {release}-pools" in proc.stdout
        listed = kubectl(
            lab, "-n", namespace, "get", "cm", f"{release}-pools", "-o", "jsonpath={.data}"
        )
        assert listed.returncode == 0, listed.stderr
        assert yaml.safe_load(json.loads(listed.stdout)["pools.yaml"]) == [
            {"name": pool, "addresses": ["198.18.40.32/28"]}
        ]
        deploy = kubectl(
            lab, "-n", namespace, "get", "sts", f"{release}-gateway", "-o", "jsonpath={.spec}"
        )
        assert deploy.returncode == 0, deploy.stderr
        assert (
            '"replicas":1' in deploy.stdout
            and '"podManagementPolicy":"OrderedReady"' in deploy.stdout
        )
        proc = helm("upgrade", release, str(CHART), *base, "--set", "gateway.logLevel=debug")
        assert proc.returncode == 0, proc.stderr
        assert "REVISION: 2" in proc.stdout
        proc = helm("uninstall", release, "--wait", "--timeout", "30s")
        assert proc.returncode == 0, proc.stderr
        left = kubectl(
            lab, "get", "clusterrole,clusterrolebinding,vippool", "-l", label, "-o", "name"
        )
        assert left.stdout == ""
        kinds = "deploy,ds,sa,role,rolebinding,pdb,svc,secret,cm"
        left = kubectl(lab, "-n", namespace, "get", kinds, "-l", label, "-o", "name")
        assert left.stdout == ""
        assert "kept due to the resource policy" in proc.stdout
        for name in CRD_NAMES:
            assert kubectl(lab, "get", "crd", name).returncode == 0, name
    finally:
        helm("uninstall", release, "--ignore-not-found")
        kubectl(lab, "delete", "vippool", pool, "--ignore-not-found")


def chart_without_priority(tmp_path: Path) -> Path:
    """A copy of the chart (links followed) whose VIPPool CRD lacks spec.priority: an older
    chart for the upgrade to bring the field."""
    old = tmp_path / "old-chart"
    shutil.copytree(CHART, old)
    path = old / "files" / "crds" / CRD_FILES["VIPPool"].name
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["priority"]
    version["additionalPrinterColumns"] = [
        c for c in version["additionalPrinterColumns"] if c["jsonPath"] != ".spec.priority"
    ]
    path.write_text(yaml.safe_dump(crd))
    return old


def delete_crds(lab: Lab) -> None:
    """Portico's CRDs deleted, for a cluster that never had Portico. Each is listed first, until
    the apiserver serves the list: a CRD deleted before its watch cache is ready (as right
    after the api fixture's apply updated it) can hang in Terminating for minutes, its finalizer
    told "could not list instances: storage is (re)initializing"."""
    deadline = time.monotonic() + 30
    for name in CRD_NAMES:
        while kubectl(lab, "get", name, "-A", "-o", "name").returncode != 0:
            assert time.monotonic() < deadline, f"{name} is never listed"
            time.sleep(0.05)
    gone = kubectl(lab, "delete", "crd", *CRD_NAMES, "--ignore-not-found", "--timeout=50s")
    assert gone.returncode == 0, gone.stderr


def user_pool(name: str, priority: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "portico.dev/v1alpha1",
            "kind": "VIPPool",
            "metadata": {"name": name},
            "spec": {"addresses": ["198.18.40.48/28"], "priority": priority},
        }
    )


def token_kubeconfig(lab: Lab, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig with the lab's server and CA and a TokenRequest token of the ServiceAccount
    ``account`` in ``namespace``, as the kubelet would mount it in the chart's pod."""
    token = kubectl(lab, "-n", namespace, "create", "token", account, "--duration", "1h")
    assert token.returncode == 0, token.stderr
    admin = yaml.safe_load(lab.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": account, "context": {"cluster": "lab", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def charts_operator(lab: Lab, release: str, tmp_path: Path) -> OperatorProcess:
    """A portico-operator with the pools flag as the release's Deployment gives it, under a
    token of the release's operator ServiceAccount (the chart's RBAC decides)."""
    deploy = kubectl(lab, "-n", NAMESPACE, "get", "deploy", f"{release}-operator", "-o", "json")
    assert deploy.returncode == 0, deploy.stderr
    (container,) = json.loads(deploy.stdout)["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    pools = cmd[cmd.index("--pools-configmap") + 1]
    assert pools == f"{NAMESPACE}/{release}-pools"
    kc = token_kubeconfig(lab, NAMESPACE, f"{release}-operator", tmp_path / "operator.kubeconfig")
    # --namespace: the release's, where the chart's Role lets it hold the Lease.
    extra = ["--kubeconfig", kc, "--namespace", NAMESPACE, "--pools-configmap", pools]
    return OperatorProcess(lab, f"op-{release}", *extra)


def test_crds_install_upgrade_and_stay_on_uninstall(
    lab: Lab, namespace: str, tmp_path: Path
) -> None:
    """On a cluster without Portico's CRDs: the install creates them, and the operator (as the
    chart runs it, under its token) the pools of `pools` from the chart's ConfigMap; `helm
    upgrade` to a chart whose VIPPool CRD has a new field updates the CRD in the apiserver (the
    field refused before, kept after), and the new values' pools replace the old (one deleted,
    one created; a user's pool of a listed name left alone, with an Event); `helm uninstall`
    keeps the CRDs, the user's VIPPool and the release's."""
    release = f"{NAME}-crd"
    pool, other, mine = f"{release}-lan", f"{release}-other", f"{release}-user"

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run_helm(lab, tmp_path, *args)

    def pool_field(name: str, path: str) -> str:
        got = kubectl(lab, "get", "vippool", name, "-o", f"jsonpath={path}")
        assert got.returncode == 0, got.stderr
        return got.stdout

    def made_from_values(name: str) -> bool:
        got = kubectl(lab, "get", "vippool", name, "-o", "jsonpath={.metadata.labels}")
        return got.returncode == 0 and '"portico.dev/managed-by-values":"true"' in got.stdout

    base = ["-f", str(BASE_VALUES), "--set", f"nameOverride={release}"]
    first = [*base, "--set", f"pools[0].name={pool}"]
    first += ["--set", "pools[0].addresses[0]=198.18.40.64/28"]
    # The second values: `pool` dropped, `other` new, `mine` a name the user's pool has.
    second = [*base, "--set", f"pools[0].name={other}"]
    second += ["--set", "pools[0].addresses[0]=198.18.40.80/28"]
    second += ["--set", f"pools[1].name={mine}", "--set", "pools[1].addresses[0]=198.18.40.96/28"]
    old = chart_without_priority(tmp_path)
    op: OperatorProcess | None = None

    def op_log(start: int) -> str:
        assert op is not None
        return op.log.read_bytes()[start:].decode(errors="replace")

    try:
        delete_crds(lab)
        proc = helm("install", release, str(old), *first)
        assert proc.returncode == 0, proc.stderr
        assert f"     {pool}: 198.18.40.64/28" in proc.stdout
        for name in CRD_NAMES:
            established = kubectl(lab, "wait", "--for=condition=Established", f"crd/{name}")
            assert established.returncode == 0, established.stderr
        # The old CRD has no priority: refused (kubectl's strict field validation), or pruned.
        refused = kubectl(lab, "apply", "-f", "-", stdin=user_pool(mine, 5))
        assert refused.returncode != 0 and 'unknown field "spec.priority"' in refused.stderr
        pruned = kubectl(lab, "apply", "--validate=false", "-f", "-", stdin=user_pool(mine, 5))
        assert pruned.returncode == 0, pruned.stderr
        assert pool_field(mine, "{.spec.priority}") == ""

        # The one install's pools, made by the operator from the chart's ConfigMap.
        op = charts_operator(lab, release, tmp_path)
        log_start = op.log.stat().st_size if op.log.exists() else 0
        op.start()
        wait_for(lambda: made_from_values(pool), f"the operator to create {pool}", 20)
        assert pool_field(pool, "{.spec.addresses}") == '["198.18.40.64/28"]'

        proc = helm("upgrade", release, str(CHART), *second)
        assert proc.returncode == 0, proc.stderr
        schema = kubectl(lab, "get", "crd", "vippools.portico.dev", "-o", "json")
        spec = json.loads(schema.stdout)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert "priority" in spec["properties"]["spec"]["properties"]
        # The apiserver serves the new schema a moment after the update.
        deadline = time.monotonic() + 20
        while kubectl(lab, "apply", "-f", "-", stdin=user_pool(mine, 5)).returncode != 0:
            assert time.monotonic() < deadline, "the upgraded CRD never took spec.priority"
            time.sleep(0.05)
        assert pool_field(mine, "{.spec.priority}") == "5"

        wait_for(lambda: made_from_values(other), f"the operator to create {other}", 20)
        wait_for(
            lambda: kubectl(lab, "get", "vippool", pool).returncode != 0,
            f"the operator to delete {pool}, no longer in the values",
            20,
        )

        def pools_events(reason: str) -> str:
            """The messages of the pools ConfigMap's Events of ``reason``."""
            return kubectl(
                lab,
                "-n",
                namespace,
                "get",
                "events",
                "--field-selector",
                f"involvedObject.name={release}-pools,reason={reason}",
                "-o",
                "jsonpath={.items[*].message}",
            ).stdout

        taken = wait_for(
            lambda: pools_events("PoolNameTaken"), "a PoolNameTaken Event on the ConfigMap", 20
        )
        assert f"VIPPool {mine} exists without the label" in taken
        # The user's pool, untouched.
        assert not made_from_values(mine)
        assert pool_field(mine, "{.spec.addresses}") == '["198.18.40.48/28"]'

        # A changed pool is updated, and a field the values drop goes (server-side apply).
        def set_pools_text(text: str) -> None:
            body = json.dumps({"data": {"pools.yaml": text}})
            patched = kubectl(
                lab,
                "-n",
                namespace,
                "patch",
                "cm",
                f"{release}-pools",
                "--type",
                "merge",
                "-p",
                body,
            )
            assert patched.returncode == 0, patched.stderr

        def set_pools(listed: object) -> None:
            set_pools_text(yaml.safe_dump(listed))

        set_pools([{"name": other, "addresses": ["198.18.40.80/29"], "priority": 7}])
        wait_for(lambda: pool_field(other, "{.spec.priority}") == "7", f"{other} updated", 20)
        assert pool_field(other, "{.spec.addresses}") == '["198.18.40.80/29"]'
        set_pools([{"name": other, "addresses": ["198.18.40.80/29"]}])
        wait_for(lambda: pool_field(other, "{.spec.priority}") == "", "priority removed", 20)
        assert made_from_values(other)

        # A list that does not parse: an Event, and every pool stays.
        set_pools_text("- name: [unclosed\n")
        wait_for(lambda: pools_events("InvalidPools"), "an InvalidPools Event on the ConfigMap", 20)
        assert made_from_values(other)
        # The chart's RBAC let it do all that (after the uninstall, its Lease Role is gone).
        assert "forbidden" not in op_log(log_start).lower()

        proc = helm("uninstall", release, "--wait", "--timeout", "30s")
        assert proc.returncode == 0, proc.stderr
        assert "kept due to the resource policy" in proc.stdout
        wait_for(
            lambda: "the VIPPools it made are kept" in op_log(log_start),
            "the operator to see the ConfigMap go",
            20,
        )
        for name in CRD_NAMES:
            assert kubectl(lab, "get", "crd", name).returncode == 0, name
        assert pool_field(mine, "{.spec.priority}") == "5"  # the user's pool, untouched
        assert made_from_values(other)  # the release's, kept too
    finally:
        if op is not None:
            op.stop()
        helm("uninstall", release, "--ignore-not-found")
        kubectl(lab, "delete", "vippool", mine, pool, other, "--ignore-not-found")
        # The session's CRDs back for the tests after this one (kubectl's, as the api fixture's).
        install_crds(lab)


# --- Portico under the chart's ServiceAccount tokens -----------------------------------------

E2E = "chart-e2e"  # nameOverride: ServiceAccounts and ClusterRoles of their own
E2E_BLOCK = 144  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)


def test_portico_runs_under_the_charts_service_accounts(
    lab: Lab, api: Api, namespace: str, tmp_path: Path
) -> None:
    """The operator, the node agents and the gateway each with a token of the chart's
    ServiceAccount (the apiserver enforces the chart's RBAC): a Service gets its address, the
    gateway's status and report are written, a client is answered through the gateway, and no
    program met a 403."""
    rbac = ["templates/rbac.yaml", "templates/serviceaccount.yaml"]
    rbac += ["templates/nodeagent-rbac.yaml", "templates/nodeagent-serviceaccount.yaml"]
    rbac += ["templates/gateway-rbac.yaml"]
    argv = [str(lab.bin_dir / "helm"), "template", E2E, str(CHART)]
    argv += ["--namespace", SYSTEM_NAMESPACE, "--kube-version", KUBE_VERSION]
    argv += ["-f", str(BASE_VALUES), "--set", f"nameOverride={E2E}"]
    argv += [a for t in rbac for a in ("--show-only", t)]
    rendered = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    label = f"app.kubernetes.io/instance={E2E}"
    gateway = gateway_names(lab)[0]
    try:
        applied = kubectl(lab, "apply", "-f", "-", stdin=rendered.stdout)
        assert applied.returncode == 0, applied.stderr
        op_kc = token_kubeconfig(lab, SYSTEM_NAMESPACE, f"{E2E}-operator", tmp_path / "op.kc")
        agent_kc = token_kubeconfig(lab, SYSTEM_NAMESPACE, f"{E2E}-node-agent", tmp_path / "a.kc")
        gw_kc = token_kubeconfig(lab, SYSTEM_NAMESPACE, f"{E2E}-gateway", tmp_path / "gw.kc")
        v4 = ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address + 32 * E2E_BLOCK}/27")
        api.create_pool(E2E, [str(v4)])
        # Later --kubeconfig arguments win over the harness's admin one.
        op = OperatorProcess(lab, "op-chart", "--kubeconfig", op_kc)
        logs = [op.log, lab.workdir / "logs" / f"lbnode-{gateway}.log"]
        logs += [lab.workdir / "logs" / f"node-agent-{n}.log" for n in lab.node_names()]
        # What this test's processes write, after what earlier ones left in the same files.
        sizes = {log: log.stat().st_size if log.exists() else 0 for log in logs}
        with ExitStack() as stack:
            stack.callback(api.delete_pool, E2E)
            stack.callback(op.stop)
            op.start()
            stack.enter_context(running_agents(lab, "--kubeconfig", agent_kc))
            stack.enter_context(running_gateway(lab, gateway, "--kubeconfig", gw_kc))
            names = stack.enter_context(deleting_services(api))
            create(api, names, E2E, externalTrafficPolicy="Local", **family_spec(4))
            ip = wait_for(
                lambda: (
                    api.core.read_namespaced_service(E2E, NS).status.load_balancer.ingress or [None]
                )[0],
                "an address from the operator under its token",
                30,
            ).ip
            wait_gateway_status(lab, NS, E2E, timeout=30)
            answer = wait_for(
                lambda: answered(lab, "client-1", ip), "an answer through the gateway", 20
            )
            assert answer["client_ip"] == str(lab.host("client-1").ipv4)
            report = kubectl(lab, "get", "gatewayreport", gateway, "-o", "name")
            assert report.returncode == 0, report.stderr
            nodeagents = kubectl(lab, "get", "nodeagents", "-o", "name").stdout.split()
            assert len(nodeagents) >= len(lab.node_names())
        for log, start in sizes.items():
            written = log.read_bytes()[start:].decode(errors="replace") if log.exists() else ""
            assert "forbidden" not in written.lower(), (log, written[-2000:])
    finally:
        kubectl(lab, "delete", "clusterrole,clusterrolebinding", "-l", label, "--wait=false")
        kubectl(lab, "-n", SYSTEM_NAMESPACE, "delete", "sa,role,rolebinding", "-l", label)

"""The chart's gateway (portico-lbnode), rendered with the pinned helm: exactly one, on the host
network of the labelled node, with only NET_ADMIN and NET_RAW and exactly the RBAC its code
uses; with gateway.enabled=false, only its ServiceAccount, RBAC and token for a gateway outside
the cluster. And values.schema.json: every value is in it, a typo fails `helm template`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_manifests import (
    BASE_VALUES,
    CHART,
    GROUP,
    KUBE_VERSION,
    REPO,
    helm,
    kube_calls,
    one,
    render,
    rule_triples,
    template,
)

__all__ = ["helm"]  # the fixture, used by name

LBNODE_SRC = REPO / "lbnode" / "portico_lbnode"

# What portico-lbnode does to the API, read from its code; its ClusterRole allows exactly this.
GATEWAY_ACCESS = {
    # gateway.py Gateway.watch_loop: list_and_watch(kube, lb_path(), ...), every namespace.
    (GROUP, "loadbalancers", "list"),
    (GROUP, "loadbalancers", "watch"),
    # gateway.py Gateway._write_status: kube.patch(lb_path(ns, name) + "/status", kind="apply").
    (GROUP, "loadbalancers/status", "patch"),
    # gwreport.py ReportWriter.run: kube.get(report_path(gateway)), the previous run's report.
    (GROUP, "gatewayreports", "get"),
    # gwreport.py ReportWriter._write: kube.create(report_path(), obj) when it is missing.
    (GROUP, "gatewayreports", "create"),
    # gwreport.py ReportWriter._write: kube.patch(report_path(gateway) + "/status", body);
    # ReportWriter.mark_stopped: the same patch, with stoppedTime, at a clean stop.
    (GROUP, "gatewayreports/status", "patch"),
}
# The KubeClient calls in the gateway's code behind GATEWAY_ACCESS: a new one needs the role
# (and the set above) changed too.
GATEWAY_KUBE_CALLS = Counter({"patch": 4, "get": 1, "create": 1, "list_and_watch": 1})
NODE_NAME = "node-from-downward-api"


def gateway_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = one(docs, "StatefulSet", "gateway")["spec"]["template"]["spec"]
    return pod


def gateway_args(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The container's command as portico-lbnode parses it in the pod (downward API filled in)."""
    from portico_lbnode.main import parse_args

    for name in ("GATEWAY_NAME", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    for e in container.get("env", []):
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
        else:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, e
            monkeypatch.setenv(e["name"], NODE_NAME)
    cmd = container["command"]
    assert cmd[0] == "portico-lbnode"
    assert "args" not in container
    return parse_args(cmd[1:])


def test_one_gateway_on_the_labelled_nodes_host_network(helm, monkeypatch):
    docs = render(helm)
    deploy = one(docs, "StatefulSet", "gateway")
    assert deploy["metadata"]["name"] == "portico-gateway"
    assert deploy["metadata"]["namespace"] == "portico-system"
    # Never two at once: one replica of a StatefulSet, whose gateway-0 is made again only once
    # the old one is gone (a Deployment replaces a pod that is merely marked for deletion).
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["podManagementPolicy"] == "OrderedReady"
    assert deploy["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    selector = deploy["spec"]["selector"]["matchLabels"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    for other in ("operator", "node-agent"):
        kind = "DaemonSet" if other == "node-agent" else "Deployment"
        assert not one(docs, kind, other)["spec"]["selector"]["matchLabels"].items() <= (
            labels.items()
        )

    pod = gateway_pod(docs)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"] == {"portico.dev/gateway": "true", "kubernetes.io/os": "linux"}
    assert "tolerations" not in pod
    sa = one(docs, "ServiceAccount", "gateway")
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "portico-gateway"
    assert sa["metadata"]["namespace"] == "portico-system"

    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/portico-lb/portico-gateway:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert sc["runAsUser"] == 0
    assert not sc.get("privileged")
    assert sc["allowPrivilegeEscalation"] is False
    assert "lifecycle" not in container  # a restart leaves the forwarding table in force
    assert "--cleanup" not in yaml.safe_dump(deploy)

    args = gateway_args(container, monkeypatch)
    assert args.interface == ["eth0"]
    assert args.name == NODE_NAME
    assert args.kubeconfig is None  # in-cluster credentials: its ServiceAccount
    assert not args.cleanup
    # It probes the agents on their own port, the one the chart gives them.
    agent = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args.node_health_port == int(agent[agent.index("--health-port") + 1]) == 10262
    assert args.metrics_port == 9465
    assert container["ports"] == [{"name": "metrics", "containerPort": 9465, "protocol": "TCP"}]


def test_the_interface_is_required(helm):
    proc = template(helm, interface=False)
    assert proc.returncode != 0
    assert "gateway.interface is required" in proc.stderr
    # Not without a gateway in the cluster.
    assert template(helm, "--set", "gateway.enabled=false", interface=False).returncode == 0


def test_no_value_makes_two_gateways(helm):
    proc = template(helm, "--set", "gateway.replicas=2")
    assert proc.returncode != 0
    assert "replicas" in proc.stderr


def test_gateway_values(helm, monkeypatch, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "image": {"tag": "op", "pullPolicy": "Always"},
                "nodeAgent": {"healthPort": 10300},
                "gateway": {
                    "interface": "bond0",
                    "name": "gw-1",
                    "zone": "zone-a",
                    "metricsPort": 0,
                    "logLevel": "debug",
                    "extraArgs": ["--interface", "eth1"],
                    "extraEnv": [{"name": "EXTRA", "value": "1"}],
                    "nodeSelector": {"portico.dev/gateway": "edge"},
                    "tolerations": [{"key": "gw", "operator": "Exists"}],
                    "priorityClassName": "high",
                    "serviceAccount": {"annotations": {"x": "z"}},
                },
            }
        )
    )
    docs = render(helm, "-f", str(values))
    pod = gateway_pod(docs)
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/portico-lb/portico-gateway:op"  # the chart's tag
    assert container["imagePullPolicy"] == "Always"
    args = gateway_args(container, monkeypatch)
    assert args.interface == ["bond0", "eth1"]
    assert (args.name, args.zone, args.log_level) == ("gw-1", "zone-a", "debug")
    assert (args.node_health_port, args.metrics_port) == (10300, 0)
    assert "ports" not in container
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert pod["nodeSelector"] == {"portico.dev/gateway": "edge", "kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "gw", "operator": "Exists"}]
    assert pod["priorityClassName"] == "high"
    assert one(docs, "ServiceAccount", "gateway")["metadata"]["annotations"] == {"x": "z"}

    docs = render(helm, "--set", "gateway.image.tag=gw", "--set", "nodeAgent.healthPort=0")
    (container,) = gateway_pod(docs)["containers"]
    assert container["image"] == "ghcr.io/portico-lb/portico-gateway:gw"
    assert "--node-health-port" not in container["command"]  # the agents offer none


def test_gateway_kube_calls_are_the_listed_ones():
    calls = kube_calls(LBNODE_SRC)
    assert calls == GATEWAY_KUBE_CALLS, "update GATEWAY_ACCESS and gateway-rbac.yaml"


@pytest.mark.parametrize("enabled", [True, False])
def test_gateway_rbac(helm, enabled):
    docs = render(helm, "--set", f"gateway.enabled={str(enabled).lower()}")
    role = one(docs, "ClusterRole", "gateway")
    assert role["metadata"]["name"] == "portico-gateway"
    assert rule_triples(role["rules"]) == GATEWAY_ACCESS
    sa = one(docs, "ServiceAccount", "gateway")
    binding = one(docs, "ClusterRoleBinding", "gateway")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "portico-gateway",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "portico-system"}
    ]
    for component in ("operator", "node-agent"):
        subjects = one(docs, "ClusterRoleBinding", component)["subjects"]
        assert all(s["name"] != sa["metadata"]["name"] for s in subjects)


def test_gateway_outside_the_cluster(helm):
    docs = render(helm, "--set", "gateway.enabled=false")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == [
        "portico-operator"
    ]
    gateway = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
    }
    assert gateway == {
        ("ServiceAccount", "portico-gateway"),
        ("ClusterRole", "portico-gateway"),
        ("ClusterRoleBinding", "portico-gateway"),
        ("Secret", "portico-gateway-token"),
    }
    secret = one(docs, "Secret", "gateway")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["namespace"] == "portico-system"
    assert secret["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": "portico-gateway"
    }
    docs = render(
        helm, "--set", "gateway.enabled=false", "--set", "gateway.external.tokenSecret=false"
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    # A gateway in the cluster has its pod's token: no long-lived one.
    assert not [d for d in render(helm) if d["kind"] == "Secret"]


def notes(helm: Path, tmp: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` skips it): a copy of the chart
    whose NOTES.txt is a ConfigMap's data, rendered by `tpl` with the same values."""
    chart = tmp / "portico"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds"))
    (chart / "templates" / "NOTES.txt").rename(chart / "notes.src")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "notes.src") . | quote }}}\n'
    )
    argv = [str(helm), "template", "portico", str(chart), "-n", "portico-system"]
    argv += ["--kube-version", KUBE_VERSION, "-f", str(BASE_VALUES)]
    argv += [*args, "--show-only", "templates/notes.yaml"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text: str = yaml.safe_load(proc.stdout)["data"]["notes"]
    return text


def test_notes_with_the_gateway(helm, tmp_path):
    text = notes(helm, tmp_path)
    assert "single\npoint of failure" in text
    assert "kubectl label node <node on the LAN> portico.dev/gateway=true" in text
    assert "on eth0" in text
    assert "gateway.kubeconfig" not in text


def test_notes_for_a_gateway_outside(helm, tmp_path):
    text = notes(helm, tmp_path, "--set", "gateway.enabled=false")
    assert "single\npoint of failure" in text
    assert "kubectl label node" not in text
    assert "get secret portico-gateway-token -o jsonpath='{.data.token}'" in text
    assert "portico-lbnode --kubeconfig gateway.kubeconfig" in text
    text = notes(
        helm,
        tmp_path / "b",
        "--set",
        "gateway.enabled=false",
        "--set",
        "gateway.external.tokenSecret=false",
    )
    assert "create token portico-gateway" in text
    assert "portico-gateway-token" not in text


# --- values.schema.json ----------------------------------------------------------------------

SCHEMA = CHART / "values.schema.json"


def schema_paths(schema: dict[str, Any], path: str = "") -> set[str]:
    """Every value path the schema names (array items as [])."""
    out = set()
    for name, sub in (schema.get("properties") or {}).items():
        out.add(f"{path}.{name}")
        out |= schema_paths(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out |= schema_paths(schema["items"], f"{path}[]")
    return out


def closed_objects(schema: dict[str, Any], path: str = ".") -> list[tuple[str, Any]]:
    """(path, additionalProperties) of every object node that lists properties."""
    out = []
    if "properties" in schema:
        out.append((path, schema.get("additionalProperties")))
        for name, sub in schema["properties"].items():
            out += closed_objects(sub, f"{path}{name}.")
    if isinstance(schema.get("items"), dict):
        out += closed_objects(schema["items"], f"{path}[].")
    return out


# Maps of Kubernetes' own types or of free keys: the schema types them, the apiserver checks them.
FREE_FORM = {"resources", "nodeSelector", "updateStrategy", "affinity", "annotations"}


def value_paths(values: Any, path: str = "") -> set[str]:
    """Every key path of values.yaml, not into free-form maps."""
    out = set()
    if isinstance(values, dict):
        for key, sub in values.items():
            out.add(f"{path}.{key}")
            if key not in FREE_FORM:
                out |= value_paths(sub, f"{path}.{key}")
    return out


def test_schema_covers_every_value():
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named = schema_paths(schema)
    declared = value_paths(values)
    assert declared <= named, declared - named
    # ... and names nothing values.yaml lacks (pools' items are documented in its comment).
    assert {p for p in named if "[]" not in p} <= value_paths(values)
    for path, extra in closed_objects(schema):
        assert extra is False, f"{path} accepts unknown keys"


@pytest.mark.parametrize(
    ("typo", "where", "key"),
    [
        ("nodeAgent.helthPort=10262", "/nodeAgent", "helthPort"),
        ("gateway.interfce=eth0", "/gateway", "interfce"),
        ("operator.replica=3", "/operator", "replica"),
        ("imag.tag=x", "", "imag"),
        (
            "pools[0].name=lan,pools[0].addresses[0]=198.18.32.0/24,pools[0].autoasign=true",
            "/pools/0",
            "autoasign",
        ),
        ("gateway.serviceAccount.nmae=x", "/gateway/serviceAccount", "nmae"),
    ],
)
def test_a_typo_fails_helm_template(helm, typo, where, key):
    proc = template(helm, "--set", typo)
    assert proc.returncode != 0
    assert f"at '{where}': additional properties '{key}' not allowed" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "bad",
    ["nodeAgent.healthPort=70000", "operator.logLevel=verbose", "gateway.enabled=yes"],
)
def test_a_wrong_type_or_range_fails_helm_template(helm, bad):
    proc = template(helm, "--set-string" if "yes" in bad else "--set", bad)
    assert proc.returncode != 0
    assert "schema" in proc.stderr


# --- ServiceMonitor / PodMonitor ---------------------------------------------------------------

MONITORING = ("--api-versions", "monitoring.coreos.com/v1")


def test_no_monitors_by_default(helm):
    kinds = {d["kind"] for d in render(helm, *MONITORING)}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_monitors_need_the_prometheus_operator(helm):
    proc = template(helm, "--set", "metrics.podMonitor.enabled=true")
    assert proc.returncode != 0
    assert "monitoring.coreos.com/v1" in proc.stderr
    proc = template(
        helm,
        *MONITORING,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
    )
    assert proc.returncode != 0
    assert "needs metrics.service.enabled" in proc.stderr


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_monitors_scrape_every_metrics_port(helm):
    docs = render(
        helm,
        *MONITORING,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prom",
        "--set",
        "nodeAgent.metricsPort=9470",
    )
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert labels_match(sm["spec"]["selector"], svc["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["portico-system"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}

    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["portico-system"]}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    scraped = []
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        template_ = d["spec"]["template"]
        if labels_match(pm["spec"]["selector"], template_["metadata"]["labels"]):
            (container,) = template_["spec"]["containers"]
            assert endpoint["port"] in {p["name"] for p in container["ports"]}
            scraped.append(d["metadata"]["name"])
    # The operator is the ServiceMonitor's: not scraped twice.
    assert sorted(scraped) == ["portico-gateway", "portico-node-agent"]

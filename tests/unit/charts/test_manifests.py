"""The CRDs and the Helm chart, checked without an API server: schemas are structural, printer
columns point at fields that exist, and the chart renders (with the pinned helm) what it should.

helm comes from the pinned control-plane cache; if it is missing these tests fail, never skip."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from portico_lab.binaries import bin_dir
from portico_operator.values_pools import desired_pools

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
CHART = REPO / "charts" / "portico"
GROUP = "portico.dev"
VERSION = "v1alpha1"

CRD_FILES = {
    "VIPPool": CRDS / "portico.dev_vippools.yaml",
    "LoadBalancer": CRDS / "portico.dev_loadbalancers.yaml",
    "NodeRules": CRDS / "portico.dev_noderules.yaml",
    "NodeAgent": CRDS / "portico.dev_nodeagents.yaml",
    "GatewayReport": CRDS / "portico.dev_gatewayreports.yaml",
}

# Fields of ObjectMeta a printer column may name (metadata has no schema of its own in a CRD).
OBJECT_META = {"name", "namespace", "creationTimestamp", "labels", "annotations", "generation"}


def load(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    return version_of(crd)["schema"]["openAPIV3Schema"]


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, the root included."""
    out = [(path or ".", schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}{{}}")
    return out


_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[[^\]]*\])*)")
_FILTER = re.compile(r"^\?\(@\.([A-Za-z0-9_]+)\s*==\s*\"[^\"]*\"\)$")


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    """The schema node a printer column's simple JSONPath points at; AssertionError if none.

    Understands `.a.b`, `.a[*]`, `.a[0]` and `.a[?(@.key=="value")]` (the key must exist)."""
    assert json_path.startswith("."), json_path
    parts = json_path[1:].split(".")
    # Re-join pieces split inside a filter's brackets, e.g. [?(@.type=="Valid")].
    segments: list[str] = []
    for part in parts:
        if segments and segments[-1].count("[") > segments[-1].count("]"):
            segments[-1] += "." + part
        else:
            segments.append(part)
    if segments[0] == "metadata":
        assert len(segments) == 2 and segments[1] in OBJECT_META, json_path
        return {"type": "string"}
    node = schema
    for seg in segments:
        m = _SEGMENT.fullmatch(seg)
        assert m, f"{json_path}: cannot parse {seg!r}"
        props = node.get("properties") or {}
        assert m.group(1) in props, f"{json_path}: no field {m.group(1)!r}"
        node = props[m.group(1)]
        for index in re.findall(r"\[([^\]]*)\]", m.group(2)):
            assert node.get("type") == "array", f"{json_path}: {m.group(1)} is not an array"
            node = node["items"]
            f = _FILTER.match(index)
            if f:
                assert f.group(1) in (node.get("properties") or {}), f"{json_path}: no {f[1]}"
            else:
                assert index == "*" or index.isdigit(), f"{json_path}: index {index!r}"
    return node


# --- CRDs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(CRD_FILES))
def crd(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(CRD_FILES[request.param])


def test_crd_files_are_the_only_yaml_at_top_level():
    # `kubectl apply -f crds/` does not recurse, so crds/examples/ is never applied with them.
    assert sorted(p.name for p in CRDS.glob("*.y*ml")) == sorted(p.name for p in CRD_FILES.values())
    for path in CRD_FILES.values():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path


def test_crd_identity(crd):
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{GROUP}"
    version = version_of(crd)
    assert version["name"] == VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_vippool_names_and_scope():
    crd = load(CRD_FILES["VIPPool"])
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "VIPPool",
        "vippools",
        ["vpool"],
    )
    assert crd["spec"]["scope"] == "Cluster"


# Resource names of the projects Portico is installed beside: Calico (crd.projectcalico.org and
# its projectcalico.org/v3 API server), Cilium (cilium.io, with its short names) and MetalLB
# (metallb.io, old AddressPool included). kubectl resolves a bare name across every group, so a
# shared plural or short name makes `kubectl get <name>` answer with the other project's objects.
_NEIGHBOUR_NAMES_TEXT = """
    bgpconfigurations bgpconfiguration bgppeers bgppeer bgpfilters blockaffinities
    caliconodestatuses clusterinformations felixconfigurations globalnetworkpolicies gnp
    globalnetworksets hostendpoints ipamblocks ipamconfigs ipamhandles ippools ippool
    ipreservations kubecontrollersconfigurations networkpolicies networksets tiers profiles
    workloadendpoints stagednetworkpolicies stagedglobalnetworkpolicies
    stagedkubernetesnetworkpolicies
    ciliumnetworkpolicies cnp ciliumnp ciliumclusterwidenetworkpolicies ccnp ciliumendpoints cep
    ciliumep ciliumnodes cn ciliumn ciliumidentities ciliumid ciliumexternalworkloads cew
    ciliumloadbalancerippools lbippool lbippools ciliuml2announcementpolicies l2announcement
    ciliumbgppeeringpolicies bgpp ciliumpodippools cpip ciliumnodeconfigs ciliumenvoyconfigs cec
    ciliumclusterwideenvoyconfigs ccec ciliumlocalredirectpolicies clrp
    ciliumegressgatewaypolicies cegp ciliumcidrgroups ccg ciliumbgpclusterconfigs
    ciliumbgppeerconfigs ciliumbgpadvertisements ciliumbgpnodeconfigs
    ciliumbgpnodeconfigoverrides ciliumendpointslices ces
    ipaddresspools ipaddresspool l2advertisements l2advertisement bgpadvertisements
    bgpadvertisement bfdprofiles bfdprofile communities community servicel2statuses
    servicebgpstatuses configurationstates addresspools addresspool
"""
NEIGHBOUR_NAMES = frozenset(_NEIGHBOUR_NAMES_TEXT.split())


def test_names_leave_neighbours_alone(crd):
    """No plural, singular, short name or kind of ours is one of Calico's, Cilium's or MetalLB's."""
    names = crd["spec"]["names"]
    ours = {names["plural"], names["singular"], names["kind"].lower(), *names.get("shortNames", [])}
    assert not ours & NEIGHBOUR_NAMES
    assert names["categories"] == ["portico"]


def test_loadbalancer_names_and_scope():
    crd = load(CRD_FILES["LoadBalancer"])
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "LoadBalancer",
        "loadbalancers",
        ["plb"],
    )
    assert crd["spec"]["scope"] == "Namespaced"


def test_schema_is_structural(crd):
    """Every node has a type (int-or-string aside), and nothing keeps unknown fields."""
    for path, node in walk(schema_of(crd)):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        if node["type"] == "object" and path != ".metadata":
            assert node.get("properties") or node.get("additionalProperties"), path
        for key in ("anyOf", "oneOf", "allOf", "not"):
            assert key not in node, f"{path}: {key} needs care to stay structural"


def test_list_map_keys_are_required(crd):
    for path, node in walk(schema_of(crd)):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path


def test_conditions_are_metav1_conditions(crd):
    if crd["spec"]["names"]["kind"] == "NodeRules":
        # Nothing writes a NodeRules status yet: it has none.
        assert "status" not in schema_of(crd)["properties"]
        return
    if crd["spec"]["names"]["kind"] == "GatewayReport":
        # A list of verdicts, one per node, each with its own transition time: no conditions.
        assert "conditions" not in schema_of(crd)["properties"]["status"]["properties"]
        return
    conditions = resolve(schema_of(crd), ".status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    props = item["properties"]
    assert set(props) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert props["status"]["enum"] == ["True", "False", "Unknown"]
    assert props["lastTransitionTime"]["format"] == "date-time"
    assert props["observedGeneration"]["format"] == "int64"
    for name in ("Valid", "Conflicting", "Allocated", "Programmed", "Announced", "Healthy"):
        assert re.fullmatch(props["type"]["pattern"], name)
    for reason in ("NoPoolMatches", "PoolExhausted", "NoOverlap", "Overlaps", "Invalid"):
        assert re.fullmatch(props["reason"]["pattern"], reason)


def test_vippool_spec():
    schema = schema_of(load(CRD_FILES["VIPPool"]))
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["addresses"]
    assert spec["properties"]["addresses"]["minItems"] == 1
    assert spec["properties"]["addresses"]["items"]["type"] == "string"
    assert spec["properties"]["autoAssign"]["default"] is True
    assert spec["properties"]["avoidBuggyIPs"]["default"] is False
    assert spec["properties"]["priority"]["type"] == "integer"
    for sel in ("serviceSelector", "namespaceSelector"):
        expr = resolve(schema, f".spec.{sel}.matchExpressions[*]")
        assert expr["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
        assert resolve(schema, f".spec.{sel}.matchLabels")["additionalProperties"] == {
            "type": "string"
        }
    for family in ("ipv4", "ipv6"):
        for field in ("capacity", "used", "free"):
            assert resolve(schema, f".status.{family}.{field}")["format"] == "int64"


def test_loadbalancer_spec():
    schema = schema_of(load(CRD_FILES["LoadBalancer"]))
    assert resolve(schema, ".spec.ports[*].protocol")["enum"] == ["TCP", "UDP", "SCTP"]
    assert resolve(schema, ".spec.ports[*].targetPort") == {"x-kubernetes-int-or-string": True}
    assert resolve(schema, ".spec.externalTrafficPolicy")["enum"] == ["Cluster", "Local"]
    assert resolve(schema, ".spec.sessionAffinity")["enum"] == ["None", "ClientIP"]
    assert resolve(schema, ".spec.forwardingMode")["enum"] == ["DSR", "NAT"]
    endpoint = resolve(schema, ".spec.backends[*].endpoints[*]")
    assert set(endpoint["properties"]) == {"address", "ready", "serving", "terminating", "forZones"}
    for field in ("node", "reason", "message"):
        assert resolve(schema, f".spec.excludedNodes[*].{field}")["type"] == "string"
    assert resolve(schema, ".status.nodes[*].lastTransitionTime")["format"] == "date-time"
    assert resolve(schema, ".status.nodes[*].healthy")["type"] == "boolean"


EXPECTED_COLUMNS = {
    "VIPPool": [
        "Addresses",
        "Auto",
        "V4-Used",
        "V4-Free",
        "V6-Used",
        "Valid",
        "Conflicting",
        "Age",
    ],
    "LoadBalancer": ["VIPs", "Ports", "Healthy", "Gateway", "Allocated", "Age"],
    "NodeRules": ["Age"],
    "NodeAgent": ["Services", "Applied", "Error", "Age"],
    "GatewayReport": ["Nodes", "Unreachable", "Heartbeat", "Age"],
}


def test_printer_columns_point_at_schema_fields(crd):
    schema = schema_of(crd)
    columns = version_of(crd)["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == EXPECTED_COLUMNS[crd["spec"]["names"]["kind"]]
    for col in columns:
        node = resolve(schema, col["jsonPath"])
        if col["type"] == "date":
            assert col["jsonPath"] == ".metadata.creationTimestamp"
        elif col["type"] in ("integer", "boolean"):
            assert node.get("type") == col["type"], col
        else:
            assert col["type"] == "string", col


def test_resolve_rejects_missing_fields():
    schema = schema_of(load(CRD_FILES["VIPPool"]))
    for bad in (".spec.nope", ".status.ipv4.nope", '.status.conditions[?(@.nope=="x")].status'):
        with pytest.raises(AssertionError):
            resolve(schema, bad)


def conforms(value: Any, schema: dict[str, Any], path: str = "") -> None:
    """A small check of an object against a structural schema: known fields, types, enums."""
    if schema.get("x-kubernetes-int-or-string"):
        assert isinstance(value, int | str), path
        return
    kind = schema["type"]
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    assert isinstance(value, types[kind]), f"{path}: {value!r} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], path
    if kind == "object" and "properties" in schema:
        for key in schema.get("required", []):
            assert key in value, f"{path}.{key} is required"
        for key, sub in value.items():
            assert key in schema["properties"], f"{path}.{key} is not in the schema"
            conforms(sub, schema["properties"][key], f"{path}.{key}")
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        for key, sub in value.items():
            conforms(sub, schema["additionalProperties"], f"{path}.{key}")
    elif kind == "array":
        assert len(value) >= schema.get("minItems", 0), path
        for i, sub in enumerate(value):
            conforms(sub, schema["items"], f"{path}[{i}]")


def test_examples():
    pool = load(CRDS / "examples" / "vippool.yaml")
    assert (pool["apiVersion"], pool["kind"]) == (f"{GROUP}/{VERSION}", "VIPPool")
    conforms(pool["spec"], schema_of(load(CRD_FILES["VIPPool"]))["properties"]["spec"], ".spec")
    svc = load(CRDS / "examples" / "service.yaml")
    assert svc["kind"] == "Service"
    assert svc["metadata"]["annotations"]["portico.dev/address-pool"] == pool["metadata"]["name"]
    spec = svc["spec"]
    assert (spec["type"], spec["externalTrafficPolicy"]) == ("LoadBalancer", "Local")
    assert spec["selector"] == {"app": "echo"}
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(80, 8080)]


def test_a_full_loadbalancer_conforms():
    """What the operator and gateways write fits the schema."""
    obj = {
        "spec": {
            "service": {"name": "echo", "uid": "0b7f"},
            "vips": ["198.18.32.1", "fd00:18::a:1"],
            "pool": "lan",
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": 80,
                    "nodePort": 30080,
                    "targetPort": 8080,
                },
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"},
            ],
            "portsSummary": "80/TCP,53/UDP",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000,
            "sessionAffinity": "ClientIP",
            "sessionAffinityTimeoutSeconds": 10800,
            "sourceRanges": ["198.18.0.0/15"],
            "forwardingMode": "DSR",
            "trafficDistribution": "PreferClose",
            "backends": [
                {
                    "node": "node-1",
                    "internalIPs": ["198.18.1.1"],
                    "zone": "zone-a",
                    "ready": 1,
                    "serving": 1,
                    "terminating": 0,
                    "endpoints": [
                        {
                            "address": "10.0.1.5",
                            "ready": True,
                            "serving": True,
                            "terminating": False,
                            "forZones": ["zone-a"],
                        }
                    ],
                }
            ],
            "excludedNodes": [{"node": "node-2", "reason": "NotReady", "message": "node is down"}],
        },
        "status": {
            "observedGeneration": 3,
            "ownerGateway": "gw-1",
            "healthyNodes": 1,
            "nodes": [
                {
                    "node": "node-1",
                    "healthy": True,
                    "message": "200",
                    "lastTransitionTime": "2026-11-23T20:00:00Z",
                }
            ],
            "conditions": [
                {
                    "type": "Allocated",
                    "status": "True",
                    "reason": "Allocated",
                    "message": "198.18.32.1",
                    "lastTransitionTime": "2026-11-23T20:00:00Z",
                    "observedGeneration": 3,
                }
            ],
        },
    }
    schema = schema_of(load(CRD_FILES["LoadBalancer"]))
    conforms(obj, {"type": "object", "properties": schema["properties"]})


def produced_loadbalancer(mode: str, *, lagging: bool, input_error: str | None) -> dict[str, Any]:
    """A LoadBalancer CR as the operator's and the gateway's own code build it, both writers'
    status merged as the apiserver merges their server-side applies."""
    import ipaddress

    from portico_common.conditions import condition
    from portico_lbnode.lbstatus import NodeReport, Report, render_status
    from portico_operator.lbspec import (
        lb_conditions,
        lb_spec_body,
        lb_status_body,
        parse_node,
        render_spec,
    )
    from portico_operator.noderules_push import programmed
    from portico_operator.service import parse_service
    from portico_operator.slices import endpoints_from_slices

    service = {
        "metadata": {"name": "echo", "namespace": "demo", "uid": "0b7f", "generation": 3},
        "spec": {
            "type": "LoadBalancer",
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000,
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "loadBalancerSourceRanges": ["198.18.0.0/15"],
            "trafficDistribution": "PreferClose",
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": 80,
                    "nodePort": 30080,
                    "targetPort": 8080,
                },
                {
                    "name": "dns",
                    "protocol": "UDP",
                    "port": 53,
                    "nodePort": 30053,
                    "targetPort": "dns",
                },
            ],
        },
    }
    slices = [
        {
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [
                {
                    "addresses": ["198.19.1.5"],
                    "nodeName": "node-1",
                    "zone": "zone-a",
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "hints": {"forZones": [{"name": "zone-a"}]},
                },
                {
                    "addresses": ["198.19.1.6"],
                    "nodeName": "node-1",
                    "zone": "zone-a",
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                },
            ],
        }
    ]
    nodes = [
        parse_node(
            {
                "metadata": {"name": n, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}],
                    "conditions": [{"type": "Ready", "status": ready}],
                },
            }
        )
        for n, ip, ready in (("node-1", "198.18.1.1", "True"), ("node-2", "198.18.1.2", "False"))
    ]
    view = parse_service(service)
    vips = [ipaddress.ip_address("198.18.32.1"), ipaddress.ip_address("fd00:18::a:1")]
    spec = render_spec(view, vips, "lan", mode, nodes, endpoints_from_slices(slices))
    t = "2026-11-23T20:00:00Z"
    ok, reason, message = programmed(["node-1"] if lagging else [])
    conds = lb_conditions(
        view,
        True,
        "Allocated",
        "198.18.32.1",
        input_error,
        mode,
        3,
        t,
        [],
        condition("Programmed", ok, reason, message, 3, t),
    )
    body = lb_spec_body(view, spec)
    status = lb_status_body(view, 3, conds)["status"]
    report = Report(
        gateway="gw-1",
        announced=True,
        announce_reason="Announced",
        announce_message="198.18.32.1",
        nodes=(NodeReport("node-1", not lagging, "200" if not lagging else "timeout", t),),
        fail_closed=lagging,
    )
    gateway = render_status(report, 3, t, {})
    merged = {**status, **{k: v for k, v in gateway.items() if k != "conditions"}}
    merged["conditions"] = [*status["conditions"], *gateway["conditions"]]
    return {"metadata": body["metadata"], "spec": body["spec"], "status": merged}


@pytest.mark.parametrize(
    "mode,lagging,input_error",
    [("DSR", False, None), ("NAT", True, "loadBalancerSourceRanges: 'x' is not a CIDR")],
)
def test_what_the_writers_produce_conforms(mode, lagging, input_error):
    """The bodies the operator (spec, status) and the gateway (status) actually build fit the
    schema, with every optional part present: NAT mode's NodePorts, Programmed, Valid=False, a
    fail-closed gateway, an excluded node, a terminating endpoint."""
    obj = produced_loadbalancer(mode, lagging=lagging, input_error=input_error)
    assert obj["spec"]["excludedNodes"] and obj["spec"]["backends"]
    types = {c["type"] for c in obj["status"]["conditions"]}
    assert {"Allocated", "Valid", "Programmed", "Announced", "Healthy"} <= types
    assert ("NodePorts" in types) == (mode == "NAT")
    schema = schema_of(load(CRD_FILES["LoadBalancer"]))
    conforms(
        {"spec": obj["spec"], "status": obj["status"]},
        {"type": "object", "properties": schema["properties"]},
    )
    assert set(obj["metadata"]) <= {"name", "namespace", "labels", "ownerReferences"}


# --- Helm chart ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Path:
    path = bin_dir() / "helm"
    assert path.is_file(), f"{path} is missing: run hack/build-controlplane.sh"
    return path


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    proc = template(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# The lab's Kubernetes version: the chart's kubeVersion refuses helm's offline default (v1.20
# for a helm built without release flags, as the pinned one is).
KUBE_VERSION = "1.34.2"
# gateway.interface has no default and is required while gateway.enabled (the default): the
# tests start from a values file that sets it (before their own -f and --set).
BASE_VALUES = Path(__file__).with_name("base-values.yaml")


def template(helm: Path, *args: str, interface: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; the test's own arguments come last and win."""
    argv = [str(helm), "template", "portico", str(CHART), "--namespace", "portico-system"]
    argv += ["--kube-version", KUBE_VERSION, "--include-crds"]
    return subprocess.run(
        [*argv, *(("-f", str(BASE_VALUES)) if interface else ()), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (of that app.kubernetes.io/component, when given)."""
    (doc,) = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            component is None
            or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        )
    ]
    return doc


def test_chart_crds_are_the_top_level_ones():
    # One source: templates/crds.yaml reads files/crds, a link to the top-level crds/. No
    # crds/ folder in the chart: Helm would install it before the templates and never upgrade it.
    link = CHART / "files" / "crds"
    assert link.is_symlink(), "charts/portico/files/crds must link to the top-level crds/"
    assert link.resolve() == CRDS.resolve()
    assert not (CHART / "crds").exists()
    assert "files/crds/examples/" in (CHART / ".helmignore").read_text().split()
    chart = load(CHART / "Chart.yaml")
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "portico", "0.1.0")
    assert str(chart["appVersion"]) == "0.1.0"


def test_helm_lint(helm):
    argv = [str(helm), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    proc = subprocess.run(
        [*argv, "-f", str(BASE_VALUES)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "Missing required value" not in proc.stderr


def test_render_defaults(helm):
    docs = render(helm)
    assert Counter(d["kind"] for d in docs) == Counter(
        {
            "CustomResourceDefinition": 5,
            # The operator's, the node agent's and the gateway's.
            "ServiceAccount": 3,
            "ClusterRole": 3,
            "ClusterRoleBinding": 3,
            # The operator's Lease and pools ConfigMap, in the release namespace.
            "Role": 2,
            "RoleBinding": 2,
            "ConfigMap": 1,
            "Deployment": 1,
            "StatefulSet": 1,
            "DaemonSet": 1,
            "Service": 1,
            "PodDisruptionBudget": 1,
        }
    )
    crds = {d["spec"]["names"]["kind"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {kind: kept(load(path)) for kind, path in CRD_FILES.items()}

    deploy = one(docs, "Deployment", "operator")
    assert deploy["metadata"]["name"] == "portico-operator"
    assert deploy["metadata"]["namespace"] == "portico-system"
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/portico-lb/portico:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    cmd = container["command"]
    assert cmd[:5] == [
        "portico-operator",
        "--namespace",
        "$(POD_NAMESPACE)",
        "--metrics-port",
        "9464",
    ]
    assert cmd[cmd.index("--load-balancer-class") + 1] == "portico.dev/lb"
    assert cmd[cmd.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    # kopf's liveness endpoint (--liveness) restarts a hung operator; slow to give up.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()

    sa = one(docs, "ServiceAccount", "operator")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["namespace"] == "portico-system"
    binding = one(docs, "ClusterRoleBinding", "operator")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole", "operator")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "portico-system"}
    ]

    svc = one(docs, "Service")
    assert svc["spec"]["selector"] == selector
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("metrics", 9464)]


def kept(crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD file as the chart renders it: the same, with helm.sh/resource-policy: keep."""
    crd["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    return crd


def test_crds_are_templates_upgraded_with_the_release(helm):
    """The CRDs are ordinary templates (so `helm upgrade` updates them) and only they: no
    crds/ folder Helm would install apart. crds.keep=false drops the keep policy (uninstall
    deletes them); crds.enabled=false renders none (the user manages them)."""
    proc = template(helm, "--skip-crds")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len([d for d in docs if d["kind"] == "CustomResourceDefinition"]) == len(CRD_FILES)
    docs = render(helm, "--set", "crds.keep=false")
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds and all("annotations" not in d["metadata"] for d in crds)
    docs = render(helm, "--set", "crds.enabled=false")
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    proc = template(helm, "--set", "crds.enabeld=false")
    assert proc.returncode != 0 and "enabeld" in proc.stderr


def test_packaged_chart_carries_the_crds(helm, tmp_path):
    """`helm package` follows the files/crds link: the archive holds the CRD files (not the
    examples) and renders the same CRDs."""
    import tarfile

    proc = subprocess.run(
        [str(helm), "package", str(CHART), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("portico-*.tgz")
    with tarfile.open(archive) as tar:
        names = {n for n in tar.getnames() if "/files/" in n}
    assert names == {f"portico/files/crds/{p.name}" for p in CRD_FILES.values()}
    argv = [str(helm), "template", "portico", str(archive), "--kube-version", KUBE_VERSION]
    proc = subprocess.run(
        [*argv, "-f", str(BASE_VALUES)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    crds = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"].startswith("Custom")]
    assert sorted(d["metadata"]["name"] for d in crds) == sorted(
        load(p)["metadata"]["name"] for p in CRD_FILES.values()
    )


def pools_configmap(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-pools")
    ]
    return cm


def rendered_pools(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pools the operator makes of the chart's ConfigMap (its own parser)."""
    return desired_pools(pools_configmap(docs)["data"])


def test_pools_go_into_a_configmap_the_operator_reads(helm):
    """Helm maps every object to an API before it creates any, so the chart renders no VIPPool
    (its CRD may be new in the same install): the pools go into a ConfigMap, which the
    operator's --pools-configmap names; always rendered, so emptying `pools` deletes them."""
    pool = ["--set", "pools[0].name=lan", "--set", "pools[0].addresses[0]=198.18.32.0/24"]
    docs = render(helm, *pool)
    assert not [d for d in docs if d["kind"] == "VIPPool"]
    cm = pools_configmap(docs)
    assert cm["metadata"]["name"] == "portico-pools"
    assert cm["metadata"]["namespace"] == "portico-system"
    assert rendered_pools(docs) == {"lan": {"addresses": ["198.18.32.0/24"]}}
    (container,) = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    assert cmd[cmd.index("--pools-configmap") + 1] == "portico-system/portico-pools"
    assert rendered_pools(render(helm)) == {}
    proc = template(helm, "--set", "pools[0].addresses[0]=198.18.32.0/24")
    assert proc.returncode != 0 and "name" in proc.stderr


def test_notes_say_where_the_pools_are_and_what_uninstall_keeps(helm, tmp_path):
    from .test_gateway_chart import notes

    pool = ["--set", "pools[0].name=lan", "--set", "pools[0].addresses[0]=198.18.32.0/24"]
    text = notes(helm, tmp_path / "new", *pool)
    assert "from the ConfigMap portico-pools" in text
    assert "     lan: 198.18.32.0/24" in text
    assert "--reuse-values" not in text and "NOT created" not in text
    assert "leaves Portico's CRDs" in text
    assert "kubectl delete vippools -l portico.dev/managed-by-values=true" in text
    text = notes(helm, tmp_path / "gone", *pool, "--set", "crds.keep=false")
    assert "deletes Portico's CRDs (crds.keep=false)" in text
    text = notes(helm, tmp_path / "none")
    assert "This release created none" in text


def test_vippool_addresses_have_cel_rules_within_cost_bounds():
    """The rules the apiserver runs on each address (tests/lab/test_crd_validation.py runs
    them); the bounds keep their estimated cost under the apiserver's limit."""
    spec = schema_of(load(CRD_FILES["VIPPool"]))["properties"]["spec"]
    addresses = spec["properties"]["addresses"]
    assert addresses["maxItems"] == 256
    item = addresses["items"]
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # 45 characters
    assert item["maxLength"] == 100 >= len(f"{longest}-{longest}")
    rules = [r["rule"] for r in item["x-kubernetes-validations"]]
    assert any("isCIDR(self)" in r and "isIP(self)" in r for r in rules)
    assert any("masked()" in r for r in rules)
    assert any("family()" in r for r in rules)
    for sel in ("serviceSelector", "namespaceSelector"):
        exprs = resolve(spec, f".{sel}.matchExpressions")
        assert exprs["maxItems"] == 64
        assert len(exprs["items"]["x-kubernetes-validations"]) == 2
        assert exprs["items"]["properties"]["key"]["maxLength"] == 317


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"]
        and resource in r["resources"]
        and (verb in r["verbs"] or "*" in r["verbs"])
        for r in rules
    )


@pytest.mark.parametrize(
    ("group", "resources", "verbs"),
    [
        ("", ["services"], ["get", "list", "watch", "patch", "update"]),
        ("", ["services/status"], ["get", "patch", "update"]),
        ("discovery.k8s.io", ["endpointslices"], ["get", "list", "watch"]),
        ("", ["nodes", "namespaces"], ["get", "list", "watch"]),
        ("", ["events"], ["create", "patch"]),
        ("events.k8s.io", ["events"], ["create", "patch"]),
        (
            GROUP,
            ["vippools", "vippools/status", "loadbalancers", "loadbalancers/status"],
            ["get", "list", "watch", "create", "update", "patch", "delete"],
        ),
        ("apiextensions.k8s.io", ["customresourcedefinitions"], ["get", "list", "watch"]),
    ],
)
def test_cluster_role(helm, group, resources, verbs):
    rules = one(render(helm), "ClusterRole", "operator")["rules"]
    for resource in resources:
        for verb in verbs:
            assert allowed(rules, group, resource, verb), (group, resource, verb)
    # Nothing beyond what the operator needs: no secrets, no pods, no Leases cluster-wide.
    assert not allowed(rules, "", "secrets", "get")
    assert not allowed(rules, "", "pods", "list")
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in rules)


def test_lease_role_is_namespaced(helm):
    """leader.py gets, creates, replaces (update) and watches its Lease in --namespace, the
    release namespace: a Role there, bound to the operator's ServiceAccount."""
    docs = render(helm)
    role = named(docs, "Role", "portico-operator-lease")
    assert role["metadata"]["namespace"] == "portico-system"
    assert rule_triples(role["rules"]) == {
        ("coordination.k8s.io", "leases", verb) for verb in ("get", "watch", "create", "update")
    }
    binding = named(docs, "RoleBinding", "portico-operator-lease")
    assert binding["metadata"]["namespace"] == "portico-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount", "operator")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": "portico-system"}
    ]
    (container,) = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    assert container["command"][1:3] == ["--namespace", "$(POD_NAMESPACE)"]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_pools_configmap_role_is_that_configmap_only(helm):
    """values_sync.py lists and watches the one ConfigMap (a field selector on its name, which
    RBAC matches against resourceNames) and nothing else in the release namespace."""
    docs = render(helm)
    role = named(docs, "Role", "portico-operator-pools")
    assert role["metadata"]["namespace"] == "portico-system"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["portico-pools"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = named(docs, "RoleBinding", "portico-operator-pools")
    assert binding["roleRef"]["name"] == "portico-operator-pools"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "portico-operator", "namespace": "portico-system"}
    ]


def test_operator_pod_disruption_budget(helm):
    docs = render(helm)
    pdb = one(docs, "PodDisruptionBudget", "operator")
    assert pdb["spec"]["minAvailable"] == 1
    deploy = one(docs, "Deployment", "operator")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert pdb["metadata"]["namespace"] == "portico-system"
    # One replica: a budget of one would block every drain of its node.
    docs = render(helm, "--set", "operator.replicas=1")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    docs = render(helm, "--set", "operator.podDisruptionBudget.enabled=false")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_every_pod_runs_on_linux(helm):
    docs = render(helm, "--set", "operator.nodeSelector.disk=ssd")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    }
    assert set(pods) == {"portico-operator", "portico-node-agent", "portico-gateway"}
    for name, pod in pods.items():
        assert pod["nodeSelector"]["kubernetes.io/os"] == "linux", name
    assert pods["portico-operator"]["nodeSelector"] == {"kubernetes.io/os": "linux", "disk": "ssd"}


def test_chart_kube_version_is_the_tested_one(helm):
    chart = load(CHART / "Chart.yaml")
    assert chart["kubeVersion"] == ">=1.34.0-0"
    proc = template(helm, "--kube-version", "1.33.5")
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr


def test_render_with_pool_and_replicas(helm):
    docs = render(
        helm,
        "--set",
        "operator.replicas=3",
        "--set",
        "pools[0].name=lan",
        "--set",
        "pools[0].addresses[0]=198.18.32.0/24",
    )
    assert one(docs, "Deployment", "operator")["spec"]["replicas"] == 3
    spec = rendered_pools(docs)["lan"]
    assert spec == {"addresses": ["198.18.32.0/24"]}
    spec_schema = schema_of(load(CRD_FILES["VIPPool"]))["properties"]["spec"]
    conforms(spec, spec_schema, ".spec")


def test_render_pool_with_every_field(helm, tmp_path):
    pools = {
        "pools": [
            {
                "name": "lan",
                "addresses": ["198.18.32.0/24", "198.18.33.10-198.18.33.20", "fd00:18::a:0/112"],
                "autoAssign": False,
                "avoidBuggyIPs": True,
                "priority": 10,
                "serviceSelector": {"matchLabels": {"tier": "edge"}},
                "namespaceSelector": {
                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]
                },
            },
            {"name": "spare", "addresses": ["198.18.34.0/28"]},
        ]
    }
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(pools))
    docs = render(helm, "-f", str(values))
    rendered = rendered_pools(docs)
    assert rendered == {
        p["name"]: {k: v for k, v in p.items() if k != "name"} for p in pools["pools"]
    }
    spec_schema = schema_of(load(CRD_FILES["VIPPool"]))["properties"]["spec"]
    for spec in rendered.values():
        conforms(spec, spec_schema, ".spec")


def test_render_custom_class_and_image(helm):
    docs = render(
        helm,
        "--set",
        "loadBalancerClass=example.com/lb",
        "--set",
        "image.tag=dev",
        "--set",
        "image.repository=registry.local/portico",
    )
    (container,) = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    assert cmd[cmd.index("--load-balancer-class") + 1] == "example.com/lb"
    assert container["image"] == "registry.local/portico:dev"


def test_render_rejects_a_pool_without_addresses(helm):
    # values.schema.json refuses it before the template's own check would.
    proc = template(helm, "--set", "pools[0].name=lan")
    assert proc.returncode != 0
    assert "/pools/0" in proc.stderr and "addresses" in proc.stderr


# --- The node agent's DaemonSet --------------------------------------------------------------

NODEAGENT_SRC = REPO / "nodeagent" / "portico_nodeagent"

# What portico-node-agent does to the API, read from its code; its ClusterRole must allow exactly
# this, no more. (group, resource, verb):
NODE_AGENT_ACCESS = {
    # kubesource.py:90 list_and_watch(kube, rulesdoc.path(), ...): GET then watch of every
    # NodeRules shard (informer.py:40 kube.get, :45 kube.watch).
    (GROUP, "noderules", "list"),
    (GROUP, "noderules", "watch"),
    # kubesource.py:93 list_and_watch(kube, core_path("nodes"), ...,
    # fieldSelector=metadata.name=<node>): a list and a watch of nodes, never a get.
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    # kubeagent.py:249 self.kube.get(path): its NodeAgent, what a previous run reported.
    (GROUP, "nodeagents", "get"),
    # kubeagent.py:277 self.kube.create(collection, body): the NodeAgent when it is missing.
    (GROUP, "nodeagents", "create"),
    # kubeagent.py:267/278 self.kube.patch(path + "/status", ...): a merge patch of its status.
    (GROUP, "nodeagents/status", "patch"),
}
# The KubeClient calls in the agent's code behind NODE_AGENT_ACCESS: a new one needs the role
# (and the list above) changed too.
NODE_AGENT_KUBE_CALLS = Counter({"get": 1, "create": 1, "patch": 2, "list_and_watch": 2})
DOWNWARD_API = {"spec.nodeName": "node-from-downward-api", "metadata.namespace": "portico-system"}


def node_agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return container


def agent_args(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The container's command as portico-node-agent parses it in the pod: its environment set
    (downward API values filled in) and $(VAR) references expanded, as the kubelet does."""
    from portico_nodeagent.main import parse_args

    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = DOWNWARD_API[e["valueFrom"]["fieldRef"]["fieldPath"]]
    for name in ("NODE_NAME", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cmd = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in container["command"]]
    assert cmd[0] == "portico-node-agent"
    assert "args" not in container
    return parse_args(cmd[1:])


def test_node_agent_entry_point():
    scripts = load_toml(REPO / "pyproject.toml")["project"]["scripts"]
    assert scripts["portico-node-agent"] == "portico_nodeagent.main:main"


def load_toml(path: Path) -> dict[str, Any]:
    import tomllib

    with path.open("rb") as f:
        return tomllib.load(f)


def test_node_agent_daemonset_defaults(helm, monkeypatch):
    docs = render(helm)
    ds = one(docs, "DaemonSet")
    assert ds["metadata"]["name"] == "portico-node-agent"
    assert ds["metadata"]["namespace"] == "portico-system"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    # Its pods are not the operator's (the metrics Service and anti-affinity select those).
    operator_selector = one(docs, "Deployment", "operator")["spec"]["selector"]["matchLabels"]
    assert selector != operator_selector
    assert not operator_selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()

    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every node, whatever its taints
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["terminationGracePeriodSeconds"] >= 10

    container = node_agent_container(docs)
    assert (
        container["image"]
        == one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["imagePullPolicy"] == "IfNotPresent"
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}  # no NET_RAW
    assert not sc.get("privileged")
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    # A restart must leave the table in force: nothing runs --cleanup.
    assert "lifecycle" not in container
    assert "--cleanup" not in yaml.safe_dump(ds)

    args = agent_args(container, monkeypatch)
    assert args.from_cluster and not args.cleanup and not args.once
    assert args.kubeconfig is None  # in-cluster credentials, its own ServiceAccount
    assert args.node_name == DOWNWARD_API["spec.nodeName"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The agent's own defaults.
    assert (args.health_port, args.metrics_port, args.verify_interval) == (10262, 0, 5.0)
    assert args.kube_proxy_healthz_port == 10256  # answered too where kube-proxy leaves it
    assert args.log_level == "info"

    # The probes ask the agent's own port (kube-proxy never holds it); /healthz, which is 200
    # without any Service. kube-proxy's port is not declared: kube-proxy may hold it.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10262}
    assert container["livenessProbe"]["tcpSocket"] == {"port": args.health_port}
    assert container["ports"] == [{"name": "healthz", "containerPort": 10262, "protocol": "TCP"}]


@pytest.mark.parametrize(("health", "metrics"), [(10266, 9465), (20256, 0)])
def test_node_agent_ports_follow_values(helm, monkeypatch, health, metrics):
    docs = render(
        helm,
        "--set",
        f"nodeAgent.healthPort={health}",
        "--set",
        f"nodeAgent.metricsPort={metrics}",
    )
    container = node_agent_container(docs)
    args = agent_args(container, monkeypatch)
    assert (args.health_port, args.metrics_port) == (health, metrics)
    assert container["readinessProbe"]["httpGet"]["port"] == args.health_port
    assert container["livenessProbe"]["tcpSocket"]["port"] == args.health_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == ({"healthz": health, "metrics": metrics} if metrics else {"healthz": health})


def test_node_agent_kube_proxy_healthz_port_follows_values(helm, monkeypatch):
    container = node_agent_container(render(helm, "--set", "nodeAgent.kubeProxyHealthzPort=0"))
    args = agent_args(container, monkeypatch)
    assert (args.health_port, args.kube_proxy_healthz_port) == (10262, 0)
    assert [p["containerPort"] for p in container["ports"]] == [10262]


def test_node_agent_without_health_port_has_no_probes(helm, monkeypatch):
    container = node_agent_container(render(helm, "--set", "nodeAgent.healthPort=0"))
    args = agent_args(container, monkeypatch)
    assert args.health_port == 0
    assert "readinessProbe" not in container
    assert "livenessProbe" not in container
    assert "ports" not in container


def test_node_agent_overrides(helm, monkeypatch, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "image": {"tag": "op"},
                "nodeAgent": {
                    "image": {"repository": "registry.local/agent", "pullPolicy": "Always"},
                    "logLevel": "debug",
                    "verifyInterval": 2.5,
                    "extraArgs": ["--status", "/tmp/status.json"],
                    "extraEnv": [{"name": "EXTRA", "value": "1"}],
                    "priorityClassName": "",
                    "tolerations": [],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "podAnnotations": {"a": "b"},
                    "podLabels": {"team": "net"},
                    "resources": {"requests": {"cpu": "10m"}},
                    "serviceAccount": {"annotations": {"x": "z"}},
                },
            }
        )
    )
    docs = render(helm, "-f", str(values))
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    container = node_agent_container(docs)
    assert container["image"] == "registry.local/agent:op"
    assert container["imagePullPolicy"] == "Always"
    args = agent_args(container, monkeypatch)
    assert args.node_name == DOWNWARD_API["spec.nodeName"]
    assert (args.log_level, args.verify_interval, args.status) == (
        "debug",
        2.5,
        Path("/tmp/status.json"),
    )
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert "priorityClassName" not in pod
    assert "tolerations" not in pod
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "net"
    assert container["resources"]["requests"]["cpu"] == "10m"  # merged into the defaults
    assert one(docs, "ServiceAccount", "node-agent")["metadata"]["annotations"] == {"x": "z"}
    # The operator keeps the chart's image.
    (op,) = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    assert op["image"] == "ghcr.io/portico-lb/portico:op"


def rule_triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out = set()
    for r in rules:
        assert set(r) == {"apiGroups", "resources", "verbs"}, r  # no resourceNames, no URLs
        for group in r["apiGroups"]:
            for resource in r["resources"]:
                for verb in r["verbs"]:
                    out.add((group, resource, verb))
    return out


# The API calls of portico_common.kube.patch_status_creating (a status patch, a create when the
# object is missing, the patch again): a program that calls it needs what they need.
SHARED_KUBE_CALLS = {"patch_status_creating": Counter({"patch": 2, "create": 1})}


def kube_calls(src: Path) -> Counter[str]:
    """Every API call a component's source makes: ``kube.<verb>(``, ``list_and_watch(``, and
    the calls of the shared helpers it uses."""
    calls: Counter[str] = Counter()
    for path in src.glob("*.py"):
        text = path.read_text()
        calls.update(m for m in re.findall(r"\bkube\.(\w+)\(", text) if m != "close")
        calls.update(re.findall(r"\b(list_and_watch)\(", text))
        for helper, inner in SHARED_KUBE_CALLS.items():
            for _ in re.findall(rf"\b{helper}\(", text):
                calls.update(inner)
    return calls


def test_node_agent_kube_calls_are_the_listed_ones():
    calls = kube_calls(NODEAGENT_SRC)
    assert calls == NODE_AGENT_KUBE_CALLS, "update NODE_AGENT_ACCESS and nodeagent-rbac.yaml"


def test_node_agent_rbac(helm):
    docs = render(helm)
    role = one(docs, "ClusterRole", "node-agent")
    assert role["metadata"]["name"] == "portico-node-agent"
    assert rule_triples(role["rules"]) == NODE_AGENT_ACCESS
    assert not any("*" in t for t in rule_triples(role["rules"]))
    sa = one(docs, "ServiceAccount", "node-agent")
    assert sa["metadata"] == {**sa["metadata"], "name": "portico-node-agent"}
    assert sa["metadata"]["namespace"] == "portico-system"
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["name"] != one(docs, "ServiceAccount", "operator")["metadata"]["name"]
    binding = one(docs, "ClusterRoleBinding", "node-agent")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "portico-system"}
    ]
    # The operator's binding does not name the agent's ServiceAccount.
    op_binding = one(docs, "ClusterRoleBinding", "operator")
    assert all(s["name"] != sa["metadata"]["name"] for s in op_binding["subjects"])


def test_node_agent_disabled(helm):
    docs = render(helm, "--set", "nodeAgent.enabled=false")
    assert not [d for d in docs if d["kind"] == "DaemonSet"]
    agent = [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "node-agent"
        or "node-agent" in d["metadata"]["name"]
    ]
    assert agent == []
    kinds = Counter(d["kind"] for d in docs if d["kind"] != "CustomResourceDefinition")
    assert kinds == Counter(
        {
            # The operator's and the gateway's.
            "ServiceAccount": 2,
            "ClusterRole": 2,
            "ClusterRoleBinding": 2,
            "Role": 2,
            "RoleBinding": 2,
            "ConfigMap": 1,
            "Deployment": 1,
            "StatefulSet": 1,
            "Service": 1,
            "PodDisruptionBudget": 1,
        }
    )


def test_node_agent_without_rbac_or_service_account(helm):
    docs = render(
        helm,
        "--set",
        "rbac.create=false",
        "--set",
        "nodeAgent.serviceAccount.create=false",
        "--set",
        "nodeAgent.serviceAccount.name=agent-sa",
    )
    assert not [
        d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount") == [
        "portico-gateway",
        "portico-operator",
    ]
    assert one(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "agent-sa"

"""docs/reference.md against the code: its generated parts (CRD fields, flags) are what
hack/gen_reference.py makes of the CRDs and parsers today, and it lists every `portico.dev/`
name and every condition reason the programs read or write."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO / "docs" / "reference.md"
PRODUCT = [
    REPO / "common" / "portico_common",
    REPO / "operator" / "portico_operator",
    REPO / "nodeagent" / "portico_nodeagent",
    REPO / "lbnode" / "portico_lbnode",
    REPO / "kubectl" / "portico_kubectl",
]
CHART = REPO / "charts" / "portico"

# `portico.dev/NAME` as text, and `f"{API_GROUP}/NAME"` as the code builds most of them.
PORTICO_NAME = re.compile(r"(?:portico\.dev|\{API_GROUP\})/([A-Za-z][A-Za-z0-9._-]*)")

# Modules whose string constants include condition and Event reasons: every module that builds a
# condition or an Event, and those that hold reasons for them.
REASON_MODULES = [
    "operator/portico_operator/ipam.py",
    "operator/portico_operator/noderules_push.py",
    "operator/portico_operator/reachability.py",
    "operator/portico_operator/lbspec.py",
    "lbnode/portico_lbnode/lbstatus.py",
    "lbnode/portico_lbnode/plan.py",
]
CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*$")
# CamelCase constants in those modules that are Kubernetes' own vocabulary, not Portico's reasons.
NOT_REASONS = {
    "Cluster",
    "Local",
    "SingleStack",
    "PreferDualStack",
    "RequireDualStack",  # Service fields
    "Proxy",
    "InternalIP",
    "Ready",
    "True",
    "False",
    "Unknown",  # ipMode, address, statuses
    "Bearer",  # the API client's authorization scheme
    "Normal",
    "Warning",
    "Event",  # Event types and kind
    "Service",
    "LoadBalancer",
    "LoadBalancers",
    "NodeAgent",
    "GatewayReport",
    "Lease",
    "ConfigMap",  # kinds
    "Namespaces",
    "Nodes",
    "Services",
    "EndpointSlices",
    "VIPPools",
    "NodeRules",  # log words
    "NodeAgents",
    "GatewayReports",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_reference", REPO / "hack" / "gen_reference.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def product_sources() -> list[Path]:
    return sorted(p for d in PRODUCT for p in d.rglob("*.py"))


def portico_names() -> set[str]:
    texts = [p.read_text() for p in product_sources()]
    texts += [
        p.read_text() for p in sorted(CHART.rglob("*")) if p.suffix in (".yaml", ".txt", ".tpl")
    ]
    return {f"portico.dev/{m}" for t in texts for m in PORTICO_NAME.findall(t)}


def reason_modules() -> list[Path]:
    found = {REPO / m for m in REASON_MODULES}
    for p in product_sources():
        if "kubectl" in p.parts[-2]:
            continue  # the plugin's finding codes are docs/kubectl-portico.md's
        text = p.read_text()
        if "condition(" in text or "_event(" in text:
            found.add(p)
    return sorted(found)


def reasons() -> set[str]:
    out: set[str] = set()
    for p in reason_modules():
        for node in ast.walk(ast.parse(p.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and CAMEL.match(text) and text not in NOT_REASONS:
                out.add(text)
    return out


def test_the_generated_parts_are_up_to_date() -> None:
    gen = load_generator()
    current = REFERENCE.read_text()
    assert gen.regenerate(current) == current, "run: python hack/gen_reference.py"


def test_every_crd_field_and_flag_is_in_a_generated_table() -> None:
    text = REFERENCE.read_text()
    for field in (
        "`spec.addresses`",
        "`status.ipv4.free`",
        "`spec.backends[].endpoints[].forZones`",
    ):
        assert field in text
    for flag in ("`--node-health-port`", "`PORTICO_NODE_HEALTH_PORT`", "`--render-check-interval`"):
        assert flag in text


def test_every_portico_name_the_code_uses_is_in_the_reference() -> None:
    names = portico_names()
    # the scan itself works: names from the code (built from API_GROUP) and from the chart
    assert {"portico.dev/address-pool", "portico.dev/load-balancer", "portico.dev/gateway"} <= names
    text = REFERENCE.read_text()
    missing = sorted(n for n in names if f"`{n}" not in text)
    assert not missing, f"docs/reference.md lists none of {missing}"


def test_every_condition_reason_the_code_writes_is_in_the_reference() -> None:
    found = reasons()
    assert {"PoolExhausted", "NodesLagging", "NoHealthyNodes", "ApplyFailed", "Overlaps"} <= found
    text = REFERENCE.read_text()
    missing = sorted(r for r in found if f"`{r}`" not in text)
    assert not missing, f"docs/reference.md lists none of these reasons: {missing}"

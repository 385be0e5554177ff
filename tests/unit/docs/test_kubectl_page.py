"""docs/kubectl-portico.md lists every finding code `kubectl portico status` can give."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PAGE = REPO / "docs" / "kubectl-portico.md"
DIAGNOSE = REPO / "kubectl" / "portico_kubectl" / "diagnose.py"
CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*$")
# CamelCase constants in diagnose.py that are not finding codes: kinds, Service fields,
# condition types and statuses it reads.
NOT_CODES = {
    "Cluster", "ClusterIP", "Local", "False", "Service", "LoadBalancer", "GatewayReports",
    "NodeAgents", "InvalidRequest", "Allocated", "Announced", "Conflicting", "NodePorts", "Valid",
}  # fmt: skip


def codes() -> set[str]:
    tree = ast.parse(DIAGNOSE.read_text())
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and CAMEL.match(n.value)
    } - NOT_CODES


def test_every_finding_code_is_on_the_page() -> None:
    found = codes()
    assert {"NoPoolMatches", "GatewayStale", "RulesNotApplied", "SourceRangeExcludes"} <= found
    text = PAGE.read_text()
    missing = sorted(c for c in found if f"`{c}`" not in text)
    assert not missing, f"docs/kubectl-portico.md lists none of {missing}"

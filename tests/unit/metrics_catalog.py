"""The metric names each Portico program registers, read from registries built by the
programs' own code, and the names docs/metrics.md lists for each."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO / "docs" / "metrics.md"
PROGRAMS = ("operator", "nodeagent", "gateway")
# A family's type -> the suffix its samples carry beyond the family's name.
_TYPE_SUFFIX = {"counter": "_total", "info": "_info"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# The gateway's metrics live in the process's default registry (module-level counters, and the
# prober's registered by Gateway.__init__): built in a fresh interpreter, as portico-lbnode's
# main does, so no test's registrations and no other test's import order count.
_GATEWAY_REGISTRY = """
import functools
import json
from portico_common.metrics import program_registry
from portico_lbnode.gateway import Gateway, GatewaySettings
from prometheus_client import REGISTRY
Gateway(GatewaySettings(name="doc", interfaces=["lo"]), kube=None)
program_registry("gateway", REGISTRY)
print(json.dumps({m.name: m.type for m in REGISTRY.collect()}))
"""


def exposed(families: dict[str, str]) -> dict[str, str]:
    """{family name: type} -> {the name a scrape shows (a counter's with _total): type}."""
    return {name + _TYPE_SUFFIX.get(kind, ""): kind for name, kind in families.items()}


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {m.name: m.type for m in registry.collect()}


@functools.cache
def registered(program: str) -> dict[str, str]:
    """What ``program`` registers: {exposed name: type}."""
    if program == "operator":
        from portico_operator.metrics import Metrics

        return exposed(families(Metrics().registry))
    if program == "nodeagent":
        from portico_nodeagent.metrics import AgentMetrics

        return exposed(families(AgentMetrics().registry))
    assert program == "gateway", program
    proc = subprocess.run(
        [sys.executable, "-c", _GATEWAY_REGISTRY],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    return exposed(json.loads(proc.stdout))


def documented(text: str | None = None) -> dict[str, set[str]]:
    """program -> the metric names in the first column of the tables of its sections of
    docs/metrics.md ("Every program" counts for each)."""
    text = METRICS_DOC.read_text() if text is None else text
    out: dict[str, set[str]] = {p: set() for p in PROGRAMS}
    owners: tuple[str, ...] = ()
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            owners = (
                PROGRAMS
                if title.startswith("Every program")
                else ("operator",)
                if title.startswith("Operator")
                else ("nodeagent",)
                if title.startswith("Node agent")
                else ("gateway",)
                if title.startswith("Gateway")
                else ()
            )
        elif m := re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|", line):
            for p in owners:
                out[p].add(m.group(1))
    return out


# PromQL words that are not metric names (functions are told apart by their "(").
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if not m.group(2) and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
    return names


def known_names() -> set[str]:
    """Every name a scrape of a Portico program can show (a histogram's with its suffixes)."""
    names = set()
    for program in PROGRAMS:
        for name, kind in registered(program).items():
            names.add(name)
            if kind == "histogram":
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
    return names


def promql_examples(text: str | None = None) -> list[str]:
    """The queries of docs/metrics.md's promql blocks (an indented line continues the last)."""
    text = METRICS_DOC.read_text() if text is None else text
    exprs: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and exprs:
                exprs[-1] += " " + line.strip()
            else:
                exprs.append(line.strip())
    return exprs

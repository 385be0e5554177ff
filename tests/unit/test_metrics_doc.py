"""docs/metrics.md lists exactly the metrics each program registers, under the program's
prefix and Prometheus' naming rules."""

from __future__ import annotations

import pytest

from .metrics_catalog import (
    PROGRAMS,
    documented,
    known_names,
    metric_names,
    promql_examples,
    registered,
)

PREFIX = {
    "operator": "portico_operator_",
    "nodeagent": "portico_nodeagent_",
    "gateway": "portico_gateway_",
}
# prometheus_client's process, platform and GC collectors: their names are theirs.
RUNTIME_PREFIXES = ("process_", "python_")


@pytest.fixture(scope="module")
def docs() -> dict[str, set[str]]:
    return documented()


@pytest.mark.parametrize("program", PROGRAMS)
def test_doc_lists_exactly_what_the_program_registers(program, docs):
    names = set(registered(program))
    assert names - docs[program] == set(), "registered but not in docs/metrics.md"
    assert docs[program] - names == set(), "in docs/metrics.md but not registered"


@pytest.mark.parametrize("program", PROGRAMS)
def test_names_follow_the_conventions(program):
    metrics = registered(program)
    assert f"portico_{program}_build_info" in metrics
    assert "process_cpu_seconds_total" in metrics and "python_gc_collections_total" in metrics
    for name, kind in metrics.items():
        if name.startswith(RUNTIME_PREFIXES):
            continue
        assert name.startswith(PREFIX[program]), name
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_sections_are_read_by_program():
    text = (
        "## Every program\n| `process_x` | gauge |\n"
        "## Operator (`portico-operator`)\n| Metric | Type |\n|---|---|\n"
        "| `portico_operator_a` | gauge |\n"
        "## Gateway: per VIP\n| `portico_gateway_vip_b_total` | counter |\n"
        "## Elsewhere\n| `not_a_metric` | gauge |\n"
    )
    assert documented(text) == {
        "operator": {"process_x", "portico_operator_a"},
        "nodeagent": {"process_x"},
        "gateway": {"process_x", "portico_gateway_vip_b_total"},
    }


def test_promql_examples_name_registered_metrics():
    examples = promql_examples()
    assert len(examples) >= 10
    known = known_names()
    for expr in examples:
        assert metric_names(expr), expr
        assert metric_names(expr) <= known, expr


def test_promql_examples_are_read_whole():
    text = "```promql\n# a comment\nsum(a)\n  / sum(b)\n\nc\n```\n"
    assert promql_examples(text) == ["sum(a) / sum(b)", "c"]

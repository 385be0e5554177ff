"""The chart's Grafana dashboard: valid JSON for Grafana, every query on its datasource variable,
every metric a query names registered by a Portico program, and the ConfigMap that ships it
behind grafanaDashboard.enabled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ..metrics_catalog import known_names, metric_names
from .test_manifests import CHART, helm, render

__all__ = ["helm"]  # the fixture, used by name

DASHBOARD = CHART / "dashboards" / "portico.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels") or [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


@pytest.fixture(scope="module")
def known() -> set[str]:
    return known_names()


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets") or []]


def test_metric_names_parse():
    assert metric_names(
        "histogram_quantile(0.99, sum by (le, kind) "
        '(rate(a_seconds_bucket{kind="x"}[$__rate_interval])))'
        " / on (kind) group_left b_total offset 5m and c > 0.9"
    ) == {"a_seconds_bucket", "b_total", "c"}
    assert metric_names('max by (pool) (used - cap{family="ipv4"})') == {"used", "cap"}


def test_every_query_names_registered_metrics(dashboard, known):
    assert exprs(dashboard)
    for expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names - known == set(), expr


def test_every_program_has_panels(dashboard):
    named = set().union(*(metric_names(e) for e in exprs(dashboard)))
    for prefix in (
        "portico_operator_",
        "portico_nodeagent_",
        "portico_gateway_",
        "portico_gateway_vip_",
    ):
        assert any(n.startswith(prefix) for n in named), prefix


def test_grafana_shape(dashboard):
    assert dashboard["uid"] == "portico" and dashboard["title"] == "Portico"
    assert 36 <= dashboard["schemaVersion"] <= 41
    (var,) = dashboard["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard["panels"]):
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert all(t["datasource"] == DATASOURCE for t in p["targets"]), p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]


def dashboards(docs):
    """The ConfigMaps but the pools' one (templates/vippools.yaml, always rendered)."""
    return [d for d in docs if d["kind"] == "ConfigMap" and "pools.yaml" not in d["data"]]


def test_configmap_off_by_default(helm):
    assert not dashboards(render(helm))


def test_configmap_carries_the_dashboard(helm):
    docs = render(
        helm,
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.namespace=monitoring",
        "--set",
        "grafanaDashboard.labels.team=net",
    )
    (cm,) = dashboards(docs)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "net"
    assert json.loads(cm["data"]["portico.json"]) == json.loads(DASHBOARD.read_text())

"""portico_common.metrics: what every program's registry carries besides its own metrics."""

from __future__ import annotations

import platform
from importlib import metadata

import pytest
from portico_common import metrics
from prometheus_client import CollectorRegistry


def test_a_new_registry_has_build_info_and_the_runtime_collectors() -> None:
    r = metrics.program_registry("demo")
    names = {m.name for m in r.collect()}
    assert {"process_cpu_seconds", "python_info", "python_gc_collections"} <= names
    labels = {"version": metrics.package_version(), "python_version": platform.python_version()}
    assert r.get_sample_value("portico_demo_build_info", labels) == 1.0
    assert metrics.package_version() == metadata.version("portico")


def test_version_of_a_tree_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metrics.metadata, "version", missing)
    assert metrics.package_version() == "unknown"
    r = metrics.program_registry("demo")
    labels = {"version": "unknown", "python_version": platform.python_version()}
    assert r.get_sample_value("portico_demo_build_info", labels) == 1.0


def test_only_a_new_registry_or_the_default_one() -> None:
    with pytest.raises(ValueError):
        metrics.program_registry("demo", CollectorRegistry())

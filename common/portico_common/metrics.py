"""What every Portico program's Prometheus registry carries besides its own metrics: a
``portico_<program>_build_info`` and the process, platform (Python version) and GC collectors of
prometheus_client. One function, so the three programs expose the same set under one rule.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

DISTRIBUTION = "portico"  # the package (pyproject's [project] name) all three programs ship in
UNKNOWN_VERSION = "unknown"  # running from a source tree that was never installed


def package_version(distribution: str = DISTRIBUTION) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def program_registry(program: str, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry ``portico_<program>_*`` metrics go in, with ``build_info`` and the runtime
    collectors. None: a new registry (the operator and the node agent, whose metrics objects
    tests build many times per process). The process's default ``REGISTRY`` (the gateway, whose
    announcer counts frames in module-level counters): prometheus_client registered the runtime
    collectors there when it was imported, so only ``build_info`` is added."""
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    elif registry is not REGISTRY:
        raise ValueError("program_registry: a new registry or the default REGISTRY")
    build_info = Gauge(
        f"portico_{program}_build_info",
        "Always 1; the labels say which Portico version and Python run this program",
        ["version", "python_version"],
        registry=registry,
    )
    build_info.labels(package_version(), platform.python_version()).set(1)
    return registry


def serve(registry: CollectorRegistry, port: int) -> None:
    """Serves ``registry`` at ``http://0.0.0.0:port/metrics`` from a thread; 0: not at all."""
    if port:
        start_http_server(port, registry=registry)

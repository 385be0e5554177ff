"""The session's lab. It needs root and network namespaces; without them every lab test errors
loudly (pytest.fail), it never skips."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import install_crds

from .dataplane_harness import KUBE_PROXY
from .operator_harness import Api


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    # Within a module, the cases with kube-proxy beside last (its start is shared; the others
    # must run without it); otherwise the order stays.
    first = {}
    for i, item in enumerate(items):
        first.setdefault(str(item.fspath), i)
    items.sort(key=lambda it: (first[str(it.fspath)], _beside(it) == KUBE_PROXY))


def _beside(item: pytest.Item) -> object:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("beside") if callspec is not None else None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    # A CI timeout or a kill sends SIGTERM: turned into an interrupt, pytest still tears the
    # lab down (its namespaces, links and processes) instead of leaving it behind.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        lab = Lab.up(LabConfig(nodes=3, pods_per_node=2, zones=2, gateways=1, clients=2))
    except Exception as e:
        pytest.fail(f"the lab could not start: {type(e).__name__}: {e}", pytrace=False)
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def api(lab: Lab) -> Api:
    """Portico's CRDs installed and a client for the objects the operator tests read."""
    install_crds(lab)
    return Api(lab)

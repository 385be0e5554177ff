"""Whether the rules in force are what a render from scratch makes of the same input. The agent
applies incremental renders (only the Services that changed); a defect there would leave a table
that matches its own index (so ``verify`` is content) but not the Services. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from portico_common.model import LBService, NodeInfo

from .render import render_table
from .rulesindex import RulesIndex, index_of


def render_drift(
    applied: RulesIndex, services: Iterable[LBService], node: NodeInfo, limit: int = 10
) -> list[str]:
    """How ``applied`` differs from the full render of ``services`` for ``node`` (empty: not at
    all), at most ``limit`` differences."""
    fresh = index_of(render_table(services, node))
    if applied.same_as(fresh):
        return []
    return applied.differences(fresh, limit) or ["the two indexes differ"]

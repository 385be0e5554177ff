"""Portico's nftables table on this node, an ``OwnedTable`` (``portico_common.nfttable``, whose
docstring gives the fallback order: diff from what was applied, diff from the kernel's listing,
full replace, keep what is in force).

Every change is one libnftables JSON batch, which the kernel applies as one transaction: a
packet sees the old rules or the new ones, never a half. Changes are computed by ``diff_rules``,
so an endpoint change adds and deletes map elements and rewrites the one Service chain it
touches, and the table is never reloaded for it. The kernel's listing is diffed from (at a
start, and when a change from what was applied is refused): ``index_rules`` reads it exactly,
and a diff keeps the ClientIP affinity pins that a full replace loses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from portico_common.nfttable import ApplyResult, Commands, NftError, OwnedTable

from . import nftnames as N
from .incremental import Render
from .rulesdiff import Build, delete_table, diff_rules, in_steps, replace_table
from .rulesindex import RulesIndex, index_rules

__all__ = ["ApplyResult", "NftError", "NftTable"]


# A render (libnftables JSON), or a function that makes it on demand.
Doc = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _document(doc: Doc) -> Mapping[str, Any]:
    return doc() if callable(doc) else doc


class NftTable(OwnedTable[Render]):
    """Owns ``inet portico`` and nothing else. What is applied is kept as a ``Render``: its
    index, compared and diffed, and how to make its document (only a full replace needs it)."""

    family = N.FAMILY
    name = N.TABLE
    diff_from_listing = True
    log = logging.getLogger("portico.nodeagent.nft")

    def apply(self, doc: Doc | Render, desired: RulesIndex | None = None) -> ApplyResult:
        """Makes the table hold ``doc`` (a render, or a ``NodeRenderer``'s ``Render``).
        Incremental against what was last applied (when that is the ``Render``'s base, only
        what it touched is compared); on the first call (a restart) against the kernel's own
        listing, so a table that is already right is left untouched. ``desired``, when given, must
        be ``index_rules(doc)``."""
        if not isinstance(doc, Render):
            raw = doc
            index = desired if desired is not None else index_rules(_document(raw))
            doc = Render(index, lambda: dict(_document(raw)))
        return super().apply(doc)

    def run(self, cmds: Commands) -> None:
        """A table built from nothing goes in in steps (``in_steps``); anything else is one
        transaction."""
        for step in (cmds,) if isinstance(cmds, str) else in_steps(cmds):
            super().run(step)

    def read(self, listing: Mapping[str, Any]) -> Render:
        index = index_rules(listing)
        return Render(index, lambda: diff_rules(RulesIndex(), index))

    def same(self, a: Render, b: Render) -> bool:
        return a.index.same_as(b.index)

    def diff(self, old: Render | None, new: Render) -> Mapping[str, Any]:
        if old is None:  # no table: build it (in steps when large, see ``run``)
            return Build(new.index)
        touched = new.touched if new.base is not None and new.base is old.index else None
        return diff_rules(old.index, new.index, touched)

    def rebuild(self, new: Render, current: Callable[[], Render | None]) -> Mapping[str, Any]:
        return replace_table(new.document())

    def removal(self) -> Mapping[str, Any]:
        return delete_table()

    def counts(self, state: Render) -> dict[str, int]:
        return state.index.counts()

    def kept(self, new: Render) -> Render:
        # Not its base: the previous index would stay alive until the next apply.
        return Render(new.index, new.document) if new.base is not None else new

    def cleanup(self) -> None:
        """Removes the table (uninstall); nothing else is touched."""
        self.delete()

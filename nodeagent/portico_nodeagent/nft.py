"""Portico's nftables table on this node, an ``OwnedTable`` (``portico_common.nfttable``, whose
docstring gives the fallback order: diff from what was applied, diff from the kernel's listing,
full replace, keep what is in force).

Every change is one libnftables JSON batch, which the kernel applies as one transaction: a
packet sees the old rules or the new ones, never a half. Changes are computed by ``diff_rules``,
so an endpoint change adds and deletes map elements and rewrites the one Service chain it
touches, and the table is never reloaded for it. The kernel's listing is diffed from (at a
start, and when a change from what was applied is refused): ``index_rules`` reads it exactly,
and a diff keeps the ClientIP affinity pins that a full replace loses.

The kernel's table is read in parts, never whole (``current``, and ``kernel_holds`` for verify):
a terse listing (chains, rules, sets, maps without elements; nft does not fetch elements for
it), then each map's elements from netlink, one map at a time, read into the index or compared
with what was applied as they come. libnftables lists ~1.8 KiB an element (a JSON listing of the
whole table at 10,000 Services peaked at +500 MiB, and the handle kept ~240 MiB of it); this way
the read costs one map's netlink messages. The full replace is one JSON transaction written as
text from the index (``_replace_text``), so its elements are never Python objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from portico_common.nfttable import ApplyResult, Commands, JsonText, NftError, OwnedTable

from . import nftnames as N
from .incremental import Render
from .rulesdiff import Build, delete_table, diff_rules, document_of, in_steps, replace_table
from .rulesindex import RulesIndex, holds_elements, index_rules, read_elements, same_outline

__all__ = ["ApplyResult", "NftError", "NftTable"]


# A render (libnftables JSON), or a function that makes it on demand.
Doc = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _document(doc: Doc) -> Mapping[str, Any]:
    return doc() if callable(doc) else doc


def _render(index: RulesIndex) -> Render:
    return Render(index, lambda: diff_rules(RulesIndex(), index))


def _replace_text(idx: RulesIndex) -> JsonText:
    """``replace_table(document_of(idx))`` (one transaction), written as JSON text: the
    elements straight from the index's canonical text, never as Python objects (~600 bytes an
    element, ~100 MiB at 10,000 Services)."""
    outline = replace_table(document_of(replace(idx, elements={})))["nftables"]
    # document_of's order: table, sets, maps, chains, elements, rules.
    at = next((i for i, c in enumerate(outline) if "rule" in c.get("add", {})), len(outline))
    where = f'"family":{json.dumps(N.FAMILY)},"table":{json.dumps(N.TABLE)}'
    parts = [json.dumps(c) for c in outline[:at]]
    for m, elems in idx.elements.items():
        if elems:
            items = ",".join(f"[{k},{v}]" for k, v in sorted(elems.items()))
            name = json.dumps(m)
            parts.append(f'{{"add":{{"element":{{{where},"name":{name},"elem":[{items}]}}}}}}')
    parts += [json.dumps(c) for c in outline[at:]]
    text = JsonText('{"nftables":[' + ",".join(parts) + "]}")
    text.commands = len(parts)
    return text


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
        return _render(index_rules(listing))

    def _outline(self) -> tuple[RulesIndex, list[Mapping[str, Any]]] | None:
        """The table from a terse listing (its maps without elements), and its maps' objects;
        None when there is no table."""
        listing = self._nft.listing(self.family, self.name, terse=True)
        if listing is None:
            return None
        maps = [item["map"] for item in listing.get("nftables") or () if "map" in item]
        return index_rules(listing), maps

    def current(self) -> Render | None:
        """The kernel's table, read in parts: a terse listing, then a map's elements at a
        time."""
        outline = self._outline()
        if outline is None:
            return None
        index, maps = outline
        for m in maps:
            index.elements[m["name"]] = read_elements(
                self._nft.map_elements(self.family, self.name, m)
            )
        return _render(index)

    def kernel_holds(self, applied: Render) -> bool:
        """Compares the kernel's table with ``applied`` in parts: a terse listing, then each
        map's elements as they come; none of them is kept, and the first difference ends it."""
        outline = self._outline()
        if outline is None:
            return False
        index, maps = outline
        want = applied.index
        return same_outline(index, want) and all(
            holds_elements(
                want.elements[m["name"]], self._nft.map_elements(self.family, self.name, m)
            )
            for m in maps
        )

    def same(self, a: Render, b: Render) -> bool:
        return a.index.same_as(b.index)

    def diff(self, old: Render | None, new: Render) -> Mapping[str, Any]:
        if old is None:  # no table: build it (in steps when large, see ``run``)
            return Build(new.index)
        touched = new.touched if new.base is not None and new.base is old.index else None
        return diff_rules(old.index, new.index, touched)

    def rebuild(self, new: Render, current: Callable[[], Render | None]) -> JsonText:
        return _replace_text(new.index)

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

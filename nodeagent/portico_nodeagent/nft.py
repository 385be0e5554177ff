"""Portico's nftables table on this node, through one long-lived libnftables handle.

Every change is one libnftables JSON batch, which the kernel applies as one transaction: a
packet sees the old rules or the new ones, never a half. Changes are computed by
``portico_common.noderules.diff_rules``, so an endpoint change adds and deletes map elements and
rewrites the one Service chain it touches, and the table is never reloaded for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from portico_common.nfthandle import Libnftables
from portico_common.nftresult import ApplyResult, NftError, Stats

from . import nftnames as N
from .incremental import Render
from .rulesdiff import delete_table, diff_rules, replace_table
from .rulesindex import RulesIndex, index_rules

log = logging.getLogger("portico.nodeagent.nft")


# A render (libnftables JSON), or a function that makes it on demand.
Doc = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def _document(doc: Doc) -> Mapping[str, Any]:
    return doc() if callable(doc) else doc


class NftTable:
    """Owns ``inet portico`` and nothing else. Not thread-safe by itself: calls are serialised
    by an internal lock so a verifier thread and an applier can share one handle."""

    def __init__(self) -> None:
        self._nft = Libnftables()
        self._lock = threading.Lock()
        self._applied: RulesIndex | None = None  # what we last put in the kernel
        # The render, or how to make it (only a full replace needs the whole document).
        self._doc: Doc | None = None
        self.stats = Stats()

    # -- primitives -----------------------------------------------------------------------------
    def run(self, doc: Mapping[str, Any]) -> None:
        self._nft.run_json(doc)

    def listing(self) -> dict[str, Any] | None:
        """The kernel's JSON listing of our table, or None when it does not exist."""
        return self._nft.listing(N.FAMILY, N.TABLE)

    def current(self) -> RulesIndex:
        listing = self.listing()
        return index_rules(listing) if listing is not None else RulesIndex()

    # -- the agent's operations -----------------------------------------------------------------
    def apply(self, doc: Doc | Render, desired: RulesIndex | None = None) -> ApplyResult:
        """Makes the table hold ``doc`` (a render, or a ``NodeRenderer``'s ``Render``).
        Incremental against what was last applied (when that is the ``Render``'s base, only
        what it touched is compared); on the first call (a restart) against the kernel's own
        listing, so a table that is already right is left untouched. Falls back to a
        one-transaction replace if the incremental change fails. ``desired``, when given, must
        be ``index_rules(doc)``."""
        with self._lock:
            touched = None
            if isinstance(doc, Render):
                desired = doc.index
                if doc.base is not None and doc.base is self._applied:
                    touched = doc.touched
                doc = doc.document
            elif desired is None:
                desired = index_rules(_document(doc))
            t0 = time.perf_counter()
            base = self._applied if self._applied is not None else self.current()
            change = diff_rules(base, desired, touched)
            mode = "incremental" if change["nftables"] else "none"
            t_run = time.perf_counter()
            try:
                self.run(change)
            except NftError as e:
                log.warning("incremental apply failed, replacing the table: %s", e)
                self.stats.errors += 1
                self.stats.last_error = str(e)
                # What we believed may be wrong: diff against the kernel, then replace.
                try:
                    change = diff_rules(self.current(), desired)
                    self.run(change)
                except NftError:
                    change = replace_table(_document(doc))
                    self.run(change)
                mode = "replace"
            t_end = time.perf_counter()
            seconds = t_end - t0
            self._applied = desired
            self._doc = doc
            self.stats.applies += 1
            self.stats.last_seconds = seconds
            self.stats.last_commands = len(change["nftables"])
            self.stats.counts = desired.counts()
            return ApplyResult(len(change["nftables"]), seconds, mode, t_end - t_run)

    def verify(self) -> bool:
        """Compares the kernel's table with what was applied; restores it (incrementally, from
        what is there) if someone flushed or edited it. Returns True when it had to restore."""
        with self._lock:
            if self._applied is None or self._doc is None:
                return False
            actual = self.current()
            if actual.same_as(self._applied):
                return False
            log.warning("table %s %s differs from what was applied: restoring", N.FAMILY, N.TABLE)
            try:
                self.run(diff_rules(actual, self._applied))
            except NftError as e:
                log.warning("incremental restore failed (%s): replacing the table", e)
                self.run(replace_table(_document(self._doc)))
            self.stats.restores += 1
            return True

    def cleanup(self) -> None:
        """Removes the table (uninstall); nothing else is touched."""
        with self._lock:
            self.run(delete_table())
            self._applied = None
            self._doc = None

"""The gateway's forwarding table in the kernel, through one long-lived libnftables handle.

Every change is one libnftables JSON batch, hence one kernel transaction: a packet sees the old
table or the new one. The first apply (a start or restart) is a full replace built against the
kernel's own listing, so leftovers of an earlier run go in the same transaction; later applies
are ``diff_fwd`` against what was applied last. libnftables works in the network namespace of
the calling thread: create and use a FwdTable in the gateway's namespace.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from portico_common.nfthandle import Libnftables
from portico_common.nftresult import ApplyResult, NftError, Stats

from .fwdrules import FAMILY, TABLE, FwdRules, Json, delete_table_json, diff_fwd, parse_listing

log = logging.getLogger("portico.lbnode.fwdnft")

__all__ = ["ApplyResult", "FwdTable", "NftError", "Stats"]


class FwdTable:
    """Owns ``netdev portico-gw`` and nothing else. Calls are serialised by a lock, so that a
    verifier thread and the applier can share the one handle."""

    def __init__(self) -> None:
        self._nft = Libnftables()
        self._lock = threading.Lock()
        self._applied: FwdRules | None = None  # what we last put in the kernel
        self.stats = Stats()

    @property
    def applied(self) -> FwdRules | None:
        """The rules in force (pass them to ``render_fwd(previous=)``)."""
        return self._applied

    # -- primitives -----------------------------------------------------------------------------
    def run(self, doc: Json) -> None:
        self._nft.run_json(doc)

    def listing(self) -> dict[str, Any] | None:
        """The kernel's JSON listing of the table, or None when there is none."""
        return self._nft.listing(FAMILY, TABLE)

    def current(self) -> FwdRules | None:
        listing = self.listing()
        return parse_listing(listing) if listing is not None else None

    def _replace(self, new: FwdRules) -> int:
        doc = new.to_json_replace(self.current())
        self.run(doc)
        return len(doc["nftables"])

    # -- the gateway's operations ---------------------------------------------------------------
    def apply(self, new: FwdRules) -> ApplyResult:
        """Makes the table hold ``new``: a full replace the first time, then only the
        difference from what was applied. Falls back to a full replace if the difference is
        refused (someone changed the table under us)."""
        with self._lock:
            t0 = time.perf_counter()
            if self._applied is None:
                mode = "replace"
                t_run = time.perf_counter()
                commands = self._replace(new)
            else:
                cmds = diff_fwd(self._applied, new)
                mode = "incremental" if cmds else "none"
                t_run = time.perf_counter()
                commands = len(cmds)
                try:
                    self.run({"nftables": cmds})
                except NftError as e:
                    log.warning("incremental apply failed, replacing the table: %s", e)
                    self.stats.errors += 1
                    self.stats.last_error = str(e)
                    mode = "replace"
                    commands = self._replace(new)
            t_end = time.perf_counter()
            self._applied = new
            self.stats.applies += 1
            self.stats.last_seconds = t_end - t0
            self.stats.last_commands = commands
            self.stats.counts = new.counts()
            return ApplyResult(commands, t_end - t0, mode, t_end - t_run)

    def verify(self) -> bool:
        """Compares the kernel's table with what was applied and replaces it if someone
        flushed, edited or deleted it. Returns True when it had to restore."""
        with self._lock:
            if self._applied is None:
                return False
            actual = self.current()
            if actual is not None and actual.same_as(self._applied):
                return False
            log.warning("table %s %s differs from what was applied: restoring", FAMILY, TABLE)
            self._replace(self._applied)
            self.stats.restores += 1
            return True

    def delete(self) -> None:
        """Removes the table (shutdown, uninstall); nothing else is touched."""
        with self._lock:
            self.run(delete_table_json())
            self._applied = None

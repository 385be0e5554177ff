"""The gateway's forwarding table in the kernel (``fwdrules``), an ``OwnedTable``: each change is
``diff_fwd`` against what was applied last, in one transaction; the fallback, and the first apply
(a start or restart), is a full replace built against the kernel's own listing, so leftovers of
an earlier run go in the same transaction. The listing is not diffed from: nft leaves a netdev
chain's device out of it. libnftables works in the network namespace of the calling thread:
create and use a FwdTable in the gateway's namespace.

The flows maps (``flowrules``) are the packet path's: a replace neither flushes nor deletes
them (a restart keeps every pin), and the table is read without them (a terse listing, then the
other sets' and maps' elements one at a time: a million pins are never listed). Their helper
chains' map statements are nft text, which the JSON a replace is made of cannot carry: every
replace is followed, in the same locked apply, by one nft text transaction that rewrites them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from portico_common.nfttable import ApplyResult, Commands, NftError, OwnedTable, Stats

from .flowrules import helpers_text
from .fwddiff import diff_fwd, parse_listing
from .fwdrules import FAMILY, TABLE, FwdRules, Json, delete_table_json

__all__ = ["ApplyResult", "FwdTable", "NftError", "Stats"]


# What libnftables 1.0.6 writes to the process's stderr (fd 2, not its error buffer) for each
# map statement it lists: one line per pin helper rule at every read of the table.
_MAP_WARNING = b"warning: stmt ops map have no json callback"


@contextlib.contextmanager
def _without_map_warnings() -> Iterator[None]:
    """Runs the body with fd 2 going to a pipe, then writes back to stderr what other threads
    wrote meanwhile, without libnftables' map statement warnings."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        fcntl.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK)
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        os.close(read_end)
        kept = [ln for ln in b"".join(chunks).splitlines(True) if not ln.startswith(_MAP_WARNING)]
        if kept:
            os.write(2, b"".join(kept))


class _Replace(dict[str, Any]):
    """A full replace's JSON: the helper chains' rules are written after it."""


class FwdTable(OwnedTable[FwdRules]):
    """Owns ``netdev portico-gw``. ``applied`` is the rules in force (pass them to
    ``render_fwd(previous=)``)."""

    family = FAMILY
    name = TABLE
    log = logging.getLogger("portico.lbnode.fwdnft")

    def read(self, listing: Mapping[str, Any]) -> FwdRules:
        return parse_listing(listing)

    def listing(self) -> dict[str, Any] | None:
        """The table without the flows maps' elements: a terse listing, then each other set's
        and map's elements."""
        with _without_map_warnings():
            listing = self._nft.listing(FAMILY, TABLE, terse=True)
        if listing is None:
            return None
        for item in listing.get("nftables") or ():
            if "map" in item and item["map"].get("timeout") is None:
                m = item["map"]
                m["elem"] = [
                    [json.loads(k), json.loads(v)]
                    for k, v in self._nft.map_elements(FAMILY, TABLE, m)
                ]
            elif "set" in item:
                s = item["set"]
                s["elem"] = self._nft.set_elements(FAMILY, TABLE, s["name"])
        return listing

    def same(self, a: FwdRules, b: FwdRules) -> bool:
        return a.same_as(b)

    def diff(self, old: FwdRules | None, new: FwdRules) -> Json | None:
        if old is None:
            return None
        try:
            return {"nftables": diff_fwd(old, new)}
        except ValueError:  # the helper chains are to be written: only a replace does
            return None

    def rebuild(self, new: FwdRules, current: Callable[[], FwdRules | None]) -> Json:
        return _Replace(new.to_json_replace(current()))

    def run(self, cmds: Commands) -> None:
        super().run(cmds)
        if isinstance(cmds, _Replace):
            super().run(helpers_text(FAMILY, TABLE))

    def removal(self) -> Json:
        return delete_table_json()

    def counts(self, state: FwdRules) -> dict[str, int]:
        return state.counts()

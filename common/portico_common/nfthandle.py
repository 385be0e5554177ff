"""libnftables (Debian's python3-nftables) for Portico's tables, and the two things netlink gives
more cheaply. All of it works in the network namespace of the calling thread.

* **Transactions** go through one long-lived handle: JSON batches, JSON text or nft text in, one
  kernel transaction per call, errors raised as ``NftError``. A handle keeps nothing of a
  transaction once it is done.
* **Listings** are each made in a handle of their own, freed right after: a handle keeps its
  cache of everything it listed until its next command (~240 MiB after the node agent's table at
  10,000 Services, bench/nodeagent_listing.py). ``terse`` leaves named sets' and maps'
  elements out (rules' anonymous sets are kept), and nft 1.0.6 then does not fetch them from
  the kernel for ``list ruleset`` (+3 MiB at 10,000 Services) but still does for ``list table``
  (+238 MiB): a terse listing of a table is its family's ruleset, filtered.
* **The ruleset's generation** and **a map's elements** come from netlink (``nftnetlink``), which
  gives them more cheaply; a map netlink decoding does not read is listed by libnftables in a
  handle of its own.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import nftnetlink
from .nftnetlink import canon
from .nftresult import NftError

__all__ = ["Libnftables", "trim"]


def _handle(terse: bool = False) -> Any:
    import nftables  # Debian's python3-nftables, on the venv's path

    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    nft.set_terse_output(terse)
    return nft


class Libnftables:
    def __init__(self) -> None:
        self._nft = _handle()

    def run_json(self, doc: Mapping[str, Any]) -> None:
        """One libnftables JSON batch; nothing to do for an empty one."""
        if not doc.get("nftables"):
            return
        rc, _out, err = self._nft.json_cmd(dict(doc))
        if rc != 0:
            raise NftError((err or f"libnftables returned {rc}").strip())

    def run_json_text(self, text: str) -> None:
        """A JSON batch already serialised (``{"nftables": [...]}``), in one transaction: a
        handle with JSON output reads its input as JSON (libnftables 1.0.6)."""
        self.run_text(text)

    def run_text(self, text: str) -> None:
        """nft syntax, as ``nft -f`` reads it, in one transaction."""
        rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError((err or f"libnftables returned {rc}").strip())

    def listing(self, family: str, table: str, *, terse: bool = False) -> dict[str, Any] | None:
        """The kernel's JSON listing of one table, or None when it does not exist; ``terse``:
        without its sets' and maps' elements. Made in a handle freed after."""
        if not terse:
            return _list(f"list table {family} {table}", False)
        ruleset = _list(f"list ruleset {family}", True) or {}
        items = [i for i in ruleset.get("nftables") or () if _of(i, family, table)]
        if not any("table" in i for i in items):
            return None
        return {"nftables": items}

    def generation(self) -> int | None:
        """The ruleset's generation (see the module docstring), or None when netlink does not
        give it (then nothing may be concluded from it)."""
        return nftnetlink.generation()

    def map_elements(
        self, family: str, table: str, decl: Mapping[str, Any]
    ) -> Iterator[tuple[str, str]]:
        """The elements of one map, ``decl`` being its object in a (terse) listing (name, type,
        map, flags), as (key, value) in the JSON nft lists them in, each as canonical text
        (``canon``); nothing when the map is not there. From netlink (``nftnetlink``) where it
        decodes the map's types, else listed by libnftables in a handle of its own."""
        if nftnetlink.decodable(decl):
            yield from nftnetlink.map_elements(family, table, decl)
            return
        listing = _list(f"list map {family} {table} {decl['name']}", False)
        for item in (listing or {}).get("nftables", ()):
            for k, v in item.get("map", {}).get("elem") or ():
                yield canon(k), canon(v)

    def counters(self, family: str, table: str) -> dict[str, Any]:
        """The named counters of one table with their values and handles, as ``nft -j -a list
        counters table`` gives them (none when the table does not exist). From netlink
        (``nftnetlink.counters``): libnftables would fetch the whole table first."""
        return {"nftables": [{"counter": c} for c in nftnetlink.counters(family, table)]}

    def set_elements(self, family: str, table: str, name: str) -> list[Any]:
        """The elements of one named set, as nft lists them (JSON values), in a handle of its
        own; nothing when the set is not there."""
        listing = _list(f"list set {family} {table} {name}", False)
        for item in (listing or {}).get("nftables", ()):
            if "set" in item:
                return list(item["set"].get("elem") or ())
        return []


def _of(item: Mapping[str, Any], family: str, table: str) -> bool:
    """Whether a listing's object is table ``family`` ``table`` or in it."""
    ((kind, obj),) = item.items()
    if kind == "metainfo" or not isinstance(obj, Mapping) or obj.get("family") != family:
        return False
    return obj.get("name" if kind == "table" else "table") == table


def _list(cmd: str, terse: bool) -> dict[str, Any] | None:
    nft = _handle(terse)
    rc, out, err = nft.cmd(cmd)
    del nft  # its cache goes with it
    if rc != 0:
        if "No such file or directory" in (err or ""):
            return None
        raise NftError((err or f"libnftables returned {rc}").strip())
    return json.loads(out) if isinstance(out, str) else out  # type: ignore[no-any-return]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def trim() -> None:
    """Gives the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing
    where there is none). After big operations: what libnftables and the reading of a listing
    freed stays in the process otherwise."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)

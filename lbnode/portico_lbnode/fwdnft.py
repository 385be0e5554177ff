"""The gateway's forwarding table in the kernel (``fwdrules``), an ``OwnedTable``: each change is
``diff_fwd`` against what was applied last, in one transaction; the fallback, and the first apply
(a start or restart), is a full replace built against the kernel's own listing, so leftovers of
an earlier run go in the same transaction. The listing is not diffed from: nft leaves a netdev
chain's device out of it, and the table holds nothing a replace would lose. libnftables works in
the network namespace of the calling thread: create and use a FwdTable in the gateway's
namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from portico_common.nfttable import ApplyResult, NftError, OwnedTable, Stats

from .fwddiff import diff_fwd, parse_listing
from .fwdrules import FAMILY, TABLE, FwdRules, Json, delete_table_json

__all__ = ["ApplyResult", "FwdTable", "NftError", "Stats"]


class FwdTable(OwnedTable[FwdRules]):
    """Owns ``netdev portico-gw``. ``applied`` is the rules in force (pass them to
    ``render_fwd(previous=)``)."""

    family = FAMILY
    name = TABLE
    log = logging.getLogger("portico.lbnode.fwdnft")

    def read(self, listing: Mapping[str, Any]) -> FwdRules:
        return parse_listing(listing)

    def same(self, a: FwdRules, b: FwdRules) -> bool:
        return a.same_as(b)

    def diff(self, old: FwdRules | None, new: FwdRules) -> Json | None:
        return None if old is None else {"nftables": diff_fwd(old, new)}

    def rebuild(self, new: FwdRules, current: Callable[[], FwdRules | None]) -> Json:
        return new.to_json_replace(current())

    def removal(self) -> Json:
        return delete_table_json()

    def counts(self, state: FwdRules) -> dict[str, int]:
        return state.counts()

"""The NAT mode table in the kernel (``natrules``), an ``OwnedTable`` of nft text: replaced in
one transaction when its text changes (it has no incremental form), restored if someone deletes
it (its text is not read back, so only its presence is verified)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from portico_common.nfttable import OwnedTable

from .natrules import FAMILY, TABLE, replace_script


class _Owned(OwnedTable[str]):
    family = FAMILY
    name = TABLE
    log = logging.getLogger("portico.lbnode.natnft")

    def holds(self, listing: Mapping[str, Any], applied: str) -> bool:
        return True  # it exists

    def diff(self, old: str | None, new: str) -> str | None:
        return "" if old == new else None

    def rebuild(self, new: str, current: Callable[[], str | None]) -> str:
        return replace_script(new)

    def removal(self) -> str:
        return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}"


class NatTable:
    def __init__(self) -> None:
        self._table = _Owned()

    def apply(self, table: str) -> bool:
        """Puts ``table`` in force; False when it already was."""
        return self._table.apply(table).mode != "none"

    def verify(self) -> bool:
        """Re-applies the table if it is gone; True when it had to."""
        return self._table.verify()

    def delete(self) -> None:
        self._table.delete()

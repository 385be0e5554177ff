"""The NAT mode table in the kernel (``natrules``), through one long-lived libnftables handle:
replaced in one transaction when its text changes, restored if someone deletes it."""

from __future__ import annotations

import threading

from portico_common.nfthandle import Libnftables

from .natrules import FAMILY, TABLE, replace_script


class NatTable:
    def __init__(self) -> None:
        self._nft = Libnftables()
        self._lock = threading.Lock()
        self._applied: str | None = None

    def apply(self, table: str) -> bool:
        """Puts ``table`` in force; False when it already was."""
        with self._lock:
            if table == self._applied:
                return False
            self._nft.run_text(replace_script(table))
            self._applied = table
            return True

    def verify(self) -> bool:
        """Re-applies the table if it is gone; True when it had to."""
        with self._lock:
            if self._applied is None:
                return False
            if self._nft.listing(FAMILY, TABLE) is not None:
                return False
            self._nft.run_text(replace_script(self._applied))
            return True

    def delete(self) -> None:
        with self._lock:
            self._nft.run_text(f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}")
            self._applied = None

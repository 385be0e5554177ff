"""The NAT mode table in the kernel (``natrules``), through one long-lived libnftables handle:
replaced in one transaction when its text changes, restored if someone deletes it."""

from __future__ import annotations

import threading

from portico_common.nftresult import NftError

from .natrules import FAMILY, TABLE, replace_script


class NatTable:
    def __init__(self) -> None:
        import nftables  # Debian's python3-nftables, on the venv's path

        self._nft = nftables.Nftables()
        self._lock = threading.Lock()
        self._applied: str | None = None

    def _run(self, text: str) -> None:
        rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError((err or f"libnftables returned {rc}").strip())

    def apply(self, table: str) -> bool:
        """Puts ``table`` in force; False when it already was."""
        with self._lock:
            if table == self._applied:
                return False
            self._run(replace_script(table))
            self._applied = table
            return True

    def verify(self) -> bool:
        """Re-applies the table if it is gone; True when it had to."""
        with self._lock:
            if self._applied is None:
                return False
            rc, _out, _err = self._nft.cmd(f"list table {FAMILY} {TABLE}")
            if rc == 0:
                return False
            self._run(replace_script(self._applied))
            return True

    def delete(self) -> None:
        with self._lock:
            self._run(f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}")
            self._applied = None

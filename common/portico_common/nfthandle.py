"""One long-lived libnftables handle (Debian's python3-nftables), as the node agent's and the
gateway's tables each keep: JSON batches or nft text in, one kernel transaction per call,
errors raised as ``NftError``. libnftables works in the network namespace of the calling
thread."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .nftresult import NftError


class Libnftables:
    def __init__(self) -> None:
        import nftables  # Debian's python3-nftables, on the venv's path

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def run_json(self, doc: Mapping[str, Any]) -> None:
        """One libnftables JSON batch; nothing to do for an empty one."""
        if not doc.get("nftables"):
            return
        rc, _out, err = self._nft.json_cmd(dict(doc))
        if rc != 0:
            raise NftError((err or f"libnftables returned {rc}").strip())

    def run_text(self, text: str) -> None:
        """nft syntax, as ``nft -f`` reads it, in one transaction."""
        rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError((err or f"libnftables returned {rc}").strip())

    def listing(self, family: str, table: str) -> dict[str, Any] | None:
        """The kernel's JSON listing of one table, or None when it does not exist."""
        rc, out, err = self._nft.cmd(f"list table {family} {table}")
        if rc != 0:
            if "No such file or directory" in (err or ""):
                return None
            raise NftError((err or f"libnftables returned {rc}").strip())
        return json.loads(out) if isinstance(out, str) else out

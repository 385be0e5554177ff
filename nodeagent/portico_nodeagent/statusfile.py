"""The agent's status file (``--status``): JSON, replaced whole, so a reader never sees half."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_status(path: Path | None, status: Mapping[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(status))
    tmp.replace(path)

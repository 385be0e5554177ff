"""JSON log lines, the same for every Portico program."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def setup_json_logging(level: str) -> None:
    """JSON lines on stderr at ``level``, as every Portico program logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # Structured fields passed as ``extra={"timing": {...}}`` (read by the benchmarks).
        timing = getattr(record, "timing", None)
        if timing is not None:
            out["timing"] = timing
        return json.dumps(out)

"""Running a program's loops side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_together(*loops: Coroutine[Any, Any, Any]) -> None:
    """Runs the loops as tasks until one fails or this is cancelled; then cancels the others
    and waits for them, so none outlives the caller."""
    tasks = [asyncio.ensure_future(c) for c in loops]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

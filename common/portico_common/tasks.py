"""Running a program's loops side by side."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any


async def run_until_signalled(coro: Coroutine[Any, Any, Any]) -> bool:
    """Runs ``coro`` until it ends or SIGTERM/SIGINT cancels it; True when a signal did."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


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

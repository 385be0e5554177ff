"""A keyed work queue (client-go's workqueue semantics): a key is queued at most once, is never
worked on by two workers at once, and a key added while it is worked on is worked on again."""

from __future__ import annotations

import asyncio


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()

    def add(self, key: str) -> None:
        if key in self._queued:
            return
        if key in self._active:
            self._again.add(key)
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def active(self, key: str) -> bool:
        """A worker is on this key right now."""
        return key in self._active

    def __len__(self) -> int:
        return len(self._queued)

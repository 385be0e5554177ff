"""Which LoadBalancer statuses the gateway may write now: a status never says more than the
kernel's forwarding table does.

A status is rendered from the gateway's health view at the moment it is written. A change to
that view (a probe answer, a neighbour verdict, a CR edit) reaches the kernel only with the next
reconcile pass, so a status whose Service has such a change pending would announce a node as
out (or in) while the table still forwards new flows to it (or not yet): a client that trusts
the status and connects at once lands on the node the status just said was gone. So a key
marked again after it became ready waits for the pass that programs the change, and is written
after that pass.

The life of a key: ``mark`` (a change, not yet in any pass) -> ``begin_pass`` takes every marked
key (the pass under way programs their changes) -> ``end_pass`` makes them ready -> ``take``
hands the ready keys that no change is pending for to the writers. A key marked while it waits
to be written is held back until its next pass ends; ``writable`` is asked again just before a
write, which may come after more changes. ``take`` hands out the keys that have waited longest
first (since their first change not yet written, until ``written``): when changes come faster
than a round of writes (a neighbour verdict flapping marks every Service), the keys a round
could not reach come first in the next, instead of the same ones being held back every time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable


class StatusQueue:
    def __init__(self) -> None:
        self._marked: set[str] = set()  # changed, in no pass yet
        self._in_pass: set[str] = set()  # changed before the pass under way began
        self._ready: set[str] = set()  # programmed: to be written
        self._order = itertools.count()
        self._waiting_since: dict[str, int] = {}  # key -> its first unwritten change, in order

    def mark(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._marked.add(key)
            self._waiting_since.setdefault(key, next(self._order))

    def drop(self, key: str) -> None:
        """The CR is gone: nothing to write for it."""
        self._marked.discard(key)
        self._in_pass.discard(key)
        self._ready.discard(key)
        self._waiting_since.pop(key, None)

    def begin_pass(self) -> None:
        self._in_pass |= self._marked
        self._marked = set()

    def end_pass(self, also: Iterable[str] = ()) -> None:
        """The pass programmed its keys' changes (and changed the statuses of ``also``, e.g.
        the Services whose announcement it flipped)."""
        self._ready |= self._in_pass
        for key in also:
            self._ready.add(key)
            self._waiting_since.setdefault(key, next(self._order))
        self._in_pass = set()

    def pass_failed(self) -> None:
        """Nothing of the pass reached the kernel: its keys wait for the pass that retries."""
        self._marked |= self._in_pass
        self._in_pass = set()

    def writable(self, key: str) -> bool:
        """No change of the key waits for a pass: its status would say what the table does."""
        return key not in self._marked and key not in self._in_pass

    def take(self) -> list[str]:
        """The keys to write now, those waiting longest first; the others come back after
        their pass."""
        now = [k for k in self._ready if self.writable(k)]
        for key in now:  # ready again while its last write ran (``written`` let it go)
            self._waiting_since.setdefault(key, next(self._order))
        self._ready = set()
        return sorted(now, key=self._waiting_since.__getitem__)

    def written(self, key: str) -> None:
        """The key's status was written (or found as it should be): it waits no more."""
        if self.writable(key):
            self._waiting_since.pop(key, None)

    def retry(self, key: str) -> None:
        """A write failed: the key is written again (after its pass, if it changed since)."""
        if self.writable(key):
            self._ready.add(key)

"""The withdrawal bookkeeping: addresses Services gave up, held until no LoadBalancer CR carries
them, and the Services waiting for an address, which every release may let in.

An address a Service gives up (it is deleted, no longer ours, or its request can no longer be
met) leaves the Service at once but stays out of its pool, under the allocator's withdrawal key,
until the CR that announced it no longer does: the gateways may still forward it meanwhile. A
publish (stage two) in flight may still write the old addresses, so a withdrawal that happens
during one is finished by that publish (``deferred``), not by the withdrawal.

Pure: no I/O and no asyncio. It changes the allocator's holdings and answers what was released
and which keys to queue again; ``withdrawing`` does the writes, the Events and the queueing.
Tested in ``tests/unit/operator/test_withdrawals.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .ipam import Allocator
from .pools import IP


@dataclass(frozen=True)
class Released:
    """What finishing a withdrawal did."""

    gone: tuple[IP, ...] = ()  # no longer held for the Service: no CR of it carries them
    freed: tuple[IP, ...] = ()  # of those, back in their pool (no sharer holds them)
    retry: tuple[str, ...] = ()  # the Services waiting for an address: allocate them again

    def __bool__(self) -> bool:
        return bool(self.gone)


NOTHING = Released()


class Withdrawals:
    def __init__(self, alloc: Allocator) -> None:
        self.alloc = alloc
        # Services waiting for an address, in the order they began to wait (first retried first).
        self._waiting: dict[str, None] = {}
        # Withdrawals a publish in flight must finish: it may still write the old addresses.
        self._deferred: set[str] = set()

    # -- Services waiting for an address ---------------------------------------------------------
    def unmet(self, key: str) -> None:
        """Stage one cannot give the Service what it asks for: what it held stays out of the pool
        until its CR drops it, and it waits for a release (or a pool change) to be retried."""
        if self.alloc.holds(key):
            self.alloc.begin_withdrawal(key)
        self._waiting.setdefault(key, None)

    def met(self, key: str) -> None:
        """The Service has its addresses: it waits no more."""
        self._waiting.pop(key, None)

    def waiting(self) -> list[str]:
        return list(self._waiting)

    # -- withdrawing -------------------------------------------------------------------------------
    def withdraw(self, key: str) -> tuple[IP, ...]:
        """The Service is gone or no longer ours: it gives up what it holds (out of the pool until
        no CR carries it) and waits for nothing. Returns what it held."""
        self._waiting.pop(key, None)
        return self.alloc.begin_withdrawal(key)

    def holding(self, key: str) -> bool:
        """Whether addresses the Service gave up are still held (a CR may carry them)."""
        return bool(self.alloc.withdrawing(key))

    def finish(self, key: str, announced: Iterable[IP] = ()) -> Released:
        """No CR of the Service carries anything but ``announced`` now: every other address it
        gave up is released. When any is, every waiting Service is to be retried: even when a
        sharer still holds the address, the ports or the sharing constraint that kept a waiting
        Service out may be gone with this one."""
        keep = set(announced)
        gone = tuple(ip for ip in self.alloc.withdrawing(key) if ip not in keep)
        if not gone:
            return NOTHING
        freed = self.alloc.finish_withdrawal(key, keep)
        return Released(gone, freed, tuple(self._waiting))

    def finish_unless_publishing(self, key: str, publishing: bool) -> Released:
        """A withdrawal's end: finished now, or, while a publish of the key is in flight (it may
        still write the old addresses), left to that publish."""
        if publishing:
            self._deferred.add(key)
            return NOTHING
        return self.finish(key)

    def deferred(self, key: str) -> bool:
        """Whether a publish owes this key the end of its withdrawal."""
        return key in self._deferred

    def published(self, key: str, announced: Iterable[IP] = ()) -> Released:
        """A publish wrote the CR with ``announced`` (or deleted it: nothing): it finishes the
        withdrawal, deferred to it or not."""
        self._deferred.discard(key)
        return self.finish(key, announced)

"""One nftables table that Portico owns, kept in the kernel through one long-lived libnftables
handle: the node agent's ``inet portico``, the gateway's ``netdev portico-gw`` and its NAT table
``inet portico-gw-nat`` are each an ``OwnedTable`` whose subclass says only how its table is
read, compared, diffed, rebuilt and removed.

Every change is one libnftables transaction (a JSON batch or nft text): a packet sees the old
table or the new one, and a refused transaction leaves the kernel as it was. ``apply`` puts a
desired state in force and ``verify`` puts the applied state back if someone changed the table,
both in this order, each step tried only when the one before was refused (or does not apply):

1. **diff from what was applied last**: only what changed (``apply`` only; nothing is applied
   yet at a start, and ``verify`` runs because the kernel differs from it);
2. **diff from the kernel's listing**: still incremental, so state the kernel keeps in the
   table (the node agent's ClientIP affinity pins) survives; only for owners whose reading of
   their listing is exact enough to diff from (``diff_from_listing``). At a start, this is
   what leaves a table that is already right untouched;
3. **full replace**: one transaction that makes the table hold exactly the desired state,
   whatever it held;
4. **keep what is in force and report**: when the replace is refused too, ``NftError`` is
   raised, the kernel still holds what it held and ``applied`` is unchanged; the caller logs it
   and tries again later.

A refused step is logged and counted in ``stats.errors``. ``ApplyResult.mode`` names the step
that succeeded: "none" (a diff with nothing to change), "incremental" (a diff), "replace".

``verify`` reads the table back (``kernel_holds``; an owner may read it in parts, see the node
agent's) only when something may have changed it. The kernel keeps a generation of the ruleset
(``Libnftables.generation``): every committed transaction bumps it, whatever table it changes,
and nothing else does. So when the generation is the one at which the table last held what was
applied, no transaction has run since and the table still holds it: verify returns without
reading. When it differs, someone's transaction ran, on this table or on any other (kube-proxy's,
a firewall's), so the table is read and compared: a fast path, not a proof of change. The
generation at which the table is known to hold ``applied`` is taken before a read that finds
it so (a transaction during the read bumps it past that), and carried over an ``apply`` whose
own transactions account for the whole bump (it was that generation before, and is that plus
the number of our transactions after; anything else, and the next verify reads). Two things
change a table without a transaction (the kernel deleting a table whose owner process exits,
``flags owner``; the nf_tables module reloaded, which restarts the count), and a transaction
that changes nothing bumps nothing (one of ours with another's could look like ours alone), so
every ``verify_read_every``-th verify reads the table anyway.

After big operations (a listing read, a transaction that took libnftables long), the C heap's
free memory is given back to the system (``trim``). libnftables works in the network namespace
of the calling thread. Calls are serialised by a lock, so a verifier thread and the applier can
share one table.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from .nfthandle import Libnftables, trim
from .nftresult import ApplyResult, NftError, Stats

__all__ = ["ApplyResult", "Commands", "JsonText", "NftError", "OwnedTable", "Stats"]


class JsonText(str):
    """A libnftables JSON batch already serialised (``{"nftables": [...]}``), written as text
    where building it as Python objects would cost more than the text (a full replace);
    ``commands``: how many it holds."""

    commands: int = 1


# One transaction: a libnftables JSON batch ({"nftables": [...]}), the same as ``JsonText``, or
# nft text (``nft -f``).
Commands = Mapping[str, Any] | str

# libnftables seconds in one apply past which its memory is given back (``trim``): a change of
# a few elements takes ~1 ms, a table built at 10,000 Services seconds.
TRIM_AFTER_SECONDS = 0.05

S = TypeVar("S")  # what the table holds, in the owner's comparable form


def _size(cmds: Commands) -> int:
    """Commands in a transaction (nft text counts as one, or none when empty)."""
    if isinstance(cmds, JsonText):
        return cmds.commands
    if isinstance(cmds, str):
        return 1 if cmds.strip() else 0
    return len(cmds.get("nftables") or ())


class OwnedTable(Generic[S]):
    """Owns table ``family`` ``name`` and nothing else. Subclasses set the class attributes and
    implement ``rebuild`` and ``removal``, and ``read``/``diff`` where they have them."""

    family: ClassVar[str]
    name: ClassVar[str]
    # Step 2 of the fallback order: ``diff(read(listing), new)`` is exact.
    diff_from_listing: ClassVar[bool] = False
    # A verify reads the table at least this often (once a minute at the agent's 5 s), whatever
    # the generation says (see the module docstring).
    verify_read_every: ClassVar[int] = 12
    log: ClassVar[logging.Logger] = logging.getLogger("portico.nft")

    def __init__(self) -> None:
        self._nft = Libnftables()
        self._lock = threading.Lock()
        self._applied: S | None = None  # what we last put in the kernel
        self._run_seconds = 0.0  # in libnftables and the kernel, during one apply
        self._transactions = 0  # committed by ``run``, ever
        # The ruleset's generation at which the table held ``applied`` (None: not known).
        self._held_at: int | None = None
        self._unread = 0  # verifies in a row that did not read the table
        self.reads = 0  # verifies that read the table (and compared it)
        self.skips = 0  # verifies that did not: nothing had changed
        self.stats = Stats()

    # -- what a subclass says about its table ---------------------------------------------------
    def read(self, listing: Mapping[str, Any]) -> S:
        """The kernel's JSON listing of the table in comparable form."""
        raise NotImplementedError(f"{type(self).__name__} does not read its table back")

    def same(self, a: S, b: S) -> bool:
        return a == b

    def holds(self, listing: Mapping[str, Any], applied: S) -> bool:
        """Whether the table as listed is ``applied``."""
        return self.same(self.read(listing), applied)

    def kernel_holds(self, applied: S) -> bool:
        """Whether the kernel's table is ``applied`` (``verify``'s test): by default its
        listing, read whole, and ``holds``; an owner may read it in parts."""
        listing = self.listing()
        return listing is not None and self.holds(listing, applied)

    def diff(self, old: S | None, new: S) -> Commands | None:
        """One transaction turning ``old`` (None: no table) into ``new``, empty when they are
        the same; None when there is no incremental form (then the table is replaced)."""
        return None

    def rebuild(self, new: S, current: Callable[[], S | None]) -> Commands:
        """One transaction that makes the table hold exactly ``new`` whatever it holds;
        ``current()`` reads the kernel's table (once) if the owner needs to know it."""
        raise NotImplementedError

    def removal(self) -> Commands:
        """One transaction that removes the table, and does not fail when it is not there."""
        raise NotImplementedError

    def counts(self, state: S) -> dict[str, int]:
        return {}

    def kept(self, new: S) -> S:
        """What to keep of an applied state as ``applied`` (e.g. without hints for the diff)."""
        return new

    # -- primitives ------------------------------------------------------------------------------
    def run(self, cmds: Commands) -> None:
        """One transaction, JSON or nft text; raises ``NftError`` when it is refused."""
        t0 = time.perf_counter()
        try:
            if isinstance(cmds, JsonText):
                self._nft.run_json_text(cmds)
            elif isinstance(cmds, str):
                self._nft.run_text(cmds)
            else:
                self._nft.run_json(cmds)
            if _size(cmds):
                self._transactions += 1
        finally:
            self._run_seconds += time.perf_counter() - t0

    def listing(self) -> dict[str, Any] | None:
        """The kernel's JSON listing of the table, or None when it does not exist (made in a
        libnftables handle freed after it)."""
        return self._nft.listing(self.family, self.name)

    def current(self) -> S | None:
        """What the kernel's table holds, or None when there is none (an owner may read it in
        parts)."""
        listing = self.listing()
        return self.read(listing) if listing is not None else None

    @property
    def applied(self) -> S | None:
        """What is in force, as last applied or restored (None before the first apply)."""
        return self._applied

    # -- operations ------------------------------------------------------------------------------
    def apply(self, new: S) -> ApplyResult:
        """Makes the table hold ``new``, by the fallback order of the module docstring. Raises
        ``NftError`` when even a full replace is refused; what was in force then stays."""
        with self._lock:
            t0 = time.perf_counter()
            self._run_seconds = 0.0
            held_at, self._held_at = self._held_at, None
            before = self._nft.generation() if held_at is not None else None
            transactions, errors = self._transactions, self.stats.errors
            current = functools.cache(self.current)
            try:
                commands, mode = self._put(new, self._applied, current)
            finally:
                if current.cache_info().currsize or self._run_seconds > TRIM_AFTER_SECONDS:
                    trim()
            seconds = time.perf_counter() - t0
            if before is not None and before == held_at and self.stats.errors == errors:
                # Our transactions alone since the table held what was applied: it holds new.
                after = self._nft.generation()
                if after == before + self._transactions - transactions:
                    self._held_at = after
            self._applied = self.kept(new)
            self.stats.applies += 1
            self.stats.last_seconds = seconds
            self.stats.last_commands = commands
            self.stats.counts = self.counts(new)
            return ApplyResult(commands, seconds, mode, self._run_seconds)

    def verify(self) -> bool:
        """Compares the kernel's table with what was applied and, if someone flushed, edited or
        deleted it, restores it by steps 2 to 4 of the fallback order. True when it restored.
        Reads the table only when a transaction has run since it last held what was applied,
        or every ``verify_read_every``-th time (see the module docstring)."""
        with self._lock:
            applied = self._applied
            if applied is None:
                return False
            generation = self._nft.generation()
            if (
                generation is not None
                and generation == self._held_at
                and self._unread + 1 < self.verify_read_every
            ):
                self._unread += 1
                self.skips += 1
                return False
            self._unread, self._held_at = 0, None
            self.reads += 1
            try:
                if self.kernel_holds(applied):
                    self._held_at = generation
                    return False
            finally:
                trim()
            self.log.warning(
                "table %s %s differs from what was applied: restoring", self.family, self.name
            )
            try:
                self._put(applied, None, functools.cache(self.current))
            finally:
                trim()
            self.stats.restores += 1
            return True

    def delete(self) -> None:
        """Removes the table (shutdown, uninstall); nothing else is touched."""
        with self._lock:
            self._held_at = None
            self.run(self.removal())
            self._applied = None

    # -- the fallback order ----------------------------------------------------------------------
    def _put(self, new: S, believed: S | None, current: Callable[[], S | None]) -> tuple[int, str]:
        """Steps 1-4; returns the commands run and the mode. ``believed``: what the kernel
        should hold (None: step 1 does not apply)."""
        if believed is not None:
            done = self._try_diff(believed, new, "from what was applied")
            if done is not None:
                return done
        if self.diff_from_listing:
            done = self._try_diff(current(), new, "from the kernel's table")
            if done is not None:
                return done
        cmds = self.rebuild(new, current)
        try:
            self.run(cmds)
        except NftError as e:
            self._refused("full replace", e)
            raise
        return _size(cmds), "replace"

    def _try_diff(self, old: S | None, new: S, what: str) -> tuple[int, str] | None:
        cmds = self.diff(old, new)
        if cmds is None:
            return None
        n = _size(cmds)
        if not n:
            return 0, "none"
        try:
            self.run(cmds)
        except NftError as e:
            self._refused(f"incremental change {what}", e)
            return None
        return n, "incremental"

    def _refused(self, what: str, e: NftError) -> None:
        self.log.warning("table %s %s: %s refused: %s", self.family, self.name, what, e)
        self.stats.errors += 1
        self.stats.last_error = str(e)

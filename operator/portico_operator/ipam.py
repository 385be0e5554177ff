"""The address allocator: pure, no I/O, no clock.

One ``Allocator`` holds every address that is in use (by which Services, for sharing) and the
pools to allocate from. ``assign`` gives a Service its addresses (keeping those it already has
when they still fit), ``release`` frees them, ``restore`` records what the cluster already says
when a leader takes over. Finding a free address is amortised O(1) per pool (a cursor plus a
heap of released addresses), so the cost of one allocation does not grow with the number of
Services.

An address a Service gives up is not free at once: it stays held under the Service's
*withdrawal key* until the LoadBalancer CR that announced it no longer carries it
(``finish_withdrawal``), so that no two CRs ever carry one address (gateways announce from CRs).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .pools import IP, Pool, find_conflicts

# Reasons, as they appear in conditions, Events and metrics.
NO_POOL_MATCHES = "NoPoolMatches"
POOL_EXHAUSTED = "PoolExhausted"
POOL_NOT_FOUND = "PoolNotFound"
POOL_UNUSABLE = "PoolUnusable"
NOT_IN_ANY_POOL = "NotInAnyPool"
ADDRESS_IN_USE = "AddressInUse"
WRONG_FAMILY = "WrongFamily"
SHARING_CONFLICT = "SharingConflict"
INVALID_REQUEST = "InvalidRequest"

WITHDRAWING = "withdrawing:"

SINGLE_STACK = "SingleStack"
PREFER_DUAL_STACK = "PreferDualStack"
REQUIRE_DUAL_STACK = "RequireDualStack"


def withdrawal_key(service: str) -> str:
    """The pseudo-holder of the addresses ``service`` gave up but may still announce."""
    return f"{WITHDRAWING}{service}"


@dataclass(frozen=True)
class Claim:
    """What one Service asks for."""

    service: str  # "namespace/name"
    families: tuple[int, ...] = (4,)  # spec.ipFamilies, in order
    family_policy: str = SINGLE_STACK
    requested: tuple[IP, ...] = ()
    pool: str | None = None
    sharing_key: str | None = None
    ports: frozenset[tuple[str, int]] = frozenset()
    traffic_policy: str = "Cluster"
    selector_key: str = ""  # canonical form of spec.selector, for Local sharing
    service_labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def wanted_families(self) -> tuple[int, ...]:
        if self.family_policy == SINGLE_STACK:
            return self.families[:1]
        return self.families


class AllocationError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Result:
    ips: tuple[IP, ...]
    pools: tuple[str, ...]  # the pool of each address, in the same order
    warnings: tuple[AllocationError, ...] = ()  # families PreferDualStack could not get


@dataclass(frozen=True)
class _Share:
    ports: frozenset[tuple[str, int]]
    sharing_key: str | None
    traffic_policy: str
    selector_key: str


@dataclass
class Holding:
    ip: IP
    services: dict[str, _Share] = field(default_factory=dict)


class _Cursor:
    """Lowest-free-address search over one pool's ranges of one family."""

    def __init__(self, pool: Pool, family: int) -> None:
        self.ranges = [r for r in pool.ranges if r.family == family]
        self.size = sum(r.size for r in self.ranges)
        self.next = 0  # every offset below it is in use or in ``holes``
        self.holes: list[int] = []
        self.queued: set[int] = set()  # the offsets in ``holes``, so none is pushed twice

    def at(self, offset: int) -> IP:
        for r in self.ranges:
            if offset < r.size:
                return ipaddress.ip_address(int(r.first) + offset)
            offset -= r.size
        raise IndexError(offset)

    def offset_of(self, ip: IP) -> int | None:
        base = 0
        for r in self.ranges:
            if ip in r:
                return base + int(ip) - int(r.first)
            base += r.size
        return None


class Allocator:
    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self.conflicts: dict[str, list[str]] = {}
        self.holdings: dict[IP, Holding] = {}
        self.by_service: dict[str, tuple[IP, ...]] = {}
        self._cursors: dict[tuple[str, int], _Cursor] = {}
        self._by_key: dict[str, set[IP]] = {}  # sharing key -> addresses held under it
        self._used: dict[tuple[str, int], int] = {}  # (pool, family) -> addresses in use

    # -- pools ---------------------------------------------------------------------------------
    def set_pools(self, pools: Iterable[Pool]) -> None:
        new = {p.name: p for p in pools}
        for name, pool in new.items():
            if self.pools.get(name) != pool:
                for f in (4, 6):
                    self._cursors.pop((name, f), None)
        for name in set(self.pools) - set(new):
            for f in (4, 6):
                self._cursors.pop((name, f), None)
        self.pools = new
        self.conflicts = find_conflicts(p for p in new.values() if p.valid)
        self._used = {}
        for ip in self.holdings:
            self._count(ip, +1)

    def usable_pool(self, name: str) -> bool:
        """Valid and overlapping no other pool: only such pools hand out addresses."""
        pool = self.pools.get(name)
        return pool is not None and pool.valid and not self.conflicts.get(name)

    def ordered_pools(self) -> list[Pool]:
        return sorted(self.pools.values(), key=Pool.sort_key)

    def used(self, pool: Pool, family: int) -> int:
        return self._used.get((pool.name, family), 0)

    def _count(self, ip: IP, delta: int) -> None:
        for p in self.pools.values():
            if p.contains(ip):
                key = (p.name, ip.version)
                self._used[key] = self._used.get(key, 0) + delta

    # -- queries -------------------------------------------------------------------------------
    def holds(self, service: str) -> tuple[IP, ...]:
        return self.by_service.get(service, ())

    def holders(self, ip: IP) -> list[str]:
        h = self.holdings.get(ip)
        return sorted(h.services) if h else []

    def pool_of(self, ip: IP, claim: Claim | None = None) -> str | None:
        for pool in self.ordered_pools():
            if pool.contains(ip) and (claim is None or self._eligible(pool, claim, explicit=True)):
                return pool.name
        return None

    # -- start-up ------------------------------------------------------------------------------
    def restore(self, claim: Claim, ips: Iterable[IP]) -> tuple[IP, ...]:
        """Records addresses the cluster says the Service has. An address that lies in no pool,
        or that another Service holds incompatibly, is not recorded (``assign`` replaces it)."""
        kept = []
        for ip in ips:
            if ip in kept or not any(p.contains(ip) for p in self.pools.values()):
                continue
            if self._compatible(ip, claim):
                kept.append(ip)
        self._set(claim, tuple(kept))
        return tuple(kept)

    # -- allocation ----------------------------------------------------------------------------
    def assign(self, claim: Claim) -> Result:
        """The Service's addresses: the ones it has where they still fit, new ones otherwise.

        Raises AllocationError (and changes nothing) when the claim cannot be met."""
        wanted = claim.wanted_families()
        requested: dict[int, IP] = {}
        for ip in claim.requested:
            if ip.version not in claim.families:
                raise AllocationError(
                    WRONG_FAMILY,
                    f"requested address {ip} is IPv{ip.version}, the Service's ipFamilies are "
                    + ",".join(f"IPv{f}" for f in claim.families),
                )
            if ip.version in requested:
                raise AllocationError(
                    INVALID_REQUEST, f"more than one IPv{ip.version} address requested"
                )
            requested[ip.version] = ip
        if requested and claim.family_policy != REQUIRE_DUAL_STACK:
            # A request names the families it wants; RequireDualStack still gets both (the
            # families without a requested address come from a pool), or nothing.
            wanted = tuple(f for f in claim.families if f in requested)
        if claim.pool is not None and claim.pool not in self.pools:
            raise AllocationError(POOL_NOT_FOUND, f"VIPPool {claim.pool!r} does not exist")

        current: dict[int, IP] = {ip.version: ip for ip in self.holds(claim.service)}
        picks: list[tuple[IP, str]] = []
        errors: list[AllocationError] = []
        for f in wanted:
            try:
                have = current.get(f)
                if have is not None and self._fits(have, claim, requested.get(f)):
                    picks.append((have, self.pool_of(have, claim) or ""))
                elif f in requested:
                    picks.append(self._pick_requested(requested[f], claim))
                else:
                    picks.append(self._pick(f, claim))
            except AllocationError as e:
                errors.append(e)
        if errors and (claim.family_policy != PREFER_DUAL_STACK or not picks or requested):
            raise errors[0]
        before = self.holds(claim.service)
        shares = self._shares(claim.service)
        self._set(claim, tuple(ip for ip, _ in picks))
        now = self.holds(claim.service)
        self._hold_withdrawn(claim.service, [ip for ip in before if ip not in now], shares)
        return Result(
            ips=tuple(ip for ip, _ in picks),
            pools=tuple(p for _, p in picks),
            warnings=tuple(errors),
        )

    def release(self, service: str) -> tuple[IP, ...]:
        """Frees the Service's addresses; returns those that nobody holds any more."""
        freed = []
        for ip in self.by_service.pop(service, ()):
            h = self.holdings.get(ip)
            if h is None:
                continue
            self._unhold(h, service)
            if ip not in self.holdings:
                freed.append(ip)
        return tuple(freed)

    def begin_withdrawal(self, service: str) -> tuple[IP, ...]:
        """The Service gives up its addresses; they stay out of the pool (held under its
        withdrawal key) until ``finish_withdrawal``. Returns the addresses."""
        ips = self.by_service.pop(service, ())
        shares = {}
        for ip in ips:
            h = self.holdings[ip]
            shares[ip] = h.services.pop(service)
        self._hold_withdrawn(service, list(ips), shares)
        return ips

    def withdrawing(self, service: str) -> tuple[IP, ...]:
        return self.holds(withdrawal_key(service))

    def finish_withdrawal(self, service: str, announced: Iterable[IP] = ()) -> tuple[IP, ...]:
        """The LoadBalancer CR now carries ``announced``: every other address the Service gave
        up returns to its pool (unless another Service holds it). Returns those now free."""
        key = withdrawal_key(service)
        keep = set(announced)
        held = self.by_service.get(key, ())
        go = [ip for ip in held if ip not in keep]
        if not go:
            return ()
        freed = []
        for ip in go:
            h = self.holdings.get(ip)
            if h is not None:
                self._unhold(h, key)
                if ip not in self.holdings:
                    freed.append(ip)
        rest = tuple(ip for ip in held if ip in keep)
        if rest:
            self.by_service[key] = rest
        else:
            del self.by_service[key]
        return tuple(freed)

    def restore_withdrawal(self, claim: Claim, ips: Iterable[IP]) -> tuple[IP, ...]:
        """At take-over: addresses a LoadBalancer CR still carries but its Service no longer
        holds stay held until that CR is rewritten or deleted."""
        wkey = withdrawal_key(claim.service)
        mine = set(self.holds(claim.service))
        wanted = [ip for ip in ips if ip not in mine and ip not in self.holds(wkey)]
        kept = tuple(
            ip
            for ip in wanted
            if any(p.contains(ip) for p in self.pools.values()) and self._compatible(ip, claim)
        )
        shares = {ip: self._share_of(claim) for ip in kept}
        self._hold_withdrawn(claim.service, list(kept), shares)
        return kept

    # -- internals -----------------------------------------------------------------------------
    def _shares(self, service: str) -> dict[IP, _Share]:
        return {ip: self.holdings[ip].services[service] for ip in self.holds(service)}

    def _hold_withdrawn(self, service: str, ips: list[IP], shares: Mapping[IP, _Share]) -> None:
        if not ips:
            return
        key = withdrawal_key(service)
        have = list(self.by_service.get(key, ()))
        for ip in ips:
            h = self.holdings.get(ip)
            if h is None:
                h = self.holdings[ip] = Holding(ip)
                self._count(ip, +1)
                self._advance(ip)
            share = shares[ip]
            # A Service that withdraws again replaces its earlier withdrawn share: that share's
            # sharing key leaves the index unless another holder of the address still has it.
            self._unindex(h, h.services.pop(key, None))
            h.services[key] = share
            if share.sharing_key is not None:
                self._by_key.setdefault(share.sharing_key, set()).add(ip)
            if ip not in have:
                have.append(ip)
        self.by_service[key] = tuple(have)

    def _eligible(self, pool: Pool, claim: Claim, *, explicit: bool) -> bool:
        if claim.pool is not None and pool.name != claim.pool:
            return False
        if not explicit and claim.pool is None and not pool.auto_assign:
            return False
        return pool.matches(claim.service_labels, claim.namespace_labels)

    def _share_of(self, claim: Claim) -> _Share:
        return _Share(claim.ports, claim.sharing_key, claim.traffic_policy, claim.selector_key)

    def _compatible(self, ip: IP, claim: Claim) -> bool:
        """Whether ``claim`` may hold ``ip`` next to its other holders (the Service's own
        withdrawal hold is no obstacle: the address is still its own)."""
        h = self.holdings.get(ip)
        if h is None:
            return True
        mine = self._share_of(claim)
        skip = {claim.service, withdrawal_key(claim.service)}
        for svc, other in h.services.items():
            if svc in skip:
                continue
            if mine.sharing_key is None or other.sharing_key != mine.sharing_key:
                return False
            if mine.ports & other.ports:
                return False
            if mine.traffic_policy != other.traffic_policy:
                return False
            if mine.traffic_policy == "Local" and mine.selector_key != other.selector_key:
                return False
        return True

    def _fits(self, ip: IP, claim: Claim, requested: IP | None) -> bool:
        if requested is not None and ip != requested:
            return False
        in_pool = [
            p
            for p in self.pools.values()
            if p.contains(ip) and self._eligible(p, claim, explicit=True)
        ]
        if not in_pool or not any(p.usable(ip) for p in in_pool):
            return False
        return self._compatible(ip, claim)

    def _pick_requested(self, ip: IP, claim: Claim) -> tuple[IP, str]:
        containing = [p for p in self.ordered_pools() if p.contains(ip)]
        if not containing:
            raise AllocationError(NOT_IN_ANY_POOL, f"requested address {ip} is in no VIPPool")
        eligible = [p for p in containing if self._eligible(p, claim, explicit=True)]
        if not eligible:
            names = ", ".join(p.name for p in containing)
            raise AllocationError(
                NO_POOL_MATCHES,
                f"requested address {ip} is in VIPPool {names}, whose selectors or name do not "
                "admit this Service",
            )
        usable = [p for p in eligible if self.usable_pool(p.name) and p.usable(ip)]
        if not usable:
            raise AllocationError(
                POOL_UNUSABLE,
                f"requested address {ip} is in VIPPool {eligible[0].name}, which is invalid, "
                "overlaps another pool, or excludes that address (avoidBuggyIPs)",
            )
        if not self._compatible(ip, claim):
            holders = ", ".join(s for s in self.holders(ip) if s != claim.service)
            reason = SHARING_CONFLICT if claim.sharing_key else ADDRESS_IN_USE
            raise AllocationError(reason, f"requested address {ip} is in use by {holders}")
        return ip, usable[0].name

    def _pick(self, family: int, claim: Claim) -> tuple[IP, str]:
        pools = [
            p
            for p in self.ordered_pools()
            if family in p.families() and self._eligible(p, claim, explicit=False)
        ]
        if claim.pool is not None and not pools:
            raise AllocationError(
                NO_POOL_MATCHES,
                f"VIPPool {claim.pool!r} has no IPv{family} addresses or does not admit this "
                "Service (serviceSelector/namespaceSelector)",
            )
        usable = [p for p in pools if self.usable_pool(p.name)]
        if not usable:
            if pools:
                raise AllocationError(
                    POOL_UNUSABLE,
                    f"every VIPPool with IPv{family} addresses for this Service is invalid or "
                    f"overlaps another pool: {', '.join(p.name for p in pools)}",
                )
            raise AllocationError(
                NO_POOL_MATCHES, f"no auto-assigning VIPPool with IPv{family} admits this Service"
            )
        if claim.sharing_key is not None:
            # One family only: IPv4 and IPv6 addresses do not compare (sorted() would raise).
            held = [ip for ip in self._by_key.get(claim.sharing_key, ()) if ip.version == family]
            for ip in sorted(held):  # type: ignore[type-var]
                if claim.service in self.holdings[ip].services:
                    continue
                pool = next((p for p in usable if p.usable(ip)), None)
                if pool is not None and self._compatible(ip, claim):
                    return ip, pool.name
        for pool in usable:
            free = self._first_free(pool, family)
            if free is not None:
                return free, pool.name
        raise AllocationError(
            POOL_EXHAUSTED,
            f"no free IPv{family} address in VIPPool {', '.join(p.name for p in usable)}",
        )

    def _cursor(self, pool: Pool, family: int) -> _Cursor:
        key = (pool.name, family)
        c = self._cursors.get(key)
        if c is None:
            c = self._cursors[key] = _Cursor(pool, family)
        return c

    def _first_free(self, pool: Pool, family: int) -> IP | None:
        c = self._cursor(pool, family)
        while c.holes:
            ip = c.at(c.holes[0])
            if ip not in self.holdings and pool.usable(ip):
                return ip
            c.queued.discard(heapq.heappop(c.holes))  # taken again since it was freed
        while c.next < c.size:
            ip = c.at(c.next)
            if ip not in self.holdings and pool.usable(ip):
                return ip  # the cursor moves past it when it is taken (see _set)
            c.next += 1
        return None

    def _set(self, claim: Claim, ips: tuple[IP, ...]) -> None:
        old = self.by_service.get(claim.service, ())
        share = self._share_of(claim)
        for ip in old:
            h = self.holdings.get(ip)
            if h is not None:
                self._unhold(h, claim.service)
        for ip in ips:
            h = self.holdings.get(ip)
            if h is None:
                h = self.holdings[ip] = Holding(ip)
                self._count(ip, +1)
                self._advance(ip)
            h.services[claim.service] = share
            if share.sharing_key is not None:
                self._by_key.setdefault(share.sharing_key, set()).add(ip)
        if ips:
            self.by_service[claim.service] = ips
        else:
            self.by_service.pop(claim.service, None)

    def _unindex(self, h: Holding, share: _Share | None) -> None:
        """``share`` no longer holds ``h``: its sharing key leaves the index for this address
        unless another holder has the same key."""
        key = share.sharing_key if share else None
        if key is not None and not any(s.sharing_key == key for s in h.services.values()):
            held = self._by_key.get(key)
            if held is not None:
                held.discard(h.ip)
                if not held:
                    del self._by_key[key]

    def _unhold(self, h: Holding, service: str) -> None:
        self._unindex(h, h.services.pop(service, None))
        if not h.services:
            del self.holdings[h.ip]
            self._count(h.ip, -1)
            self._return(h.ip)

    def _advance(self, ip: IP) -> None:
        for (_, family), c in self._cursors.items():
            if family == ip.version and c.next < c.size and c.at(c.next) == ip:
                c.next += 1

    def _return(self, ip: IP) -> None:
        for c in self._cursors.values():
            off = c.offset_of(ip)
            if off is not None and off < c.next and off not in c.queued:
                heapq.heappush(c.holes, off)
                c.queued.add(off)

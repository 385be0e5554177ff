"""VIPPool objects, parsed and checked: pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .selectors import Selector, SelectorError, parse_selector

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class IPRange:
    first: IP
    last: IP

    @property
    def family(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: object) -> bool:
        return (
            isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
            and ip.version == self.family
            and int(self.first) <= int(ip) <= int(self.last)
        )

    def overlaps(self, other: IPRange) -> bool:
        return (
            self.family == other.family
            and int(self.first) <= int(other.last)
            and int(other.first) <= int(self.last)
        )

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_range(text: str) -> IPRange:
    """'198.18.32.0/24' or '198.18.33.10-198.18.33.20' (IPv4 or IPv6)."""
    text = text.strip()
    if "-" in text:
        a, _, b = text.partition("-")
        first, last = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
        if first.version != last.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if first > last:  # type: ignore[operator]
            raise ValueError(f"{text!r}: first address is after the last")
        return IPRange(first, last)
    net = ipaddress.ip_network(text, strict=False)
    # Compare addresses, not text: IPv6 may be written in any case or with zeros spelled out.
    if ipaddress.ip_address(text.split("/")[0]) != net.network_address:
        raise ValueError(f"{text!r} has host bits set (did you mean {net}?)")
    return IPRange(net.network_address, net.broadcast_address)


def is_buggy(ip: IP) -> bool:
    """.0 and .255 IPv4 addresses, which some old client stacks refuse to use."""
    return ip.version == 4 and int(ip) & 0xFF in (0, 255)


def _buggy_in(r: IPRange) -> int:
    if r.family != 4:
        return 0
    lo, hi = int(r.first), int(r.last)

    def count(residue: int) -> int:  # numbers in [lo, hi] that are == residue mod 256
        first = lo + ((residue - lo) % 256)
        return 0 if first > hi else (hi - first) // 256 + 1

    return count(0) + count(255)


@dataclass(frozen=True)
class Pool:
    name: str
    ranges: tuple[IPRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    priority: int | None = None
    service_selector: Selector = field(default_factory=Selector)
    namespace_selector: Selector = field(default_factory=Selector)
    errors: tuple[str, ...] = ()  # why the pool is invalid; empty when valid

    @property
    def valid(self) -> bool:
        return not self.errors

    def families(self) -> set[int]:
        return {r.family for r in self.ranges}

    def contains(self, ip: IP) -> bool:
        return any(ip in r for r in self.ranges)

    def usable(self, ip: IP) -> bool:
        return self.contains(ip) and not (self.avoid_buggy_ips and is_buggy(ip))

    def capacity(self, family: int) -> int:
        total = 0
        for r in self.ranges:
            if r.family == family:
                total += r.size - (_buggy_in(r) if self.avoid_buggy_ips else 0)
        return total

    def sort_key(self) -> tuple[bool, int, str]:
        # Lower priority numbers first; pools without a priority after those with one.
        return (self.priority is None, self.priority or 0, self.name)

    def matches(
        self, service_labels: Mapping[str, str], namespace_labels: Mapping[str, str]
    ) -> bool:
        return self.service_selector.matches(service_labels) and self.namespace_selector.matches(
            namespace_labels
        )


def parse_pool(name: str, spec: Mapping[str, Any] | None) -> Pool:
    """Never raises: a bad spec gives a pool with ``errors`` (which hands out nothing)."""
    spec = spec or {}
    errors: list[str] = []
    ranges: list[IPRange] = []
    addresses = spec.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        errors.append("spec.addresses must list at least one CIDR or first-last range")
        addresses = []
    for text in addresses:
        try:
            ranges.append(parse_range(str(text)))
        except ValueError as e:
            errors.append(f"address {text!r}: {e}")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            if a.overlaps(b):
                errors.append(f"addresses {a} and {b} overlap")
    selectors = {}
    for key in ("serviceSelector", "namespaceSelector"):
        try:
            selectors[key] = parse_selector(spec.get(key))
        except SelectorError as e:
            errors.append(f"{key}: {e}")
            selectors[key] = Selector()
    priority = spec.get("priority")
    if priority is not None and not isinstance(priority, int):
        errors.append("priority must be an integer")
        priority = None
    return Pool(
        name=name,
        ranges=tuple(ranges),
        auto_assign=bool(spec.get("autoAssign", True)),
        avoid_buggy_ips=bool(spec.get("avoidBuggyIPs", False)),
        priority=priority,
        service_selector=selectors["serviceSelector"],
        namespace_selector=selectors["namespaceSelector"],
        errors=tuple(errors),
    )


def find_conflicts(pools: Iterable[Pool]) -> dict[str, list[str]]:
    """Pool name -> names of the other pools it overlaps."""
    pools = list(pools)
    out: dict[str, list[str]] = {p.name: [] for p in pools}
    for i, a in enumerate(pools):
        for b in pools[i + 1 :]:
            if any(ra.overlaps(rb) for ra in a.ranges for rb in b.ranges):
                out[a.name].append(b.name)
                out[b.name].append(a.name)
    return out

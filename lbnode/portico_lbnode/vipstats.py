"""Per-VIP forwarding counters of the gateway, as data: pure, no I/O.

Each VIP in the forwarding table (``fwdrules``) has one named nft counter, ``forwarded-<VIP>``
(an IPv6 VIP's colons written as ``_``, so that the name is an nft identifier and a listing
of the table reads back with ``nft -f``). Every Service port chain of the VIP counts into it
the packets it forwards toward a node (``fwdrules``: the chain's ``counter name`` rule), so
the counter is the VIP's packets and bytes over all its ports and protocols, IP header
included, Ethernet header not.

A named counter is an object of its own: a re-render, a diff and a full replace keep it (an
``add counter`` of an existing one leaves its values alone), and so does a gateway restart
(the table stays). It starts again from zero only when the kernel object is made anew: the
VIP left the table and came back, or the table was deleted. Prometheus counters may reset only
when the process restarts, so ``CarriedTotals`` adds what the old object had counted: it knows
a new object by its handle (or, should a new table reuse the handle, by its values going
down), and then carries the last values it read forward.

What it exports is one series per VIP the gateway has forwarded for since it started: a VIP
that left keeps its last totals (a VIP that comes back continues from them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

COUNTER_PREFIX = "forwarded-"


def counter_name(vip: IP) -> str:
    """The VIP's counter: ``forwarded-198.18.0.10``, ``forwarded-fd00__10``."""
    return COUNTER_PREFIX + str(vip).replace(":", "_")


def vip_of_counter(name: str) -> IP | None:
    """The VIP a counter of ``counter_name`` counts for; None for any other name."""
    if not name.startswith(COUNTER_PREFIX):
        return None
    try:
        return ipaddress.ip_address(name[len(COUNTER_PREFIX) :].replace("_", ":"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Reading:
    """One counter object's values as the kernel listed them."""

    handle: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class Totals:
    packets: int
    bytes: int


def readings(listing: Mapping[str, Any] | None) -> dict[IP, Reading]:
    """The VIP counters in an ``nft -j list counters table ...`` listing (None: no table).
    Other counters and objects are ignored."""
    out: dict[IP, Reading] = {}
    for item in (listing or {}).get("nftables") or ():
        obj = item.get("counter") if isinstance(item, Mapping) else None
        if not isinstance(obj, Mapping):
            continue
        vip = vip_of_counter(str(obj.get("name", "")))
        if vip is None:
            continue
        out[vip] = Reading(
            int(obj.get("handle", 0)), int(obj.get("packets", 0)), int(obj.get("bytes", 0))
        )
    return out


class CarriedTotals:
    """Counter values that never go down while the process lives (see the module docstring).
    Not thread-safe: one caller at a time."""

    def __init__(self) -> None:
        self._last: dict[IP, Reading] = {}  # the object last read per VIP
        self._carried: dict[IP, Totals] = {}  # what earlier objects of the VIP had counted

    def update(self, now: Mapping[IP, Reading]) -> dict[IP, Totals]:
        """Takes one listing's readings; returns every VIP's totals (those not listed now at
        their last values)."""
        for vip, r in now.items():
            last = self._last.get(vip)
            if last is not None and _new_object(last, r):
                before = self._carried.get(vip, Totals(0, 0))
                self._carried[vip] = Totals(
                    before.packets + last.packets, before.bytes + last.bytes
                )
            self._last[vip] = r
        return {vip: self._total(vip) for vip in self._last}

    def _total(self, vip: IP) -> Totals:
        r = self._last[vip]
        c = self._carried.get(vip, Totals(0, 0))
        return Totals(c.packets + r.packets, c.bytes + r.bytes)


def _new_object(last: Reading, now: Reading) -> bool:
    return now.handle != last.handle or now.packets < last.packets or now.bytes < last.bytes


def sorted_vips(vips: Iterable[IP]) -> list[IP]:
    return sorted(vips, key=lambda v: (v.version, int(v)))

"""From the Services and their nodes' health to what the gateway programs and says: the
forwarding entries (one per VIP and port, each with its Maglev slots already turned into node
addresses), the VIPs to announce, and each Service's status report. Pure.

The Maglev table of a set of (node, weight) depends on nothing else, so it is computed once per
distinct set and shared: a thousand Cluster Services over the same healthy nodes cost one table
and, in the kernel, one slots map (``fwdrules`` shares maps of equal content).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .fwdrules import FwdPort
from .lbstatus import NodeReport, Report
from .maglev import maglev_table
from .model import IP, GatewayService
from .natrules import NatPort
from .selection import Candidate, HealthLookup, candidates


class MaglevCache:
    """Tables by their (node, weight) set; bounded, least recently used first out."""

    def __init__(self, size: int, capacity: int = 4096) -> None:
        self.size = size
        self.capacity = capacity
        self._tables: OrderedDict[tuple[tuple[str, int], ...], tuple[str, ...]] = OrderedDict()
        # The slots as addresses, by (node, weight, address): one tuple object per node set,
        # so every Service over the same nodes shares it and the renderer turns it into text
        # once per render, not once per port (4,093 addresses each).
        self._slots: OrderedDict[tuple[Candidate, ...], tuple[IP, ...]] = OrderedDict()

    def table(self, nodes: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
        found = self._tables.get(nodes)
        if found is None:
            found = self._tables[nodes] = maglev_table(nodes, self.size)
            while len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(nodes)
        return found

    def slots(self, chosen: tuple[Candidate, ...]) -> tuple[IP, ...]:
        found = self._slots.get(chosen)
        if found is None:
            by_node = {c.node: c.address for c in chosen}
            table = self.table(tuple((c.node, c.weight) for c in chosen))
            found = self._slots[chosen] = tuple(by_node[n] for n in table)
            while len(self._slots) > self.capacity:
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(chosen)
        return found


def slots_for(chosen: tuple[Candidate, ...], cache: MaglevCache) -> tuple[IP, ...]:
    return cache.slots(chosen) if chosen else ()


def forwarding(
    services: Iterable[GatewayService],
    healthy: HealthLookup,
    cache: MaglevCache,
    gateway_zone: str = "",
) -> list[FwdPort]:
    """Every (VIP, protocol, port) this gateway forwards, with its slots (empty: no healthy
    node, fail-closed). NAT-mode ports with a node to go to are handed to the IP stack."""
    return forwarding_and_nat(services, healthy, cache, gateway_zone)[0]


def forwarding_and_nat(
    services: Iterable[GatewayService],
    healthy: HealthLookup,
    cache: MaglevCache,
    gateway_zone: str = "",
    keeps_pins: HealthLookup | None = None,
) -> tuple[list[FwdPort], list[NatPort]]:
    """``forwarding``, and for NAT-mode Services the DNAT targets (node address, nodePort).
    ``keeps_pins(node, service_key)``: the node still carries the Service's established
    (pinned) flows, serving or draining (``flowstate``); the addresses of those that take no
    new ones (draining, or healthy but outside the gateway's zone) go in the port's
    ``established``."""
    out: list[FwdPort] = []
    nat: list[NatPort] = []
    for svc in services:
        for family in svc.families:
            chosen = candidates(svc, family, healthy, gateway_zone)
            slots = slots_for(chosen, cache)
            extra: tuple[IP, ...] = ()
            if keeps_pins is not None and not svc.nat:
                taken = {c.node for c in chosen}
                extra = tuple(
                    a
                    for b in svc.backends
                    if b.node not in taken
                    and (a := b.address(family)) is not None
                    and keeps_pins(b.node, svc.key)
                )
            for vip in (v for v in svc.vips if v.version == family):
                sources = tuple(r for r in svc.source_ranges if r.version == family)
                # A Service whose ranges are all of the other family admits nobody of this
                # one: no slots, so every packet is dropped.
                admitted = slots if sources or not svc.source_ranges else ()
                kept = extra if sources or not svc.source_ranges else ()
                for p in svc.ports:
                    targets: tuple[tuple[IP, int], ...] = ()
                    if svc.nat and admitted and p.node_port:
                        targets = tuple((a, p.node_port) for a in admitted)
                        nat.append(
                            NatPort(
                                svc.key, vip, p.protocol, p.port, svc.client_ip_affinity, targets
                            )
                        )
                    out.append(
                        FwdPort(
                            service=svc.key,
                            vip=vip,
                            protocol=p.protocol,
                            port=p.port,
                            affinity=svc.client_ip_affinity,
                            # All of them: the renderer uses this family's, and an empty
                            # result (only the other family's) still means "restricted" for
                            # the VIP's unknown ports (refused only to admitted clients).
                            source_ranges=svc.source_ranges,
                            slots=() if svc.nat else admitted,
                            to_stack=bool(targets),
                            established=kept,
                        )
                    )
    return out, nat


@dataclass(frozen=True)
class NodeHealth:
    healthy: bool
    message: str
    since: str  # RFC 3339


def report(
    svc: GatewayService,
    gateway: str,
    health: Callable[[str, str], NodeHealth | None],
    announced: bool,
) -> Report:
    nodes = []
    for b in svc.backends:
        h = health(b.node, svc.key)
        if h is None:
            nodes.append(NodeReport(b.node, False, "not probed yet", ""))
        else:
            nodes.append(NodeReport(b.node, h.healthy, h.message, h.since))
    return Report(
        gateway=gateway,
        announced=announced,
        announce_reason="Announced" if announced else "NotAnnounced",
        announce_message=(
            f"{gateway} answers ARP/NDP for {', '.join(str(v) for v in svc.vips)}"
            if announced
            else "no VIP to announce"
        ),
        nodes=tuple(nodes),
        fail_closed=announced,
    )


def vips_to_announce(services: Mapping[str, GatewayService]) -> frozenset[IP]:
    return frozenset(v for svc in services.values() for v in svc.vips)

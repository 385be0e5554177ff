"""Which nodes' endpoints every other node leaves out: the gateways' verdicts (their
``GatewayReport`` objects), read with two guards. Pure: times are passed in.

A node that drops off the LAN keeps its endpoints ready in the EndpointSlices for 40-50 s (its
Lease has to expire first), and every other node keeps DNATing a share of its Cluster traffic
to them. The gateway that owns the VIPs sees it first (no ARP answer, about half a second):
its report names the node, and the operator marks that node's endpoints ``unreachable`` in
every NodeRules entry, which the agents leave out (the node itself keeps its own).

The guards, so that a gateway which is itself cut off cannot empty the cluster:
  * a report that calls more than half of the nodes it has a verdict for unreachable is
    ignored as a whole (a gateway whose own link, switch port or VLAN broke sees every node go;
    a real outage of most nodes leaves nothing worth redirecting to anyway);
  * a report that has not changed for ``ttl`` seconds (the gateway writes every 10 s) is
    ignored: a gateway that died must not keep a node out for ever. Its age is measured on the
    operator's clock, from when the operator saw it change, so the two clocks need not agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REPORT_TTL = 30.0


@dataclass(frozen=True)
class GatewayVerdicts:
    gateway: str
    probed: frozenset[str]  # nodes the gateway has a verdict for
    unreachable: frozenset[str]


def parse_report(obj: Mapping[str, Any]) -> GatewayVerdicts:
    """A GatewayReport as verdicts; a malformed status says nothing (no node is taken out)."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    status = obj.get("status")
    nodes = status.get("nodes") if isinstance(status, dict) else None
    if not isinstance(nodes, list):
        return GatewayVerdicts(name, frozenset(), frozenset())
    probed, down = set(), set()
    for n in nodes:
        if not isinstance(n, dict) or not isinstance(n.get("node"), str):
            continue
        if not isinstance(n.get("reachable"), bool):
            continue
        probed.add(n["node"])
        if not n["reachable"]:
            down.add(n["node"])
    return GatewayVerdicts(name, frozenset(probed), frozenset(down))


@dataclass(frozen=True)
class Reachability:
    unreachable: frozenset[str] = frozenset()  # the nodes whose endpoints are out
    by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node -> the gateways
    # gateway -> (the nodes it calls unreachable, why that is ignored)
    ignored: Mapping[str, tuple[frozenset[str], str]] = field(default_factory=dict)


def decide(
    reports: Iterable[tuple[GatewayVerdicts, float]], now: float, ttl: float = REPORT_TTL
) -> Reachability:
    """From every report with the time it last changed (the operator's clock)."""
    by: dict[str, list[str]] = {}
    ignored: dict[str, tuple[frozenset[str], str]] = {}
    for r, seen in sorted(reports, key=lambda x: x[0].gateway):
        if not r.unreachable:
            continue
        if now - seen > ttl:
            ignored[r.gateway] = (r.unreachable, f"its report is older than {ttl:.0f} s")
            continue
        if 2 * len(r.unreachable) > len(r.probed):
            ignored[r.gateway] = (
                r.unreachable,
                f"it reports {len(r.unreachable)} of {len(r.probed)} nodes unreachable, more "
                "than half: the gateway itself may be cut off",
            )
            continue
        for node in r.unreachable:
            by.setdefault(node, []).append(r.gateway)
    return Reachability(
        frozenset(by), {n: tuple(g) for n, g in sorted(by.items())}, dict(sorted(ignored.items()))
    )


def _names(nodes: Iterable[str]) -> str:
    nodes = sorted(nodes)
    return ", ".join(nodes[:10]) + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "")


def reachable_condition(
    reach: Reachability, endpoint_nodes: Iterable[str | None]
) -> tuple[bool, str, str]:
    """The LoadBalancer CR's ``NodesReachable`` condition (status, reason, message), for a
    Service whose endpoints are on ``endpoint_nodes``."""
    nodes = {n for n in endpoint_nodes if n}
    out = nodes & reach.unreachable
    if out:
        gateways = sorted({g for n in out for g in reach.by[n]})
        return (
            False,
            "NodesUnreachable",
            f"the endpoints on {_names(out)} are out of every other node's rules: gateway "
            f"{_names(gateways)} gets no answer from {'it' if len(out) == 1 else 'them'} "
            "(the EndpointSlices may still call them ready)",
        )
    for gateway, (said, why) in reach.ignored.items():
        if nodes & said:
            return (
                True,
                "VerdictIgnored",
                f"gateway {gateway} calls {_names(nodes & said)} unreachable; ignored: {why}",
            )
    return True, "Reachable", "every node with endpoints of this Service is reachable"

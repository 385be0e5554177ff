"""The gateway's part of a LoadBalancer CR's status, as data: who announces, which nodes pass
their checks (since when, why), and the ``Announced`` and ``Healthy`` conditions.

The operator owns ``Allocated``, ``Valid``, ``NodePorts`` and ``Programmed`` and the gateway owns
these fields; each writes its own with server-side apply under its own field manager, so neither
erases the other's. A status is written only when ``status_differs`` says so: probes every second
must not become status writes every second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from portico_common.conditions import condition, same_conditions

GATEWAY_CONDITIONS = ("Announced", "Healthy")


@dataclass(frozen=True)
class NodeReport:
    node: str
    healthy: bool
    message: str
    since: str  # RFC 3339: when the node last became healthy or unhealthy; "" if not probed


@dataclass(frozen=True)
class Report:
    """What the gateway can say of one Service."""

    gateway: str
    announced: bool
    announce_reason: str
    announce_message: str
    nodes: tuple[NodeReport, ...]
    fail_closed: bool  # VIPs announced but no node to send to: packets are dropped here


def render_status(
    report: Report, generation: int, now: str, previous: Mapping[str, Any]
) -> dict[str, Any]:
    """The status body this gateway applies (without ``observedGeneration``: the operator's)."""
    old = previous.get("conditions") or []
    healthy = [n for n in report.nodes if n.healthy]
    if not report.nodes:
        health = (False, "NoBackends", "no node is a backend of this Service")
    elif healthy:
        health = (
            True,
            "HealthyNodes",
            f"{len(healthy)} of {len(report.nodes)} nodes pass their health check",
        )
    else:
        bad = ", ".join(f"{n.node}: {n.message}" for n in report.nodes[:5])
        health = (
            False,
            "NoHealthyNodes",
            f"no node passes its health check; new connections are dropped at the gateway ({bad})"
            if report.fail_closed
            else f"no node passes its health check ({bad})",
        )
    return {
        "ownerGateway": report.gateway if report.announced else "",
        "healthyNodes": len(healthy),
        "nodes": [_node(n) for n in report.nodes],
        "conditions": [
            condition(
                "Announced",
                report.announced,
                report.announce_reason,
                report.announce_message,
                generation,
                now,
                old,
            ),
            condition("Healthy", health[0], health[1], health[2], generation, now, old),
        ],
    }


def _node(n: NodeReport) -> dict[str, Any]:
    out: dict[str, Any] = {"node": n.node, "healthy": n.healthy, "message": n.message}
    if n.since:  # a node not probed yet has no transition to tell
        out["lastTransitionTime"] = n.since
    return out


def _mine(conditions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in conditions if c.get("type") in GATEWAY_CONDITIONS]


def status_differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``desired`` says something the CR's status does not (timestamps aside)."""
    if (current.get("ownerGateway") or "") != desired["ownerGateway"]:
        return True
    if (current.get("healthyNodes") or 0) != desired["healthyNodes"]:
        return True

    def nodes(items: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (n.get("node"), bool(n.get("healthy")), n.get("message") or "") for n in items
        )

    if nodes(current.get("nodes") or []) != nodes(desired["nodes"]):
        return True
    return not same_conditions(_mine(current.get("conditions") or []), desired["conditions"])

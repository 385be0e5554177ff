"""Whether a node may still carry a Service's established (pinned) flows: the one place that
tells a *draining* node from a *dead* one. Pure: no I/O, no clock (``now`` is passed in).

* **serving**: the node passes its health check; it takes new flows and keeps its pinned ones.
* **draining**: the node *answers* its probe, with a no (HTTP 503, an aggregate answer without
  local endpoints): it is alive and asks for no new flows, as kube-proxy does when the node's
  last local pod of the Service terminates (KEP-1669). Its pinned flows stay, for the
  Service's drain timeout (``DEFAULT_DRAIN_TIMEOUT``: AWS NLB's deregistration delay) from the
  moment it turned unhealthy, so a connection to a terminating pod can finish.
* **out**: the node's probes get no answer (timeouts, refused or unreachable connections: it is
  dead or cut off), or its drain timeout has passed. Its pinned flows go to the hash at their
  next packet. ``reachable=False`` is a faster signal of a dead node
  (the kernel's neighbour state, say) that overrides an answer seen before it.

A node that stops answering while draining is out at once: its connections cannot finish.
A node never seen healthy that answers no drains too: it has no pins of this gateway's, but a
gateway that restarts while a node drains must keep that node's pins (they survive in the
kernel), and it has never seen the node healthy; so a restart starts the drain clocks anew.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from .healthstate import TargetHealth
from .model import DEFAULT_DRAIN_TIMEOUT, MAX_DRAIN_TIMEOUT, GatewayService

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "MAX_DRAIN_TIMEOUT",
    "Standing",
    "drain_deadline",
    "next_drain_end",
    "standing",
]


class Standing(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    OUT = "out"


def standing(
    health: TargetHealth | None, now: float, drain_timeout: float, reachable: bool = True
) -> Standing:
    """The node's standing for one Service; ``health`` None: not probed yet (out)."""
    if health is None or not reachable:
        return Standing.OUT
    if health.healthy:
        return Standing.SERVING
    if not health.answered:
        return Standing.OUT
    return Standing.DRAINING if now < drain_deadline(health, drain_timeout) else Standing.OUT


def drain_deadline(health: TargetHealth, drain_timeout: float) -> float:
    """When an unhealthy, answering node's pinned flows stop being its own."""
    return health.since + drain_timeout


def next_drain_end(
    services: Iterable[GatewayService],
    health: Callable[[str, str], TargetHealth | None],
    now: float,
) -> float | None:
    """The earliest moment a draining node's drain timeout ends (the table must change then:
    its pinned flows leave it), or None when no node drains."""
    ends = [
        drain_deadline(h, svc.drain_timeout)
        for svc in services
        for b in svc.backends
        if (h := health(b.node, svc.key)) is not None
        and standing(h, now, svc.drain_timeout) is Standing.DRAINING
    ]
    return min(ends, default=None)

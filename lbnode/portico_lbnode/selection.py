"""Which nodes get a Service's new flows, and with what weight: a pure function of the CR's
backends, their health as this gateway probes it, and the gateway's zone.

- ``externalTrafficPolicy: Local``: a node is a candidate only while its ``healthCheckNodePort``
  says it has ready local endpoints (the node's answer is the authority, as for a cloud LB); its
  weight is its count of ready local endpoints, so each pod gets an even share of flows, not each
  node (kube-proxy's ``X-Load-Balancing-Endpoint-Weight``).
- ``Cluster``: a node is a candidate while its node-level health passes; weight 1.
- A gateway with a zone prefers candidates of its own zone that hold endpoints (PreferClose at
  the gateway) and uses every candidate when its zone has none.
- No candidate: the Service is fail-closed (the gateway drops its packets; see ``fwdrules``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .model import IP, Backend, GatewayService

# ``healthy(node, service_key)`` as the prober knows it (for a Cluster Service, the node's own
# health: every Cluster Service on a node is as healthy as the node's proxy).
HealthLookup = Callable[[str, str], bool]


@dataclass(frozen=True)
class Candidate:
    node: str
    address: IP
    weight: int


def _weight(svc: GatewayService, b: Backend) -> int:
    return max(1, b.ready) if svc.local else 1


def candidates(
    svc: GatewayService,
    family: int,
    healthy: HealthLookup,
    gateway_zone: str = "",
) -> tuple[Candidate, ...]:
    """The nodes that take the Service's new flows for VIPs of ``family``, sorted by node."""
    found = [
        (b, addr)
        for b in svc.backends
        if (addr := b.address(family)) is not None and healthy(b.node, svc.key)
    ]
    if gateway_zone:
        near = [(b, a) for b, a in found if b.zone == gateway_zone and b.ready > 0]
        if near:
            found = near
    return tuple(Candidate(b.node, a, _weight(svc, b)) for b, a in sorted(found))


def healthy_nodes(svc: GatewayService, healthy: HealthLookup) -> Sequence[str]:
    """The backends that pass their check, whatever the family: the status's ``healthyNodes``."""
    return [b.node for b in svc.backends if healthy(b.node, svc.key)]

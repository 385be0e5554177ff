"""Which conntrack flows went stale with a change of rules (pure).

A UDP (or SCTP) "connection" is only a conntrack entry: a client that keeps its source port
keeps hitting the endpoint its first datagram was DNATed to, also after that endpoint left the
rules, until the entry times out (and it never does while the client keeps sending). kube-proxy
deletes those entries; so does the agent: for every VIP port whose endpoint this node no longer
sends to, the flows toward that VIP port whose reply comes from that endpoint.

TCP entries are left alone when an endpoint merely leaves (its connections may finish: a
terminating pod serves them), except when it leaves because its node became unreachable
(``Endpoint.unreachable``): those connections are dead, and while their entries live the
clients' packets keep going to the lost node until they give up. Deleted, the next packet of
such a connection is a new flow to a live endpoint, which answers it with a reset at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from portico_common.model import LBService, NodeInfo

from .topology import endpoint_port, select_endpoints

CONNECTIONLESS = ("UDP", "SCTP")


class StaleFlow(NamedTuple):
    protocol: str  # UDP or SCTP; TCP toward an unreachable node's endpoint
    vip: str
    port: int
    endpoint: str  # the address the flow's replies came from (the DNAT target)


def _targets(
    services: Iterable[LBService], node: NodeInfo, connected: bool = False
) -> set[StaleFlow]:
    """The flows these Services send: of connectionless ports, or (``connected``) of TCP."""
    out = set()
    for svc in services:
        selected = select_endpoints(svc.endpoints, svc.external_traffic_policy, node).endpoints
        for port in svc.ports:
            if (port.protocol == "TCP") != connected:
                continue
            if not connected and port.protocol not in CONNECTIONLESS:
                continue
            for vip in svc.vips:
                family = ipaddress.ip_address(vip).version
                for ep in selected:
                    if ep.family == family and endpoint_port(ep, port) is not None:
                        out.add(StaleFlow(port.protocol, vip, port.port, ep.address))
    return out


def stale_flows(
    before: Iterable[LBService], after: Iterable[LBService], node: NodeInfo
) -> list[StaleFlow]:
    """Flows (VIP port → endpoint) the old rules sent and the new ones do not. A Service that
    is the same object in both sends the same flows, so only the others are looked at (and
    those of the unchanged ones that share their VIPs)."""
    old = {s.key: s for s in before}
    new = {s.key: s for s in after}
    went = [s for k, s in old.items() if new.get(k) is not s]
    came = [s for k, s in new.items() if old.get(k) is not s]
    if not went:
        return []
    vips = {v for s in went for v in s.vips}
    kept = [s for k, s in new.items() if k in old and old[k] is s and not vips.isdisjoint(s.vips)]
    stale = _targets(went, node) - _targets([*came, *kept], node)
    lost = {e.address for s in came for e in s.endpoints if e.unreachable and e.node != node.name}
    if lost:
        tcp = _targets(went, node, connected=True) - _targets([*came, *kept], node, connected=True)
        stale |= {f for f in tcp if f.endpoint in lost}
    return sorted(stale)

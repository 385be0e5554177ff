"""Which endpoints a node sends a Service port's traffic to (pure): kube-proxy v1.34's
``CategorizeEndpoints`` (pkg/proxy/topology.go), and the port each endpoint is DNATed to.

Like kube-proxy, ``trafficDistribution`` acts only through the hints the EndpointSlice
controller writes for it (``forZones`` for PreferClose/PreferSameZone, also ``forNodes`` for
PreferSameNode); the field itself is carried for status, not read here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from portico_common.model import (
    LOCAL,
    PREFER_SAME_NODE,
    PREFER_SAME_ZONE,
    Endpoint,
    NodeInfo,
    ServicePort,
)


@dataclass(frozen=True)
class Selection:
    endpoints: tuple[Endpoint, ...]  # what this node sends to, sorted by address
    has_any: bool  # usable (ready, or serving-terminating) endpoints anywhere in the cluster
    terminating: bool = False  # the serving-terminating fallback is in use
    topology: str = ""  # "", PreferSameZone or PreferSameNode


def topology_mode(endpoints: Sequence[Endpoint], node: NodeInfo) -> str:
    """kube-proxy's topologyModeFromHints, with PreferSameTrafficDistribution on (beta, default
    on in v1.34): node hints when every ready endpoint has one and some name this node, else
    zone hints when every ready endpoint has one and some name this node's zone."""
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return ""
    if all(e.for_nodes for e in ready) and any(node.name in e.for_nodes for e in ready):
        return PREFER_SAME_NODE
    if all(e.for_zones for e in ready) and any(node.zone in e.for_zones for e in ready):
        return PREFER_SAME_ZONE
    return ""


def _available(e: Endpoint, mode: str, node: NodeInfo) -> bool:
    if mode == PREFER_SAME_NODE:
        return node.name in e.for_nodes
    if mode == PREFER_SAME_ZONE:
        return node.zone in e.for_zones
    return True


def _sorted(eps: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    def key(e: Endpoint) -> tuple[int, int, str]:
        ip = ipaddress.ip_address(e.address)
        return (ip.version, int(ip), repr(e.ports))

    return tuple(sorted(eps, key=key))


def select_endpoints(endpoints: Sequence[Endpoint], policy: str, node: NodeInfo) -> Selection:
    """The endpoints that this node's rules send external (VIP) traffic to."""
    if any(e.unreachable for e in endpoints):
        # The gateway that owns the VIPs gets no answer from their node: the other nodes leave
        # them out, with every policy (also the short-circuit path of a Local Service, which
        # would send a pod's connection there); their own node keeps them, it still reaches them.
        endpoints = [e for e in endpoints if not e.unreachable or e.node == node.name]
    usable = [e for e in endpoints if e.ready or (e.serving and e.terminating)]
    has_any = bool(usable)
    if policy == LOCAL:
        local = [e for e in endpoints if e.node == node.name]
        ready = [e for e in local if e.ready]
        if ready:
            return Selection(_sorted(ready), has_any)
        fallback = [e for e in local if e.serving and e.terminating]
        return Selection(_sorted(fallback), has_any, terminating=bool(fallback))
    mode = topology_mode(endpoints, node)
    chosen = [e for e in endpoints if e.ready and _available(e, mode, node)]
    if chosen:
        return Selection(_sorted(chosen), True, topology=mode)
    fallback = [e for e in endpoints if e.serving and e.terminating]
    return Selection(_sorted(fallback), has_any, terminating=bool(fallback))


def endpoint_port(ep: Endpoint, port: ServicePort) -> int | None:
    """The port to DNAT to: the EndpointSlice's port of the same name and protocol (which is how
    a named targetPort resolves), else a numeric targetPort, else the Service port."""
    for p in ep.ports:
        if p.name == port.name and p.protocol == port.protocol:
            return p.port
    if ep.ports and port.name:
        return None  # the slice does not carry this port: the endpoint does not serve it
    if isinstance(port.target_port, int):
        return port.target_port
    if isinstance(port.target_port, str) and port.target_port.isdigit():
        return int(port.target_port)
    if port.target_port in (None, ""):
        return port.port
    return None  # a named targetPort without EndpointSlice ports cannot be resolved

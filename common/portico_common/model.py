"""The Service model both sides read: a LoadBalancer Service as one node needs it (its VIPs,
ports, endpoints and policies) and the node it is rendered for. Plain frozen data, no I/O.

The operator builds these from the API (``portico_operator.slices``) and writes them into
NodeRules entries (:mod:`portico_common.rulesdoc`); the node agent reads them back from there and
renders its nftables table from them.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

# Kubernetes' ClientIP affinity timeout: the default when unset, and the API's maximum.
AFFINITY_TIMEOUT_DEFAULT = 10800
AFFINITY_TIMEOUT_MAX = 86400

PROTOCOLS = ("TCP", "UDP", "SCTP")
LOCAL = "Local"
CLUSTER = "Cluster"
CLIENT_IP = "ClientIP"
PREFER_SAME_ZONE = "PreferSameZone"
PREFER_SAME_NODE = "PreferSameNode"


class NodeRulesError(ValueError):
    """Input that cannot be rendered (a bad address, range, protocol). The caller keeps the rules
    in force and reports it."""


@dataclass(frozen=True)
class EndpointPort:
    """One entry of an EndpointSlice's ``ports``: the Service port's name and the number it
    resolved to for the endpoints of that slice."""

    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Endpoint:
    address: str
    node: str | None
    zone: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    for_zones: tuple[str, ...] = ()
    for_nodes: tuple[str, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    # Its node does not answer the gateway that owns the VIPs (a GatewayReport): the other
    # nodes leave it out, although the EndpointSlice still calls it ready.
    unreachable: bool = False

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    node_port: int | None = None
    target_port: int | str | None = None


@dataclass(frozen=True)
class LBService:
    namespace: str
    name: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    external_traffic_policy: str = CLUSTER
    session_affinity: str = "None"
    session_affinity_timeout: int | None = None
    source_ranges: tuple[str, ...] = ()
    traffic_distribution: str | None = None
    forwarding_mode: str = "DSR"
    health_check_node_port: int | None = None  # served by the node agent, not a rule

    @functools.cached_property
    def key(self) -> str:  # cached: an agent looks 10,000 of them up on every change
        return f"{self.namespace}/{self.name}"

    @property
    def affinity_timeout(self) -> int | None:
        """Seconds a client keeps its endpoint, or None without ClientIP affinity."""
        if self.session_affinity != CLIENT_IP:
            return None
        t = self.session_affinity_timeout or AFFINITY_TIMEOUT_DEFAULT
        return max(1, min(int(t), AFFINITY_TIMEOUT_MAX))


@dataclass(frozen=True)
class NodeInfo:
    name: str
    zone: str | None = None
    ips: tuple[str, ...] = ()
    # Node.spec.podCIDRs: traffic from these addresses starts inside the cluster (this node's
    # pods), which externalTrafficPolicy does not apply to (kube-proxy's "NodeCIDR" detection).
    pod_cidrs: tuple[str, ...] = ()

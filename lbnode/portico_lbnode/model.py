"""What the gateway knows of one LoadBalancer CR: its VIPs, ports, policy and backend nodes.

Parsed from the CR's ``spec`` (written by the operator, see ``crds/portico.dev_loadbalancers.yaml``)
into frozen values that the pure parts of lbnode (health, Maglev, rule rendering, announcing)
take as input. Parsing never raises on a malformed CR: it returns ``None`` with a reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("TCP", "UDP", "SCTP")
# Seconds a draining node keeps a Service's pinned flows by default (``flowstate``): AWS NLB's
# deregistration delay.
DEFAULT_DRAIN_TIMEOUT = 300
MAX_DRAIN_TIMEOUT = 3600


@dataclass(frozen=True, order=True)
class Backend:
    """A node that may receive the Service's traffic, with its local endpoint counts."""

    node: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    zone: str
    ready: int
    serving: int
    terminating: int

    def address(self, family: int) -> IP | None:
        return self.ipv4 if family == 4 else self.ipv6


@dataclass(frozen=True, order=True)
class Port:
    protocol: str  # TCP, UDP or SCTP
    port: int
    node_port: int  # 0 when the Service has none (DSR Services may go without)


@dataclass(frozen=True)
class GatewayService:
    key: str  # "namespace/name" of the Service (and of its LoadBalancer CR)
    uid: str
    vips: tuple[IP, ...]
    ports: tuple[Port, ...]
    local: bool  # externalTrafficPolicy: Local
    health_check_node_port: int  # 0 unless local
    client_ip_affinity: bool  # sessionAffinity: ClientIP
    affinity_timeout: int  # seconds; 0 without affinity
    source_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # empty: all
    nat: bool  # forwardingMode: NAT (to nodeIP:nodePort, client IP lost) instead of DSR
    backends: tuple[Backend, ...]
    # Seconds a draining node keeps the Service's pinned flows (``flowstate``).
    drain_timeout: int = DEFAULT_DRAIN_TIMEOUT

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted({ip.version for ip in self.vips}))


class InvalidService(ValueError):
    pass


def _addr(text: Any) -> IP:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError as e:
        raise InvalidService(f"not an IP address: {text!r}") from e


def _backend(obj: Mapping[str, Any]) -> Backend:
    name = obj.get("node")
    if not isinstance(name, str) or not name:
        raise InvalidService("a backend has no node name")
    v4: ipaddress.IPv4Address | None = None
    v6: ipaddress.IPv6Address | None = None
    for text in obj.get("internalIPs") or []:
        ip = _addr(text)
        if isinstance(ip, ipaddress.IPv4Address):
            v4 = v4 or ip
        else:
            v6 = v6 or ip
    return Backend(
        node=name,
        ipv4=v4,
        ipv6=v6,
        zone=str(obj.get("zone") or ""),
        ready=int(obj.get("ready") or 0),
        serving=int(obj.get("serving") or 0),
        terminating=int(obj.get("terminating") or 0),
    )


def service_from_cr(obj: Mapping[str, Any]) -> GatewayService:
    """The gateway's view of a LoadBalancer CR; raises InvalidService naming the bad part."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    ports = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        if proto not in PROTOCOLS:
            raise InvalidService(f"{key}: unknown protocol {proto!r}")
        port = int(p.get("port") or 0)
        if not 0 < port < 65536:
            raise InvalidService(f"{key}: bad port {port}")
        ports.append(Port(proto, port, int(p.get("nodePort") or 0)))
    ranges = []
    for text in spec.get("sourceRanges") or []:
        try:
            ranges.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError as e:
            raise InvalidService(f"{key}: bad source range {text!r}") from e
    local = spec.get("externalTrafficPolicy") == "Local"
    affinity = spec.get("sessionAffinity") == "ClientIP"
    return GatewayService(
        key=key,
        uid=str((spec.get("service") or {}).get("uid") or ""),
        vips=tuple(_addr(v) for v in spec.get("vips") or []),
        ports=tuple(sorted(set(ports))),
        local=local,
        health_check_node_port=int(spec.get("healthCheckNodePort") or 0) if local else 0,
        client_ip_affinity=affinity,
        affinity_timeout=int(spec.get("sessionAffinityTimeoutSeconds") or 10800) if affinity else 0,
        source_ranges=tuple(ranges),
        nat=spec.get("forwardingMode") == "NAT",
        backends=_backends(key, spec.get("backends") or []),
        drain_timeout=_drain_timeout(spec.get("drainTimeoutSeconds")),
    )


def _drain_timeout(value: Any) -> int:
    """The CR's ``drainTimeoutSeconds``; absent or out of range (the operator and the CRD
    refuse those): the default."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DRAIN_TIMEOUT:
        return value
    return DEFAULT_DRAIN_TIMEOUT


def _backends(key: str, items: list[Any]) -> tuple[Backend, ...]:
    out = sorted(_backend(b) for b in items)
    names = [b.node for b in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidService(f"{key}: node {dup!r} is listed twice in backends")
    return tuple(out)

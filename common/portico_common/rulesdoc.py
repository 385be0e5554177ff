"""The NodeRules objects: how a Service's data-plane input travels from the operator to every
node agent, and how Services are split into shards.

An entry is one Service's renderer input (``model.LBService``) as JSON. The operator writes
entries; each agent reads every shard and renders for its own node (its Local endpoints, its
zone's hints, masquerade only toward other nodes), so a Service's entry is the same for every
node and is written once per change, not once per node. Entries are keyed by ``namespace/name``
inside a shard, so that a change is a merge patch of one entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from . import API_GROUP, API_VERSION
from .model import CLUSTER, Endpoint, EndpointPort, LBService, ServicePort

PLURAL = "noderules"
KIND = "NodeRules"
# Enough that the largest shard stays far below etcd's 1.5 MiB object limit at 10,000 Services
# (about 160 Services, a few hundred KiB, per shard), few enough that a list is cheap.
SHARDS = 64
SHARD_PREFIX = "services-"


def shard_name(key: str, shards: int = SHARDS) -> str:
    """The shard a Service (``namespace/name``) always lands in."""
    digest = hashlib.sha256(key.encode()).digest()
    return f"{SHARD_PREFIX}{int.from_bytes(digest[:4], 'big') % shards:02d}"


def path(name: str | None = None) -> str:
    base = f"/apis/{API_GROUP}/{API_VERSION}/{PLURAL}"
    return f"{base}/{name}" if name else base


def _endpoint_entry(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"address": e.address}
    if e.node:
        out["node"] = e.node
    if e.zone:
        out["zone"] = e.zone
    # Only what differs from a ready, serving endpoint: most endpoints are just that.
    if not e.ready:
        out["ready"] = False
    if e.serving != e.ready:
        out["serving"] = e.serving
    if e.terminating:
        out["terminating"] = True
    if e.unreachable:
        out["unreachable"] = True
    if e.for_zones:
        out["forZones"] = list(e.for_zones)
    if e.for_nodes:
        out["forNodes"] = list(e.for_nodes)
    if e.ports:
        out["ports"] = [{"name": p.name, "protocol": p.protocol, "port": p.port} for p in e.ports]
    return out


def service_entry(svc: LBService) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespace": svc.namespace,
        "name": svc.name,
        "vips": list(svc.vips),
        "ports": [
            {
                "name": p.name,
                "protocol": p.protocol,
                "port": p.port,
                **({"nodePort": p.node_port} if p.node_port else {}),
                **({"targetPort": p.target_port} if p.target_port is not None else {}),
            }
            for p in svc.ports
        ],
        "endpoints": [
            _endpoint_entry(e)
            for e in sorted(svc.endpoints, key=lambda e: (e.address, e.node or ""))
        ],
        "externalTrafficPolicy": svc.external_traffic_policy,
        "forwardingMode": svc.forwarding_mode,
    }
    if svc.session_affinity != "None":
        out["sessionAffinity"] = svc.session_affinity
        if svc.session_affinity_timeout is not None:
            out["sessionAffinityTimeoutSeconds"] = svc.session_affinity_timeout
    if svc.source_ranges:
        out["sourceRanges"] = list(svc.source_ranges)
    if svc.traffic_distribution:
        out["trafficDistribution"] = svc.traffic_distribution
    if svc.health_check_node_port:
        out["healthCheckNodePort"] = svc.health_check_node_port
    return out


def service_from_entry(s: Mapping[str, Any]) -> LBService:
    """Raises KeyError, TypeError or ValueError for a malformed entry."""
    endpoints = tuple(
        Endpoint(
            address=e["address"],
            node=e.get("node"),
            zone=e.get("zone"),
            ready=bool(e.get("ready", True)),
            serving=bool(e.get("serving", e.get("ready", True))),
            terminating=bool(e.get("terminating", False)),
            unreachable=bool(e.get("unreachable", False)),
            for_zones=tuple(e.get("forZones") or ()),
            for_nodes=tuple(e.get("forNodes") or ()),
            ports=tuple(
                EndpointPort(p.get("name") or "", p.get("protocol") or "TCP", int(p["port"]))
                for p in e.get("ports") or []
            ),
        )
        for e in s.get("endpoints") or []
    )
    hcnp = s.get("healthCheckNodePort")
    return LBService(
        namespace=s.get("namespace", "default"),
        name=s["name"],
        vips=tuple(s.get("vips") or ()),
        ports=tuple(
            ServicePort(
                p.get("name") or "",
                p.get("protocol") or "TCP",
                int(p["port"]),
                p.get("nodePort"),
                p.get("targetPort"),
            )
            for p in s.get("ports") or []
        ),
        endpoints=endpoints,
        external_traffic_policy=s.get("externalTrafficPolicy") or CLUSTER,
        session_affinity=s.get("sessionAffinity") or "None",
        session_affinity_timeout=s.get("sessionAffinityTimeoutSeconds"),
        source_ranges=tuple(s.get("sourceRanges") or ()),
        traffic_distribution=s.get("trafficDistribution"),
        forwarding_mode=s.get("forwardingMode") or "DSR",
        health_check_node_port=int(hcnp) if hcnp else None,
    )

"""Renders what the operator writes: the LoadBalancer CR's spec, conditions, and the Service's
status. Pure: the same inputs give the same JSON, so writes are skipped when nothing changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from portico_common import API_GROUP, API_VERSION
from portico_common.conditions import condition, same_conditions
from portico_common.model import Endpoint

from .pools import INT64_MAX, IP, Pool
from .service import BadServiceInput, ServiceView
from .settings import (
    EXCLUDE_LABEL,
    OUR_SERVICE_CONDITIONS,
    SERVICE_CONDITION,
    VALID_CONDITION,
    ZONE_LABEL,
)

LB_API_VERSION = f"{API_GROUP}/{API_VERSION}"
# The LoadBalancer conditions the operator writes (under its field manager); the gateways
# write others (Announced, Healthy) under theirs.
OPERATOR_CONDITIONS = ("Allocated", "NodePorts", "NodesReachable", "Programmed", "Valid")


@dataclass(frozen=True)
class NodeView:
    name: str
    internal_ips: tuple[str, ...]
    zone: str | None
    ready: bool
    network_unavailable: bool
    excluded: bool
    deleting: bool

    def out_reason(self) -> tuple[str, str] | None:
        """Why the node takes no load-balancer traffic, or None."""
        if self.deleting:
            return "Deleting", "the Node is being deleted"
        if self.excluded:
            return "Excluded", f"the Node has the label {EXCLUDE_LABEL}"
        if not self.ready:
            return "NotReady", "the Node's Ready condition is not True"
        if self.network_unavailable:
            return "NetworkUnavailable", "the Node's NetworkUnavailable condition is True"
        if not self.internal_ips:
            return "NoInternalIP", "the Node has no InternalIP address"
        return None


def parse_node(obj: Mapping[str, Any]) -> NodeView:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    labels = meta.get("labels") or {}
    return NodeView(
        name=meta.get("name", ""),
        internal_ips=tuple(
            a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"
        ),
        zone=labels.get(ZONE_LABEL),
        ready=conds.get("Ready") == "True",
        network_unavailable=conds.get("NetworkUnavailable") == "True",
        excluded=EXCLUDE_LABEL in labels,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def ports_summary(svc: ServiceView) -> str:
    return ",".join(f"{p.port}/{p.protocol}" for p in svc.ports)


def render_spec(
    svc: ServiceView,
    vips: Sequence[IP],
    pool: str | None,
    forwarding_mode: str,
    nodes: Iterable[NodeView],
    endpoints: Iterable[Endpoint],
) -> dict[str, Any]:
    by_node: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        if ep.node:
            by_node.setdefault(ep.node, []).append(ep)
    backends = []
    excluded = []
    for node in sorted(nodes, key=lambda n: n.name):
        out = node.out_reason()
        if out is not None:
            excluded.append({"node": node.name, "reason": out[0], "message": out[1]})
            continue
        eps = sorted(by_node.get(node.name, []), key=lambda e: e.address)
        backends.append(
            {
                "node": node.name,
                "internalIPs": list(node.internal_ips),
                "zone": node.zone or "",
                "ready": sum(e.ready for e in eps),
                "serving": sum(e.serving for e in eps),
                "terminating": sum(e.terminating for e in eps),
                "endpoints": [
                    {
                        "address": e.address,
                        "ready": e.ready,
                        "serving": e.serving,
                        "terminating": e.terminating,
                        "forZones": list(e.for_zones),
                    }
                    for e in eps
                ],
            }
        )
    spec: dict[str, Any] = {
        "service": {"name": svc.name, "uid": svc.uid},
        "vips": [str(ip) for ip in vips],
        "pool": pool or "",
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
        "portsSummary": ports_summary(svc),
        "externalTrafficPolicy": svc.external_traffic_policy,
        "sessionAffinity": svc.session_affinity,
        "sourceRanges": list(svc.source_ranges),
        "forwardingMode": forwarding_mode,
        "backends": backends,
        "excludedNodes": excluded,
    }
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    if svc.session_affinity_timeout is not None:
        spec["sessionAffinityTimeoutSeconds"] = svc.session_affinity_timeout
    if svc.traffic_distribution:
        spec["trafficDistribution"] = svc.traffic_distribution
    try:
        drain = svc.drain_timeout()
    except BadServiceInput:  # reported by the bad-input path; the gateways' default meanwhile
        drain = None
    if drain is not None:
        spec["drainTimeoutSeconds"] = drain
    return spec


def service_status(
    svc: ServiceView,
    vips: Sequence[IP],
    forwarding_mode: str,
    allocated: bool,
    reason: str,
    message: str,
    now: str,
    input_error: str | None = None,
) -> dict[str, Any]:
    """The Service's status: ingress and Portico's conditions, other conditions kept as they
    are."""
    ip_mode = "VIP" if forwarding_mode == "DSR" else "Proxy"
    ours = condition(
        SERVICE_CONDITION, allocated, reason, message, svc.generation, now, svc.conditions
    )
    valid = valid_condition(input_error, svc.generation, now, svc.conditions, VALID_CONDITION)
    others = [c for c in svc.conditions if c.get("type") not in OUR_SERVICE_CONDITIONS]
    return {
        "loadBalancer": {"ingress": [{"ip": str(ip), "ipMode": ip_mode} for ip in vips]},
        "conditions": [*others, ours, valid],
    }


def valid_condition(
    input_error: str | None,
    generation: int,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
    kind: str = "Valid",
) -> dict[str, Any]:
    if input_error is None:
        return condition(
            kind, True, "Valid", "the Service's settings are valid", generation, now, previous
        )
    return condition(
        kind,
        False,
        "InvalidRequest",
        f"{input_error}; the last valid configuration stays in force",
        generation,
        now,
        previous,
    )


def status_differs(svc: ServiceView, desired: Mapping[str, Any]) -> bool:
    ingress = [dict(e) for e in svc.ingress]
    want = desired["loadBalancer"]["ingress"]
    strip = [{k: v for k, v in e.items() if k in ("ip", "ipMode")} for e in ingress]
    return strip != want or not same_conditions(svc.conditions, desired["conditions"])


def node_ports_condition(
    svc: ServiceView,
    forwarding_mode: str,
    generation: int,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """NAT mode forwards to nodeIP:nodePort, so every port needs a nodePort. Portico does not
    rewrite the user's spec to get them; it says what is missing. None in DSR mode."""
    if forwarding_mode != "NAT":
        return None
    missing = [p for p in svc.ports if not p.node_port]
    if not missing:
        return condition(
            "NodePorts",
            True,
            "NodePortsAllocated",
            "every port has a nodePort",
            generation,
            now,
            previous,
        )
    ports = ", ".join(f"{p.port}/{p.protocol}" for p in missing)
    why = (
        "allocateLoadBalancerNodePorts is false: set it to true, or give these ports a nodePort"
        if not svc.allocate_node_ports
        else "the apiserver has not allocated them"
    )
    return condition(
        "NodePorts",
        False,
        "NodePortsMissing",
        f"forwarding mode NAT sends traffic to nodePorts; ports {ports} have none: {why}",
        generation,
        now,
        previous,
    )


def render_pool_status(
    pool: Pool,
    obj: Mapping[str, Any],
    used: Mapping[int, int],
    conflicts: Sequence[str],
    now: str,
) -> dict[str, Any]:
    """An VIPPool's status: usage per family and the Valid and Conflicting conditions."""
    gen = int((obj.get("metadata") or {}).get("generation") or 0)
    previous = (obj.get("status") or {}).get("conditions") or []
    fams = {}
    for f in (4, 6):
        cap = pool.capacity(f)
        fams[f"ipv{f}"] = {
            "capacity": min(cap, INT64_MAX),
            "used": used[f],
            "free": min(max(cap - used[f], 0), INT64_MAX),
        }
    valid = condition(
        "Valid",
        pool.valid,
        "Valid" if pool.valid else "Invalid",
        "the pool is valid" if pool.valid else "; ".join(pool.errors),
        gen,
        now,
        previous,
    )
    conflicting = condition(
        "Conflicting",
        bool(conflicts),
        "Overlaps" if conflicts else "NoOverlap",
        (
            f"addresses overlap VIPPool {', '.join(sorted(conflicts))}: neither hands out "
            "new addresses until that is fixed"
            if conflicts
            else "no other pool overlaps this one"
        ),
        gen,
        now,
        previous,
    )
    return {"observedGeneration": gen, **fams, "conditions": [valid, conflicting]}


def pool_status_differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether writing ``desired`` changes anything but condition timestamps."""
    return not (
        same_conditions(current.get("conditions") or [], desired["conditions"])
        and all(current.get(k) == desired[k] for k in ("ipv4", "ipv6", "observedGeneration"))
    )


def lb_spec_body(view: ServiceView, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The server-side apply body of a Service's LoadBalancer CR: named after the Service, in
    its namespace, owned by it (so it goes with the Service whatever happens to the operator)."""
    return {
        "apiVersion": LB_API_VERSION,
        "kind": "LoadBalancer",
        "metadata": {
            "name": view.name,
            "namespace": view.namespace,
            "labels": {f"{API_GROUP}/service": view.name},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": view.name,
                    "uid": view.uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": dict(spec),
    }


def lb_conditions(
    basis: ServiceView,
    allocated: bool,
    reason: str,
    message: str,
    input_error: str | None,
    mode: str,
    generation: int,
    now: str,
    previous: Sequence[Mapping[str, Any]],
    programmed: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The operator's conditions of a LoadBalancer CR: Allocated, Valid, NodePorts (NAT mode
    only) and Programmed (once the node agents report)."""
    conds = [
        condition("Allocated", allocated, reason, message, generation, now, previous),
        valid_condition(input_error, generation, now, previous),
    ]
    ports = node_ports_condition(basis, mode, generation, now, previous)
    if ports is not None:
        conds.append(ports)
    if programmed is not None:
        conds.append(dict(programmed))
    return conds


def lb_status_current(
    status: Mapping[str, Any] | None, conds: Sequence[Mapping[str, Any]], generation: int | None
) -> bool:
    """Whether a CR's status already says ``conds`` for ``generation`` (the gateways'
    conditions beside them do not count)."""
    status = status or {}
    mine = [c for c in status.get("conditions") or [] if c.get("type") in OPERATOR_CONDITIONS]
    return same_conditions(mine, conds) and status.get("observedGeneration") == generation


def lb_status_body(
    view: ServiceView, generation: int | None, conds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Server-side apply of the status: conditions this manager no longer sends (NodePorts after
    a switch back to DSR) are removed; other writers' conditions are left alone."""
    return {
        "apiVersion": LB_API_VERSION,
        "kind": "LoadBalancer",
        "metadata": {"name": view.name, "namespace": view.namespace},
        "status": {"observedGeneration": generation, "conditions": list(conds)},
    }

"""``kubectl portico status``'s verdict: from the objects of one Service (``Snapshot``) to what
its path is and, in plain words, why it is not reachable when it is not. Pure: the clock and
the client's address are passed in.

The checks follow a packet's path: the Service is Portico's and has an address (the operator's
``Allocated`` and ``Valid`` conditions, the VIPPools), the client is admitted (source ranges),
a gateway answers ARP/NDP for the address (``ownerGateway``, its GatewayReport still written
and not marked stopped), the Service has endpoints, and at least one node passes the gateway's
health check and has applied the Service's rules. A finding that stops every packet is
blocking; one that stops some (one node of three down) is a warning. The Service is reachable
when nothing blocks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from portico_common import API_GROUP

from .paths import (
    APPLIED,
    EndpointRow,
    GatewayView,
    NodeRow,
    endpoint_rows,
    has_rules_entry,
    node_rows,
    read_reports,
)
from .snapshot import Obj, Snapshot

# The operator's default; an operator started with --load-balancer-class serves another.
DEFAULT_CLASS = f"{API_GROUP}/lb"
SERVICE_ALLOCATED = f"{API_GROUP}/Allocated"
SERVICE_VALID = f"{API_GROUP}/Valid"

# The operator's Allocated reasons (portico_operator.ipam), in plain words and what to do.
ALLOCATION_HINTS = {
    "NoPoolMatches": "no VIPPool matches this Service: check the pools' autoAssign, "
    "serviceSelector and namespaceSelector, and that one has addresses of the Service's family",
    "PoolExhausted": "the address pool is exhausted: every address is in use; add addresses "
    "to a pool or delete a Service that holds one",
    "PoolNotFound": "the VIPPool the Service names (portico.dev/address-pool) does not exist",
    "PoolUnusable": "the matching VIPPool is invalid or overlaps another pool (see the pools' "
    "Valid and Conflicting conditions)",
    "NotInAnyPool": "the address the Service asks for is in no VIPPool",
    "AddressInUse": "the address the Service asks for is held by another Service",
    "WrongFamily": "the address the Service asks for is not of the Service's IP family",
    "SharingConflict": "the address cannot be shared with the Services that hold it",
    "InvalidRequest": "bad input: the operator cannot use the Service's settings",
}


@dataclass(frozen=True)
class Finding:
    code: str  # stable, for scripts: NoPoolMatches, SourceRangeExcludes, RulesNotApplied, ...
    blocking: bool  # True: no packet gets through
    message: str


@dataclass(frozen=True)
class Condition:
    source: str  # Service or LoadBalancer
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class PoolRow:
    name: str
    addresses: tuple[str, ...]
    auto_assign: bool
    selectors: str
    free_v4: int | None
    free_v6: int | None
    valid: str
    conflicting: str


@dataclass(frozen=True)
class Status:
    service: str
    reachable: bool
    vips: dict[str, list[str]] = field(default_factory=dict)  # "IPv4"/"IPv6" -> addresses
    pool: str = ""
    ports: str = ""
    traffic_policy: str = ""
    forwarding_mode: str = ""
    source_ranges: tuple[str, ...] = ()
    client: str = ""  # --from
    gateway: str = ""
    gateway_message: str = ""
    nodes: tuple[NodeRow, ...] = ()
    endpoints: tuple[EndpointRow, ...] = ()
    conditions: tuple[Condition, ...] = ()
    pools: tuple[PoolRow, ...] = ()  # shown when the Service has no address
    findings: tuple[Finding, ...] = ()
    unread: tuple[str, ...] = ()  # kinds that could not be read: their checks were skipped


def diagnose(
    snap: Snapshot, now: datetime, client: str | None = None, lb_class: str = DEFAULT_CLASS
) -> Status:
    svc = snap.service
    if svc is None:
        f = Finding("ServiceNotFound", True, f"Service {snap.key} does not exist")
        return Status(snap.key, False, findings=(f,))
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        f = Finding(
            "NotLoadBalancer",
            True,
            f"the Service is of type {spec.get('type') or 'ClusterIP'}, not LoadBalancer: "
            "Portico gives it no external address",
        )
        return Status(snap.key, False, findings=(f,))
    cls = spec.get("loadBalancerClass")
    if cls not in (None, lb_class):
        f = Finding(
            "OtherLoadBalancerClass",
            True,
            f"the Service's loadBalancerClass is {cls!r}: another load balancer serves it "
            f"(Portico serves {lb_class!r} and Services without a class)",
        )
        return Status(snap.key, False, findings=(f,))

    lb = _own_lb(snap)
    lb_spec = (lb or {}).get("spec") or {}
    lb_status = (lb or {}).get("status") or {}
    reports = read_reports(snap.reports or (), now)
    nodes = node_rows(dataclasses.replace(snap, lb=lb), reports)
    endpoints = endpoint_rows(snap)
    vips = _vips(lb_spec.get("vips") or _ingress(svc))
    ranges = tuple(lb_spec.get("sourceRanges") or spec.get("loadBalancerSourceRanges") or ())
    conds = _conditions(svc, lb)

    found: list[Finding] = []
    allocated = _allocation(svc, lb, vips, found)
    if allocated:
        if client:
            _client(client, vips, ranges, found)
        _published(snap, lb, found)
        _gateway(lb_status, reports.gateways, snap.reports is not None, found)
        before = len(found)
        _endpoints(snap, endpoints, found)
        if not any(f.blocking for f in found[before:]):
            # Without endpoints, every Local node fails its health check for that reason
            # alone: the nodes' findings would only repeat it (the Nodes table still shows them).
            _nodes(lb_spec, nodes, found)
    found.sort(key=lambda f: not f.blocking)
    unread = [
        kind
        for kind, objs in (
            ("VIPPools", snap.pools),
            ("NodeAgents", snap.agents),
            ("GatewayReports", snap.reports),
        )
        if objs is None
    ]
    return Status(
        service=snap.key,
        reachable=not any(f.blocking for f in found),
        vips=vips,
        pool=str(lb_spec.get("pool") or ""),
        ports=str(lb_spec.get("portsSummary") or _ports(spec)),
        traffic_policy=str(spec.get("externalTrafficPolicy") or "Cluster"),
        forwarding_mode=str(lb_spec.get("forwardingMode") or ""),
        source_ranges=ranges,
        client=client or "",
        gateway=str(lb_status.get("ownerGateway") or ""),
        gateway_message=_condition_message(lb, "Announced"),
        nodes=tuple(nodes) if allocated else (),  # no address: the path stops before them
        endpoints=tuple(endpoints),
        conditions=tuple(conds),
        pools=() if allocated else tuple(_pool_rows(snap.pools or ())),
        findings=tuple(found),
        unread=tuple(unread),
    )


# -- reading ---------------------------------------------------------------------------------
def _own_lb(snap: Snapshot) -> Obj | None:
    """The CR, unless it is a previous Service's of the same name (another uid)."""
    if snap.lb is None or snap.service is None:
        return snap.lb
    uid = ((snap.lb.get("spec") or {}).get("service") or {}).get("uid")
    mine = (snap.service.get("metadata") or {}).get("uid")
    return snap.lb if not uid or not mine or uid == mine else None


def _ingress(svc: Obj) -> list[str]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [str(e["ip"]) for e in ingress if isinstance(e, dict) and e.get("ip")]


def _vips(texts: Iterable[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in texts:
        try:
            family = f"IPv{ipaddress.ip_address(str(t)).version}"
        except ValueError:
            continue
        out.setdefault(family, []).append(str(t))
    return out


def _ports(spec: Mapping[str, Any]) -> str:
    ports = spec.get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol') or 'TCP'}" for p in ports)


def _find(conds: Iterable[Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conds if isinstance(c, dict) and c.get("type") == kind), None)


def _lb_condition(lb: Obj | None, kind: str) -> Mapping[str, Any] | None:
    return _find(((lb or {}).get("status") or {}).get("conditions") or [], kind)


def _condition_message(lb: Obj | None, kind: str) -> str:
    c = _lb_condition(lb, kind)
    return str(c.get("message") or "") if c else ""


def _conditions(svc: Obj, lb: Obj | None) -> list[Condition]:
    out = []
    for source, obj in (("Service", svc), ("LoadBalancer", lb)):
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            kind = str(c.get("type") or "")
            if source == "Service" and not kind.startswith(f"{API_GROUP}/"):
                continue  # others' conditions on the Service are not Portico's to explain
            out.append(
                Condition(
                    source,
                    kind,
                    str(c.get("status") or ""),
                    str(c.get("reason") or ""),
                    str(c.get("message") or ""),
                )
            )
    return out


def _pool_rows(pools: Iterable[Obj]) -> list[PoolRow]:
    rows = []
    for p in pools:
        spec, status = p.get("spec") or {}, p.get("status") or {}
        conds = status.get("conditions") or []
        selectors = [k for k in ("serviceSelector", "namespaceSelector") if spec.get(k)]
        rows.append(
            PoolRow(
                name=str((p.get("metadata") or {}).get("name") or ""),
                addresses=tuple(spec.get("addresses") or ()),
                auto_assign=spec.get("autoAssign", True) is not False,
                selectors=", ".join(selectors) or "none",
                free_v4=(status.get("ipv4") or {}).get("free"),
                free_v6=(status.get("ipv6") or {}).get("free"),
                valid=str((_find(conds, "Valid") or {}).get("status") or "?"),
                conflicting=str((_find(conds, "Conflicting") or {}).get("status") or "?"),
            )
        )
    return sorted(rows, key=lambda r: r.name)


# -- the checks, along the path --------------------------------------------------------------
def _allocation(
    svc: Obj, lb: Obj | None, vips: Mapping[str, list[str]], found: list[Finding]
) -> bool:
    """Whether the Service has its addresses; what stops it if not."""
    conds = (svc.get("status") or {}).get("conditions") or []
    alloc = _find(conds, SERVICE_ALLOCATED) or _lb_condition(lb, "Allocated")
    valid = _find(conds, SERVICE_VALID) or _lb_condition(lb, "Valid") or {}
    bad = valid.get("status") == "False"
    if alloc is not None and alloc.get("status") == "False":
        reason = str(alloc.get("reason") or "")
        hint = ALLOCATION_HINTS.get(reason, "the operator gave the Service no address")
        code = "InvalidInput" if reason == "InvalidRequest" else reason or "NotAllocated"
        message = f"{hint}. The operator says: {alloc.get('message')}"
        if bad and reason != "InvalidRequest":
            message += f". Besides, the Service's input is invalid: {valid.get('message')}"
        found.append(Finding(code, True, message))
        return False
    if not vips:
        found.append(
            Finding(
                "NotAllocated",
                True,
                "the Service has no external address and no Allocated condition: the operator "
                "has not handled it (is portico-operator running, and does it serve this "
                "Service's loadBalancerClass?)",
            )
        )
        return False
    if bad:
        found.append(
            Finding(
                "InvalidInput",
                False,
                f"bad input ({valid.get('reason')}): {valid.get('message')}. The Service "
                "keeps its address and runs on its last valid configuration",
            )
        )
    return True


def _client(
    client: str, vips: Mapping[str, list[str]], ranges: Sequence[str], found: list[Finding]
) -> None:
    """Whether a client at ``client`` may reach a VIP (``--from``)."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        found.append(Finding("BadClientAddress", True, f"--from {client!r} is not an IP address"))
        return
    family = f"IPv{addr.version}"
    if family not in vips:
        found.append(
            Finding(
                "NoAddressOfFamily",
                True,
                f"the Service has no {family} address, so {client} has none to connect to "
                f"(it has {', '.join(a for v in vips.values() for a in v)})",
            )
        )
    if not ranges:
        return
    nets = []
    for r in ranges:
        try:
            nets.append(ipaddress.ip_network(str(r), strict=False))
        except ValueError:
            continue  # a range the operator could not read: reported by its Valid condition
    if not any(addr in n for n in nets if n.version == addr.version):
        found.append(
            Finding(
                "SourceRangeExcludes",
                True,
                f"the Service's loadBalancerSourceRanges ({', '.join(ranges)}) do not include "
                f"{client}: the gateway and the nodes drop its packets",
            )
        )


def _published(snap: Snapshot, lb: Obj | None, found: list[Finding]) -> None:
    if lb is None:
        found.append(
            Finding(
                "NoLoadBalancerObject",
                True,
                "the Service has an address but no LoadBalancer object: the operator has not "
                "published it to the gateways yet (is portico-operator running?)",
            )
        )
        return
    if snap.rules is not None and not has_rules_entry(snap):
        found.append(
            Finding(
                "NoNodeRules",
                True,
                f"NodeRules {snap.shard} carries no entry for this Service: the nodes have no "
                "rules for it yet",
            )
        )
    ports = _lb_condition(lb, "NodePorts")
    if ports is not None and ports.get("status") == "False":
        found.append(Finding("NodePortsMissing", True, str(ports.get("message") or "")))


def _gateway(
    status: Mapping[str, Any],
    gateways: Mapping[str, GatewayView],
    reports_read: bool,
    found: list[Finding],
) -> None:
    owner = str(status.get("ownerGateway") or "")
    announced = _find(status.get("conditions") or [], "Announced")
    if not owner:
        why = f" ({announced.get('reason')}: {announced.get('message')})" if announced else ""
        found.append(
            Finding(
                "NoGateway",
                True,
                "no gateway answers ARP/NDP for the Service's addresses: no ownerGateway in the "
                f"LoadBalancer status{why}; is portico-lbnode running?",
            )
        )
        return
    if not reports_read:
        return
    view = gateways.get(owner)
    if view is None:
        found.append(
            Finding(
                "GatewayGone",
                True,
                f"the status names gateway {owner}, which has no GatewayReport: it is not "
                "running, so nothing may answer ARP/NDP for the addresses",
            )
        )
    elif view.stopped:
        # A stopped gateway leaves its report (a restart reads its verdicts back), marked.
        found.append(
            Finding(
                "GatewayGone",
                True,
                f"the status names gateway {owner}, which stopped at {view.stopped} (its "
                "GatewayReport says so): it withdrew its announcements, so nothing may answer "
                "ARP/NDP for the addresses",
            )
        )
    elif view.stale:
        age = "never" if view.age is None else f"{view.age:.0f} s ago"
        found.append(
            Finding(
                "GatewayStale",
                True,
                f"gateway {owner} last wrote its report {age} (it writes every 10 s): it may "
                "have stopped or lost the API, and may not answer ARP/NDP for the addresses",
            )
        )


def _endpoints(snap: Snapshot, endpoints: Sequence[EndpointRow], found: list[Finding]) -> None:
    selector = ((snap.service or {}).get("spec") or {}).get("selector")
    if not endpoints:
        why = (
            "its selector matches no pod" if selector else "it has no selector and no EndpointSlice"
        )
        found.append(Finding("NoEndpoints", True, f"the Service has no endpoints: {why}"))
        return
    ready = [e for e in endpoints if e.ready]
    serving = [e for e in endpoints if e.serving]
    if not ready and not serving:
        found.append(
            Finding(
                "NoReadyEndpoints",
                True,
                f"none of the Service's {len(endpoints)} endpoints is ready or serving",
            )
        )
        return
    if not ready:
        found.append(
            Finding(
                "OnlyTerminatingEndpoints",
                False,
                "no endpoint is ready; only terminating ones still serving take traffic",
            )
        )
    live = [e for e in (ready or serving) if not e.unreachable]
    if not live:
        nodes = sorted({e.node for e in ready or serving})
        found.append(
            Finding(
                "EndpointsUnreachable",
                True,
                f"every ready endpoint is on a node the gateway cannot reach ({', '.join(nodes)})",
            )
        )


def _nodes(lb_spec: Mapping[str, Any], nodes: Sequence[NodeRow], found: list[Finding]) -> None:
    backends = [n for n in nodes if n.backend]
    if not backends:
        out = "; ".join(f"{n.node}: {n.excluded}" for n in nodes) or "the cluster has no node"
        found.append(Finding("NoBackends", True, f"no node may take the Service's traffic ({out})"))
        return
    usable = [n for n in backends if n.usable]
    blocking = not usable
    groups = (
        ("NodeUnreachable", lambda n: n.arp == "unreachable"),
        ("RulesNotApplied", lambda n: n.rules not in (APPLIED, "unknown")),
        ("NodeUnhealthy", lambda n: n.health in ("unhealthy", "not probed")),
        ("NodeNotServing", lambda n: True),
    )
    named: set[str] = set()
    for code, test in groups:
        # One finding per node, under its first cause (the others are in its problems).
        hit = [n for n in backends if test(n) and n.problems and n.node not in named]
        if hit:
            named |= {n.node for n in hit}
            detail = "; ".join(f"{n.node}: {', '.join(n.problems)}" for n in hit)
            found.append(Finding(code, blocking, detail))
    if blocking:
        policy = lb_spec.get("externalTrafficPolicy")
        extra = (
            " (externalTrafficPolicy Local: only nodes with a ready endpoint pass)"
            if policy == "Local"
            else ""
        )
        found.append(
            Finding(
                "NoHealthyNode",
                True,
                f"no node can take the Service's traffic: none of {_names(backends)} passes the "
                f"gateway's health check with its rules applied{extra}",
            )
        )


def _names(rows: Sequence[NodeRow]) -> str:
    names = [r.node for r in rows]
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")

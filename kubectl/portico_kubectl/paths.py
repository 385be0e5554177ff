"""The parts of a Service's path, read from the objects its writers keep: each backend node as
the gateway, the node agents and the gateways' ARP reports see it, and each endpoint as its
EndpointSlice and its NodeRules entry see it. Pure.

Who writes what (so that each column says whose word it is):
  * health: the LoadBalancer CR's ``status.nodes``, written by the gateway that owns the VIPs
    (``portico_lbnode.lbstatus``); a node without ARP answer is unhealthy there too;
  * rules: the node's NodeAgent ``status.applied`` (NodeRules shard -> generation applied,
    ``portico_nodeagent.kubeagent``) against the shard's current generation;
  * ARP: every gateway's GatewayReport ``status.nodes`` (``portico_lbnode.neighbours``);
  * endpoints: the EndpointSlices, and ``unreachable`` on the NodeRules entry's endpoints (the
    operator's, ``portico_operator.publishing``): those every other node leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .snapshot import Obj, Snapshot

# A gateway writes its report every 10 s; the operator ignores one unchanged for 30 s.
REPORT_STALE_SECONDS = 30.0

APPLIED, BEHIND, FAILED, NO_AGENT, UNKNOWN = "applied", "behind", "failed", "no agent", "unknown"


@dataclass(frozen=True)
class NodeRow:
    node: str
    backend: bool  # False: left out of the Service's backends (``excluded`` says why)
    excluded: str = ""
    health: str = "unknown"  # healthy, unhealthy, not probed, unknown (no gateway status)
    health_message: str = ""
    health_since: str = ""
    rules: str = UNKNOWN  # applied, behind, failed, no agent, unknown (NodeAgent unreadable)
    rules_message: str = ""
    arp: str = "no verdict"  # reachable, unreachable, no verdict
    arp_message: str = ""
    ready: int = 0
    serving: int = 0
    terminating: int = 0
    problems: tuple[str, ...] = ()  # why the node takes no traffic of this Service

    @property
    def usable(self) -> bool:
        return self.backend and not self.problems


@dataclass(frozen=True)
class EndpointRow:
    address: str
    node: str
    pod: str
    ready: bool
    serving: bool
    terminating: bool
    unreachable: bool = False  # out of the other nodes' rules (the gateway cannot reach it)


@dataclass(frozen=True)
class Verdict:
    gateway: str
    reachable: bool
    since: str
    message: str


@dataclass(frozen=True)
class GatewayView:
    name: str
    heartbeat: str
    age: float | None  # seconds since its last write, by this machine's clock
    stale: bool
    unreachable: tuple[str, ...] = ()
    stopped: str = ""  # when the gateway stopped cleanly (its report stays, marked)


@dataclass(frozen=True)
class Reports:
    gateways: dict[str, GatewayView] = field(default_factory=dict)
    verdicts: dict[str, list[Verdict]] = field(default_factory=dict)  # node -> verdicts


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def read_reports(reports: Iterable[Obj], now: datetime) -> Reports:
    out = Reports()
    for obj in reports:
        name = str((obj.get("metadata") or {}).get("name") or "")
        status = obj.get("status") or {}
        beat = parse_time(status.get("heartbeatTime"))
        age = (now - beat).total_seconds() if beat is not None else None
        out.gateways[name] = GatewayView(
            name,
            str(status.get("heartbeatTime") or ""),
            age,
            age is None or age > REPORT_STALE_SECONDS,
            tuple(status.get("unreachableNodes") or ()),
            str(status.get("stoppedTime") or ""),
        )
        for n in status.get("nodes") or []:
            if not isinstance(n, dict) or not isinstance(n.get("reachable"), bool):
                continue
            out.verdicts.setdefault(str(n.get("node")), []).append(
                Verdict(
                    name,
                    n["reachable"],
                    str(n.get("lastTransitionTime") or ""),
                    str(n.get("message") or ""),
                )
            )
    return out


def endpoint_rows(snap: Snapshot) -> list[EndpointRow]:
    """Every endpoint address of the Service's EndpointSlices (the API convention: a missing
    ``ready`` is ready, a missing ``serving`` is ``ready``)."""
    marked = {
        e.get("address")
        for e in _entry(snap).get("endpoints") or []
        if isinstance(e, dict) and e.get("unreachable")
    }
    rows = []
    for s in snap.slices:
        for ep in s.get("endpoints") or []:
            c = ep.get("conditions") or {}
            ready = c.get("ready") is not False
            serving = c.get("serving") if c.get("serving") is not None else ready
            for address in ep.get("addresses") or []:
                rows.append(
                    EndpointRow(
                        address=str(address),
                        node=str(ep.get("nodeName") or ""),
                        pod=str((ep.get("targetRef") or {}).get("name") or ""),
                        ready=ready,
                        serving=bool(serving),
                        terminating=bool(c.get("terminating")),
                        unreachable=address in marked,
                    )
                )
    return sorted(rows, key=lambda r: (r.node, r.address))


def _entry(snap: Snapshot) -> Mapping[str, Any]:
    """The Service's NodeRules entry, or {}."""
    if snap.rules is None:
        return {}
    return ((snap.rules.get("spec") or {}).get("services") or {}).get(snap.key) or {}


def has_rules_entry(snap: Snapshot) -> bool:
    return bool(_entry(snap))


def node_rules(snap: Snapshot, agent: Obj | None) -> tuple[str, str]:
    """(state, message): whether the node's agent applied the NodeRules shard that carries
    this Service, at the shard's current generation."""
    if snap.agents is None:
        return UNKNOWN, "NodeAgent objects could not be read"
    if agent is None:
        return NO_AGENT, "no NodeAgent object: portico-node-agent has not run on this node"
    status = agent.get("status") or {}
    bad = (status.get("badEntries") or {}).get(snap.key)
    if bad:
        return FAILED, f"its agent cannot render this Service ({bad}); its last good rules stay"
    if snap.rules is None or not has_rules_entry(snap):
        return UNKNOWN, "no NodeRules entry for this Service"
    shard = snap.shard
    want = int((snap.rules.get("metadata") or {}).get("generation") or 0)
    applied = (status.get("applied") or {}).get(shard)
    if isinstance(applied, int) and applied >= want:
        return APPLIED, f"NodeRules {shard} generation {applied} applied"
    error = status.get("error") or ""
    if error:
        return FAILED, f"its agent's last apply failed: {error}"
    last = status.get("appliedAt") or "never"
    have = "none" if applied is None else f"generation {applied}"
    return (
        BEHIND,
        f"its agent applied {have} of NodeRules {shard}, which is at generation {want} "
        f"(its last apply: {last}); is portico-node-agent running there?",
    )


def node_rows(snap: Snapshot, reports: Reports) -> list[NodeRow]:
    """Every node the LoadBalancer CR names: its backends, then the nodes it left out."""
    lb = snap.lb or {}
    spec, status = lb.get("spec") or {}, lb.get("status") or {}
    owner = str(status.get("ownerGateway") or "")
    health = {str(n.get("node")): n for n in status.get("nodes") or [] if isinstance(n, dict)}
    agents = {
        str((a.get("metadata") or {}).get("name")): a for a in snap.agents or () if a is not None
    }
    local = spec.get("externalTrafficPolicy") == "Local"
    rows = []
    for b in spec.get("backends") or []:
        node = str(b.get("node") or "")
        h = health.get(node)
        if h is not None:
            state = "healthy" if h.get("healthy") else "unhealthy"
            if not h.get("healthy") and h.get("message") == "not probed yet":
                state = "not probed"
            hmsg, hsince = str(h.get("message") or ""), str(h.get("lastTransitionTime") or "")
        else:
            state, hmsg, hsince = "unknown", "no gateway reports its health", ""
        rules, rmsg = node_rules(snap, agents.get(node))
        arp, amsg = _arp(reports.verdicts.get(node) or [], owner)
        problems = []
        if arp == "unreachable":
            problems.append(f"unreachable: {amsg}")
        if rules in (BEHIND, FAILED, NO_AGENT):
            problems.append(f"rules not applied: {rmsg}")
        if state in ("unhealthy", "not probed") and not (arp == "unreachable" and "ARP" in hmsg):
            problems.append(f"the gateway's health check fails: {hmsg}" if hmsg else state)
        if local and not int(b.get("ready") or 0) and not int(b.get("serving") or 0):
            problems.append("no local endpoint (externalTrafficPolicy Local)")
        rows.append(
            NodeRow(
                node=node,
                backend=True,
                health=state,
                health_message=hmsg,
                health_since=hsince,
                rules=rules,
                rules_message=rmsg,
                arp=arp,
                arp_message=amsg,
                ready=int(b.get("ready") or 0),
                serving=int(b.get("serving") or 0),
                terminating=int(b.get("terminating") or 0),
                problems=tuple(problems),
            )
        )
    for x in spec.get("excludedNodes") or []:
        rows.append(
            NodeRow(
                node=str(x.get("node") or ""),
                backend=False,
                excluded=f"{x.get('reason')}: {x.get('message')}",
                health="-",
                rules="-",
                arp="-",
            )
        )
    return rows


def _arp(verdicts: list[Verdict], owner: str) -> tuple[str, str]:
    down = [v for v in verdicts if not v.reachable]
    if down:
        who = ", ".join(sorted(v.gateway for v in down))
        since = min(v.since for v in down)
        return "unreachable", f"gateway {who} gets no ARP answer from it (since {since})"
    if verdicts:
        return "reachable", "answers ARP (" + ", ".join(sorted(v.gateway for v in verdicts)) + ")"
    if owner:
        return "no verdict", "it never answered the gateway's ARP requests (or is off its LAN)"
    return "no verdict", ""

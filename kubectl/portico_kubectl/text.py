"""``kubectl portico status`` as text for a person: the verdict first, then the path (addresses,
gateway, nodes, endpoints), the conditions, and the reasons. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from .diagnose import Status

# Findings after which the gateway's own words in the status may be old.
STALE_GATEWAY = ("GatewayGone", "GatewayStale")


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def verdict(st: Status) -> str:
    if not st.reachable:
        return "NOT REACHABLE"
    return "REACHABLE, degraded" if st.findings else "REACHABLE"


def render(st: Status) -> str:
    out = [f"Service {st.service}: {verdict(st)}" + (f" from {st.client}" if st.client else "")]
    blocking = [f for f in st.findings if f.blocking]
    warnings = [f for f in st.findings if not f.blocking]
    if blocking:
        out.append("Why not reachable:")
        out += [f"  - {f.message} [{f.code}]" for f in blocking]
    if warnings:
        out.append("Warnings:")
        out += [f"  - {f.message} [{f.code}]" for f in warnings]
    out.append("")
    vips = "  ".join(f"{fam} {', '.join(a)}" for fam, a in sorted(st.vips.items())) or "none"
    out.append(f"Addresses:  {vips}" + (f"  (VIPPool {st.pool})" if st.pool else ""))
    details = [f"policy {st.traffic_policy}"]
    if st.forwarding_mode:
        details.append(f"mode {st.forwarding_mode}")
    out.append(f"Ports:      {st.ports or 'none'}  ({', '.join(details)})")
    out.append(f"Sources:    {', '.join(st.source_ranges) or 'any'}")
    note = f"  ({st.gateway_message})" if st.gateway_message else ""
    if any(f.code in STALE_GATEWAY for f in st.findings):
        note = "  (its status may be stale: see above)"
    out.append(f"Gateway:    {st.gateway or 'none'}{note}")
    if st.nodes:
        out += ["", "Nodes:"]
        rows = [["NODE", "SERVES", "HEALTH (gateway)", "RULES", "ARP", "ENDPOINTS r/s/t"]]
        for n in st.nodes:
            if not n.backend:
                rows.append([n.node, "no", f"excluded: {n.excluded}", "-", "-", "-"])
                continue
            health = n.health + (f": {n.health_message}" if n.health_message else "")
            rows.append(
                [
                    n.node,
                    "yes" if n.usable else "NO",
                    health,
                    n.rules,
                    n.arp,
                    f"{n.ready}/{n.serving}/{n.terminating}",
                ]
            )
        out += table(rows)
    if st.endpoints:
        out += ["", "Endpoints:"]
        rows = [["ADDRESS", "NODE", "POD", "READY", "SERVING", "TERMINATING", "NOTE"]]
        for e in st.endpoints:
            rows.append(
                [
                    e.address,
                    e.node or "-",
                    e.pod or "-",
                    _yes(e.ready),
                    _yes(e.serving),
                    _yes(e.terminating),
                    "node unreachable: left out" if e.unreachable else "",
                ]
            )
        out += table(rows)
    if st.pools:
        out += ["", "VIPPools:"]
        rows = [["NAME", "ADDRESSES", "AUTO", "SELECTORS", "FREE v4", "FREE v6", "VALID", "CONFL"]]
        for p in st.pools:
            rows.append(
                [
                    p.name,
                    ",".join(p.addresses),
                    _yes(p.auto_assign),
                    p.selectors,
                    _count(p.free_v4),
                    _count(p.free_v6),
                    p.valid,
                    p.conflicting,
                ]
            )
        out += table(rows)
    if st.conditions:
        out += ["", "Conditions:"]
        rows = [["OBJECT", "TYPE", "STATUS", "REASON", "MESSAGE"]]
        rows += [[c.source, c.type, c.status, c.reason, c.message] for c in st.conditions]
        out += table(rows)
    if st.unread:
        out += ["", f"Not checked (could not read {', '.join(st.unread)})."]
    return "\n".join(out) + "\n"


def render_all(statuses: Sequence[Status]) -> str:
    rows = [["SERVICE", "ADDRESSES", "GATEWAY", "NODES", "VERDICT", "FIRST REASON"]]
    for st in statuses:
        usable = sum(1 for n in st.nodes if n.usable)
        backends = sum(1 for n in st.nodes if n.backend)
        first = st.findings[0].code if st.findings else ""
        rows.append(
            [
                st.service,
                ",".join(a for v in st.vips.values() for a in v) or "-",
                st.gateway or "-",
                f"{usable}/{backends}",
                verdict(st),
                first,
            ]
        )
    return "\n".join(table(rows, indent="")) + "\n"


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)

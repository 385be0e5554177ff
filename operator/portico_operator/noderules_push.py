"""What the operator writes for the node agents: each Service's NodeRules entry, and the merge
patches that bring the shards from what was written to what is wanted. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from portico_common.model import Endpoint, LBService, ServicePort
from portico_common.rulesdoc import service_entry, shard_name

from .pools import IP
from .service import ServiceView

Entry = dict[str, Any]


def node_rules_entry(
    svc: ServiceView, vips: Sequence[IP], forwarding_mode: str, endpoints: Iterable[Endpoint]
) -> Entry:
    return service_entry(
        LBService(
            namespace=svc.namespace,
            name=svc.name,
            vips=tuple(str(ip) for ip in vips),
            ports=tuple(
                ServicePort(p.name, p.protocol, p.port, p.node_port, p.target_port)
                for p in svc.ports
            ),
            endpoints=tuple(endpoints),
            external_traffic_policy=svc.external_traffic_policy,
            session_affinity=svc.session_affinity,
            session_affinity_timeout=svc.session_affinity_timeout,
            source_ranges=svc.source_ranges,
            traffic_distribution=svc.traffic_distribution,
            forwarding_mode=forwarding_mode,
            health_check_node_port=svc.health_check_node_port,
        )
    )


def forwards_alike(a: Entry, b: Entry) -> bool:
    """Whether two entries of a Service program the same forwarding, endpoints aside: which
    addresses, ports and mode a node accepts for it. Endpoints change all the time, and the
    gateway's probes follow what the agents applied of them."""
    return {k: v for k, v in a.items() if k != "endpoints"} == {
        k: v for k, v in b.items() if k != "endpoints"
    }


def shard_patches(
    wanted: Mapping[str, Entry | None], written: Mapping[str, Entry]
) -> dict[str, dict[str, Entry | None]]:
    """shard -> {service key: entry, or None to remove it} for every entry that differs."""
    out: dict[str, dict[str, Entry | None]] = {}
    for key, entry in wanted.items():
        if entry == written.get(key):
            continue
        if entry is None and key not in written:
            continue
        out.setdefault(shard_name(key), {})[key] = entry
    return out


def lagging_nodes(
    nodes: Iterable[str], shard: str, generation: int, applied: Mapping[str, Mapping[str, int]]
) -> list[str]:
    """The nodes whose agent has not applied ``shard`` at ``generation`` or later."""
    return sorted(n for n in nodes if (applied.get(n) or {}).get(shard, 0) < generation)


def programmed(lagging: Sequence[str]) -> tuple[bool, str, str]:
    """The Programmed condition's status, reason and message."""
    if not lagging:
        return True, "Applied", "every backend node applied this Service's rules"
    shown = ", ".join(lagging[:10]) + (
        f" and {len(lagging) - 10} more" if len(lagging) > 10 else ""
    )
    return False, "NodesLagging", f"not applied yet on {shown}"


def entry_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: a key ``new`` no longer
    has is sent as null. Sending ``new`` itself would leave every such key in place (a cleared
    ``loadBalancerSourceRanges`` would keep its ranges on every node)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            out[k] = v
        elif old[k] != v:
            out[k] = entry_patch(old[k], v)
    return out

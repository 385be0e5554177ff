"""A node's nftables rules for LoadBalancer Services, as data: pure functions, no I/O.

``render_node_rules(services, node)`` turns plain typed data about each Service (as one node
needs it) into the libnftables JSON that builds Portico's one table, ``inet portico``
(names in :mod:`portico_common.nftnames`). ``diff_rules(old, new)`` turns two renders (or the
kernel's own listing and a render) into the commands that change only what differs: map
elements, and the few per-Service chains whose rules changed.

The dispatch is kube-proxy's nftables proxier's (pkg/proxy/nftables/proxier.go), for the
LoadBalancer part only; endpoint choice is flat, so that the table does not grow a chain per
endpoint:

* ``nat-prerouting`` / ``nat-output`` jump to ``services``, which looks the packet up once in a
  verdict map keyed on ``daddr . l4proto . dport`` (``vips4`` / ``vips6``; and
  ``l4proto . dport`` in ``nodeports4/6`` for Services in the gateway's NAT mode), so the cost of
  a packet does not grow with the number of Services.
* A Service port's endpoint count N is a data element (``endpoint-counts4``): ``services`` saves
  the packet mark in the conntrack mark and goes, through ``picks4``, to the shared chain
  ``pick4-N``, which puts a random slot ``SLOT_BASE + (0..N-1)`` in the packet mark and DNATs
  through ``endpoint-addrs4`` / ``endpoint-ports4``, keyed ``daddr . l4proto . dport . mark``
  (slot i = the i-th endpoint by address; uniform). ``slot-prerouting`` / ``slot-output`` (just
  after DNAT, before routing) give the mark back and mark for masquerading what went to an
  endpoint on another node (``remote-endpoints4``; Cluster policy only: Local never leaves the
  node) or to the pod that sent it (``hairpin4``). An endpoint change is a few data elements,
  which the kernel commits without re-validating every jump of the table. (A locally sent
  packet is re-routed by the NAT hook itself, with the slot still in its mark: a node that
  routes by fwmark sees it there.)
* ClientIP affinity pins a client to an endpoint, so those Services keep kube-proxy's layout:
  a chain per Service port (``ip saddr @aff-… goto ep-…``, then
  ``numgen random mod (N-i) == 0 goto ep-i``) and a chain per endpoint (masquerade, record the
  pin, DNAT).
* ``filter-prerouting`` checks ``loadBalancerSourceRanges`` through ``firewall4/6`` before DNAT;
  ``filter-input/forward/output`` drop (Local, no local endpoint) or reject (no endpoint at all:
  TCP reset, ICMP port unreachable) through ``noendpoints4/6``. When the node's address is
  known, VIP traffic for a Service without any endpoint is instead DNATed to the node
  (``reject-local4/6``, marked) and rejected in ``filter-input``: forwarded, it would first
  draw an ICMP redirect to an on-link client, which uses up that client's ICMP rate-limit
  token, and the port-unreachable would never be sent.

Endpoint selection is kube-proxy v1.34's ``CategorizeEndpoints`` (pkg/proxy/topology.go). Like
kube-proxy, ``trafficDistribution`` acts only through the hints the EndpointSlice controller
writes for it (``forZones`` for PreferClose/PreferSameZone, also ``forNodes`` for
PreferSameNode); the field itself is carried for status, not read here.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from . import nftnames as N
from .model import (
    LOCAL,
    PREFER_SAME_NODE,
    PREFER_SAME_ZONE,
    PROTOCOLS,
    Endpoint,
    LBService,
    NodeInfo,
    NodeRulesError,
    ServicePort,
)

Json = dict[str, Any]


# ==============================================================================================
# endpoint selection (kube-proxy v1.34 pkg/proxy/topology.go, CategorizeEndpoints)
# ==============================================================================================
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


# ==============================================================================================
# names
# ==============================================================================================
def object_name(prefix: str, readable: str) -> str:
    """kube-proxy's hashAndTruncate: a hash keeps names unique when truncated and tells apart
    names that differ by one digit."""
    digest = base64.b32encode(hashlib.sha256(readable.encode()).digest()).decode()[:8]
    name = f"{digest}-{readable}"
    if len(name) > N.NAME_BASE_MAX:
        name = name[: N.NAME_BASE_MAX - 3] + "..."
    return prefix + name


def _port_label(svc: LBService, port: ServicePort, family: int) -> str:
    return f"v{family}/{svc.namespace}/{svc.name}/{port.protocol.lower()}/{port.name or port.port}"


def service_chain(svc: LBService, port: ServicePort, family: int) -> str:
    return object_name(N.SERVICE_CHAIN_PREFIX, _port_label(svc, port, family))


def _ep_label(svc: LBService, port: ServicePort, ep: Endpoint, target: int) -> str:
    addr = ep.address.replace(":", ".")
    return f"{_port_label(svc, port, ep.family)}__{addr}/{target}"


def endpoint_chain(svc: LBService, port: ServicePort, ep: Endpoint, target: int) -> str:
    return object_name(N.ENDPOINT_CHAIN_PREFIX, _ep_label(svc, port, ep, target))


def affinity_set(svc: LBService, port: ServicePort, ep: Endpoint, target: int, t: int) -> str:
    # The timeout is part of the name: a set's timeout cannot be changed in place, so a new
    # timeout is a new set (and the old pins go, as they would with kube-proxy).
    return object_name(N.AFFINITY_SET_PREFIX, f"{_ep_label(svc, port, ep, target)}/{t}s")


def firewall_chain(svc: LBService) -> str:
    return object_name(N.FIREWALL_CHAIN_PREFIX, f"{svc.namespace}/{svc.name}")


# ==============================================================================================
# expressions, in the exact form the kernel lists them back (so a listing compares equal)
# ==============================================================================================
def _payload(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _jump(target: str) -> Json:
    return {"jump": {"target": target}}


def _goto(target: str) -> Json:
    return {"goto": {"target": target}}


DROP: Json = {"drop": None}
CT_NEW = _match({"ct": {"key": "state"}}, "new", "in")


def _dispatch_key(family: int) -> Json:
    return {
        "concat": [
            _payload(N.IP_PROTO[family], "daddr"),
            _meta("l4proto"),
            _payload("th", "dport"),
        ]
    }


def _nodeport_match(family: int) -> list[Json]:
    loopback = {"prefix": {"addr": "127.0.0.0", "len": 8}} if family == 4 else "::1"
    return [
        _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        _match(_payload(N.IP_PROTO[family], "daddr"), loopback, "!="),
    ]


def _nodeport_key() -> Json:
    return {"concat": [_meta("l4proto"), _payload("th", "dport")]}


def _addr_or_prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set_or_single(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _vip_key(vip: str, port: ServicePort) -> Json:
    return {"concat": [vip, port.protocol.lower(), port.port]}


def _nodeport_elem_key(port: ServicePort) -> Json:
    return {"concat": [port.protocol.lower(), port.node_port]}


# ==============================================================================================
# the builder
# ==============================================================================================
@dataclass
class _Table:
    chains: dict[str, Json] = field(default_factory=dict)
    rules: dict[str, list[list[Json]]] = field(default_factory=dict)
    maps: dict[str, Json] = field(default_factory=dict)
    elements: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)
    sets: dict[str, Json] = field(default_factory=dict)

    def chain(self, name: str, **base: Any) -> None:
        if name not in self.chains:
            self.chains[name] = {"name": name, **base}
            self.rules[name] = []

    def rule(self, chain: str, *expr: Json) -> None:
        self.rules[chain].append(list(expr))

    def map(self, name: str, key_type: list[str] | str, value: str = "verdict") -> None:
        self.maps[name] = {"name": name, "type": key_type, "map": value}
        self.elements[name] = {}

    def element(self, mapname: str, key: Any, value: Any) -> None:
        self.elements[mapname][_canon(key)] = (key, value)

    def doc(self) -> Json:
        t = {"family": N.FAMILY, "name": N.TABLE}
        where = {"family": N.FAMILY, "table": N.TABLE}
        cmds: list[Json] = [{"add": {"table": t}}]
        cmds += [{"add": {"set": {**where, **s}}} for s in self.sets.values()]
        cmds += [{"add": {"map": {**where, **m}}} for m in self.maps.values()]
        cmds += [{"add": {"chain": {**where, **c}}} for c in self.chains.values()]
        for name, elems in self.elements.items():
            if elems:
                items = [[k, v] for k, v in elems.values()]
                cmds.append({"add": {"element": {**where, "name": name, "elem": items}}})
        for chain, rules in self.rules.items():
            for expr in rules:
                cmds.append({"add": {"rule": {**where, "chain": chain, "expr": expr}}})
        return {"nftables": cmds}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _node_ip(node: NodeInfo, family: int) -> str | None:
    for a in node.ips:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise NodeRulesError(f"node {node.name}: {a!r} is not an IP address") from None
        if ip.version == family:
            return str(ip)
    return None


def _fixed(t: _Table, node: NodeInfo) -> None:
    for name, typ, hook, prio in N.BASE_CHAINS:
        t.chain(name, type=typ, hook=hook, prio=prio, policy="accept")
    for name in (
        N.SERVICES,
        N.FIREWALL_CHECK,
        N.ENDPOINTS_CHECK,
        N.REJECT,
        N.MARK_MASQ,
        N.MASQUERADING,
        N.SLOT_RESTORE,
    ):
        t.chain(name)
    for fam in (4, 6):
        addr = [N.ADDR_TYPE[fam], "inet_proto", "inet_service"]
        for m in (N.VIPS, N.FIREWALL, N.NO_ENDPOINTS):
            t.map(m[fam], addr)
        for m in (N.NODEPORTS, N.NO_ENDPOINT_NODEPORTS):
            t.map(m[fam], ["inet_proto", "inet_service"])
        np_key = ["inet_proto", "inet_service"]
        t.map(N.ENDPOINT_COUNTS[fam], addr, "mark")
        t.map(N.NODEPORT_ENDPOINT_COUNTS[fam], np_key, "mark")
        t.map(N.PICKS[fam], "mark")
        t.map(N.NODEPORT_PICKS[fam], "mark")
        t.map(N.ENDPOINT_ADDRS[fam], [*addr, "mark"], N.ADDR_TYPE[fam])
        t.map(N.ENDPOINT_PORTS[fam], [*addr, "mark"], "inet_service")
        t.map(N.NODEPORT_ENDPOINT_ADDRS[fam], [*np_key, "mark"], N.ADDR_TYPE[fam])
        t.map(N.NODEPORT_ENDPOINT_PORTS[fam], [*np_key, "mark"], "inet_service")
        t.map(N.REMOTE_ENDPOINTS[fam], N.ADDR_TYPE[fam], "mark")
        t.map(N.HAIRPIN[fam], [N.ADDR_TYPE[fam], N.ADDR_TYPE[fam]], "mark")

    mark = _meta("mark")
    local_ips = {fam: _node_ip(node, fam) for fam in (4, 6)}
    for fam, ip in local_ips.items():
        if ip is not None:
            t.map(N.REJECT_LOCAL[fam], [N.ADDR_TYPE[fam], "inet_proto", "inet_service"])
            t.chain(N.REJECT_DNAT[fam])
    t.rule(N.FILTER_PREROUTING, CT_NEW, _jump(N.FIREWALL_CHECK))
    if any(local_ips.values()):
        t.rule(N.FILTER_INPUT, _match({"&": [mark, N.REJECT_MARK]}, 0, "!="), _goto(N.REJECT))
    t.rule(N.FILTER_INPUT, CT_NEW, _jump(N.ENDPOINTS_CHECK))
    t.rule(N.FILTER_FORWARD, CT_NEW, _jump(N.ENDPOINTS_CHECK))
    t.rule(N.FILTER_OUTPUT, CT_NEW, _jump(N.ENDPOINTS_CHECK))
    t.rule(N.FILTER_OUTPUT, CT_NEW, _jump(N.FIREWALL_CHECK))
    for fam, ip in local_ips.items():
        if ip is not None:
            key = {"vmap": {"key": _dispatch_key(fam), "data": "@" + N.REJECT_LOCAL[fam]}}
            t.rule(N.NAT_PREROUTING, key)
            t.rule(
                N.REJECT_DNAT[fam],
                {"mangle": {"key": mark, "value": {"|": [mark, N.REJECT_MARK]}}},
                {"dnat": {"family": N.IP_PROTO[fam], "addr": ip}},
            )
    t.rule(N.NAT_PREROUTING, _jump(N.SERVICES))
    t.rule(N.NAT_OUTPUT, _jump(N.SERVICES))
    t.rule(N.NAT_POSTROUTING, _jump(N.MASQUERADING))
    ct_mark = {"ct": {"key": "mark"}}
    for fam in (4, 6):
        # ClientIP-affinity Service ports: their own chains; all others: N endpoints -> pick-N
        # (the packet mark saved in the conntrack mark first, see N.SLOT_BASE).
        for key, vmap, counts, picks, match in (
            (_dispatch_key(fam), N.VIPS, N.ENDPOINT_COUNTS, N.PICKS, []),
            (
                _nodeport_key(),
                N.NODEPORTS,
                N.NODEPORT_ENDPOINT_COUNTS,
                N.NODEPORT_PICKS,
                _nodeport_match(fam),
            ),
        ):
            t.rule(N.SERVICES, *match, {"vmap": {"key": key, "data": "@" + vmap[fam]}})
            t.rule(
                N.SERVICES,
                *match,
                _match(key, "@" + counts[fam]),
                {"mangle": {"key": ct_mark, "value": mark}},
                {
                    "mangle": {
                        "key": mark,
                        "value": {"map": {"key": key, "data": "@" + counts[fam]}},
                    }
                },
                {"vmap": {"key": mark, "data": "@" + picks[fam]}},
            )
        t.rule(
            N.FIREWALL_CHECK, {"vmap": {"key": _dispatch_key(fam), "data": "@" + N.FIREWALL[fam]}}
        )
        t.rule(
            N.ENDPOINTS_CHECK,
            {"vmap": {"key": _dispatch_key(fam), "data": "@" + N.NO_ENDPOINTS[fam]}},
        )
        t.rule(
            N.ENDPOINTS_CHECK,
            *_nodeport_match(fam),
            {"vmap": {"key": _nodeport_key(), "data": "@" + N.NO_ENDPOINT_NODEPORTS[fam]}},
        )
    t.rule(N.REJECT, _match(_meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}})
    t.rule(N.REJECT, {"reject": {"type": "icmpx", "expr": "port-unreachable"}})
    t.rule(N.MARK_MASQ, {"mangle": {"key": mark, "value": {"|": [mark, N.MASQ_MARK]}}})
    t.rule(N.MASQUERADING, _match({"&": [mark, N.MASQ_MARK]}, 0), {"return": None})
    t.rule(N.MASQUERADING, {"mangle": {"key": mark, "value": {"^": [mark, N.MASQ_MARK]}}})
    t.rule(N.MASQUERADING, {"masquerade": {"flags": "fully-random"}})
    for chain in (N.SLOT_PREROUTING, N.SLOT_OUTPUT):
        t.rule(
            chain,
            _match(mark, {"prefix": {"addr": N.SLOT_BASE, "len": N.SLOT_PREFIX_LEN}}),
            _goto(N.SLOT_RESTORE),
        )
    t.rule(
        N.SLOT_RESTORE,
        {"mangle": {"key": mark, "value": ct_mark}},
        {"mangle": {"key": ct_mark, "value": 0}},
    )
    for fam in (4, 6):
        ipx = N.IP_PROTO[fam]
        daddr = _payload(ipx, "daddr")
        t.rule(N.SLOT_RESTORE, _match(daddr, "@" + N.REMOTE_ENDPOINTS[fam]), _jump(N.MARK_MASQ))
        pair = {"concat": [_payload(ipx, "saddr"), daddr]}
        t.rule(N.SLOT_RESTORE, _match(pair, "@" + N.HAIRPIN[fam]), _jump(N.MARK_MASQ))
        for count in range(1, N.PICKS_ALWAYS + 1):
            for nodeport in (False, True):
                _pick_chain(t, fam, count, nodeport=nodeport, fixed=True)


def _pick_chain(t: _Table, family: int, count: int, *, nodeport: bool, fixed: bool = False) -> None:
    """The shared chain that sends a new connection to one of ``count`` endpoint slots, and its
    element in the picks map (``fixed``: the fixed part's, for 1..PICKS_ALWAYS)."""
    prefix = N.NODEPORT_PICK_PREFIX if nodeport else N.PICK_PREFIX
    name = f"{prefix}{family}-{count}"
    if name in t.chains or (count <= N.PICKS_ALWAYS and not fixed):
        return  # made already, or one of the fixed part's (which a Service's fragment lacks)
    t.chain(name)
    picks = N.NODEPORT_PICKS[family] if nodeport else N.PICKS[family]
    t.element(picks, count, _goto(name))
    mark = _meta("mark")
    ipx = N.IP_PROTO[family]
    if nodeport:
        key: Json = {"concat": [_meta("l4proto"), _payload("th", "dport"), mark]}
        addrs, ports = N.NODEPORT_ENDPOINT_ADDRS[family], N.NODEPORT_ENDPOINT_PORTS[family]
    else:
        key = {"concat": [*_dispatch_key(family)["concat"], mark]}
        addrs, ports = N.ENDPOINT_ADDRS[family], N.ENDPOINT_PORTS[family]
    slot = {"numgen": {"mode": "random", "mod": count, "offset": N.SLOT_BASE}}
    t.rule(
        name,
        {"mangle": {"key": mark, "value": slot}},
        {
            "dnat": {
                "family": ipx,
                "addr": {"map": {"key": key, "data": "@" + addrs}},
                "port": {"map": {"key": key, "data": "@" + ports}},
            }
        },
    )


def check_service(svc: LBService) -> tuple[dict[int, list[str]], dict[int, list[Any]]]:
    vips: dict[int, list[str]] = {4: [], 6: []}
    for v in svc.vips:
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise NodeRulesError(f"{svc.key}: VIP {v!r} is not an IP address") from None
        vips[ip.version].append(str(ip))
    for p in svc.ports:
        if p.protocol not in PROTOCOLS:
            raise NodeRulesError(f"{svc.key}: protocol {p.protocol!r} (want TCP, UDP or SCTP)")
        if not 0 < p.port < 65536:
            raise NodeRulesError(f"{svc.key}: port {p.port} out of range")
    for e in svc.endpoints:
        try:
            ipaddress.ip_address(e.address)
        except ValueError:
            raise NodeRulesError(f"{svc.key}: endpoint {e.address!r} is not an IP") from None
    ranges: dict[int, list[Any]] = {4: [], 6: []}
    nets = []
    for r in svc.source_ranges:
        try:
            nets.append(ipaddress.ip_network(r.strip(), strict=False))
        except ValueError:
            raise NodeRulesError(f"{svc.key}: source range {r!r} is not a CIDR") from None
    for fam in (4, 6):
        same = [n for n in nets if n.version == fam]
        ranges[fam] = [_addr_or_prefix(n) for n in ipaddress.collapse_addresses(same)]  # type: ignore[type-var,arg-type]
    return vips, ranges


def _firewall(
    t: _Table,
    svc: LBService,
    ranges: dict[int, list[Any]],
    vips: dict[int, list[str]],
    node: NodeInfo,
) -> str:
    name = firewall_chain(svc)
    t.chain(name)
    node_ips = [ipaddress.ip_address(a) for a in node.ips]
    for fam in (4, 6):
        if not vips[fam]:
            continue
        allowed = list(ranges[fam])
        nets = [ipaddress.ip_network(r, strict=False) for r in svc.source_ranges]
        # kube-proxy: when a range holds this node's IP, a request from the node to the VIP may
        # loop back with the VIP as source; allow it too.
        if any(ip in n for ip in node_ips for n in nets if n.version == ip.version == fam):
            same = [n for n in nets if n.version == fam]
            allowed += [v for v in vips[fam] if not any(ipaddress.ip_address(v) in n for n in same)]
        if not allowed:
            t.rule(name, _match(_meta("nfproto"), N.NFPROTO[fam]), DROP)
            continue
        saddr = _payload(N.IP_PROTO[fam], "saddr")
        t.rule(name, _match(saddr, _set_or_single(_sorted_values(allowed)), "!="), DROP)
    return name


def _sorted_values(values: list[Any]) -> list[Any]:
    def key(v: Any) -> Any:
        addr = v["prefix"]["addr"] if isinstance(v, dict) else v
        return ipaddress.ip_address(addr)

    return sorted(values, key=key)


def _port_selection(
    svc: LBService, port: ServicePort, family: int, node: NodeInfo
) -> tuple[Selection, dict[Endpoint, int]]:
    """The endpoints this node sends the Service port's traffic of one family to, and the port
    each is DNATed to (endpoints that do not serve the port are left out)."""
    candidates = []
    targets: dict[Endpoint, int] = {}
    for e in svc.endpoints:
        if e.family != family:
            continue
        target = endpoint_port(e, port)
        if target is None:
            continue
        candidates.append(e)
        targets[e] = target
    return select_endpoints(candidates, svc.external_traffic_policy, node), targets


def _affinity_chains(
    t: _Table,
    svc: LBService,
    port: ServicePort,
    family: int,
    node: NodeInfo,
    sel: Selection,
    targets: Mapping[Endpoint, int],
) -> str:
    """A ClientIP-affinity Service port's chains (kube-proxy's layout: the pins are per
    endpoint); returns the chain to send its traffic to."""
    chain = service_chain(svc, port, family)
    t.chain(chain)
    ipx = N.IP_PROTO[family]
    saddr = _payload(ipx, "saddr")
    timeout = svc.affinity_timeout
    ep_chains = []
    for e in sel.endpoints:
        target = targets[e]
        ep_chain = endpoint_chain(svc, port, e, target)
        ep_chains.append(ep_chain)
        t.chain(ep_chain)
        if svc.external_traffic_policy != LOCAL and e.node != node.name:
            t.rule(ep_chain, _jump(N.MARK_MASQ))  # the endpoint is on another node
        else:
            t.rule(ep_chain, _match(saddr, e.address), _jump(N.MARK_MASQ))  # hairpin
        if timeout is not None:
            aff = affinity_set(svc, port, e, target, timeout)
            t.sets[aff] = {
                "name": aff,
                "type": N.ADDR_TYPE[family],
                "flags": ["timeout"],
                "timeout": timeout,
            }
            t.rule(ep_chain, {"set": {"op": "update", "elem": saddr, "set": "@" + aff}})
            t.rule(chain, _match(saddr, "@" + aff), _goto(ep_chain))
        t.rule(
            ep_chain,
            _match(_meta("l4proto"), port.protocol.lower()),
            {"dnat": {"family": ipx, "addr": e.address, "port": target}},
        )
    # kube-proxy's iptables way, exactly uniform: endpoint i of N is taken with probability
    # 1/(N-i) among those left. (A numgen vmap, kube-proxy's nftables way, creates an anonymous
    # set per Service, and the kernel allocates anonymous set names by scanning every set of
    # the table: loading 10,000 Services took 19 s that way, 1.7 s this way.)
    for i, ep_chain in enumerate(ep_chains[:-1]):
        left = len(ep_chains) - i
        numgen = {"numgen": {"mode": "random", "mod": left, "offset": 0}}
        t.rule(chain, _match(numgen, 0), _goto(ep_chain))
    t.rule(chain, _goto(ep_chains[-1]))
    return chain


def _flat_port(
    t: _Table,
    svc: LBService,
    family: int,
    node: NodeInfo,
    sel: Selection,
    targets: Mapping[Endpoint, int],
    keys: list[Json],
    np_key: Json | None,
) -> None:
    """A Service port's endpoints in the flat maps, for its VIP keys and its nodePort key: the
    count (which picks the chain) and a slot per endpoint, 0..N-1 in address order."""
    count = len(sel.endpoints)
    addrs = [(str(ipaddress.ip_address(e.address)), targets[e]) for e in sel.endpoints]
    slots = [N.SLOT_BASE + i for i in range(count)]
    dispatch = [(N.ENDPOINT_COUNTS, N.ENDPOINT_ADDRS, N.ENDPOINT_PORTS, k) for k in keys]
    if np_key is not None:
        maps = (N.NODEPORT_ENDPOINT_COUNTS, N.NODEPORT_ENDPOINT_ADDRS, N.NODEPORT_ENDPOINT_PORTS)
        dispatch.append((*maps, np_key))
    for counts, addr_map, port_map, key in dispatch:
        t.element(counts[family], key, count)
        for slot, (addr, target) in zip(slots, addrs, strict=True):
            slot_key = {"concat": [*key["concat"], slot]}
            t.element(addr_map[family], slot_key, addr)
            t.element(port_map[family], slot_key, target)
    if keys:
        _pick_chain(t, family, count, nodeport=False)
    if np_key is not None:
        _pick_chain(t, family, count, nodeport=True)
    # Decided by the endpoint's address after DNAT: a pod IP is on one node. (Should stale
    # slices name one IP on two nodes, it is in both maps, masqueraded, until they agree.)
    for e, (addr, _) in zip(sel.endpoints, addrs, strict=True):
        if svc.external_traffic_policy != LOCAL and e.node != node.name:
            t.element(N.REMOTE_ENDPOINTS[family], addr, N.IN_SET)  # on another node
        else:
            t.element(N.HAIRPIN[family], {"concat": [addr, addr]}, N.IN_SET)  # itself


def render_node_rules(services: Iterable[LBService], node: NodeInfo) -> Json:
    """The whole of Portico's table for ``node``, as one libnftables JSON document of ``add``
    commands (table, sets, maps, chains, elements, rules, in that order).

    Services are taken in (namespace, name) order; should two claim the same
    ``VIP . protocol . port`` (which the operator's address sharing rules out), the first keeps
    it. Raises NodeRulesError for input that cannot be rendered."""
    t = _Table()
    _fixed(t, node)
    claimed: set[str] = set()  # "VIP . proto . port" and "family . proto . nodePort" taken
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        _render_service(t, svc, node, claimed)
    return t.doc()


def _render_service(t: _Table, svc: LBService, node: NodeInfo, claimed: set[str]) -> None:
    """One Service's chains, sets and map elements into ``t``; what it takes goes into
    ``claimed`` (and what is claimed already it leaves to its holder)."""
    vips, ranges = check_service(svc)
    fw = firewall_chain(svc) if svc.source_ranges else None
    for port in svc.ports:
        for fam in (4, 6):
            if not vips[fam]:
                continue
            keys = [_vip_key(vip, port) for vip in vips[fam]]
            keys = [k for k in keys if _canon(k) not in claimed]
            claimed.update(_canon(k) for k in keys)
            np_key = None
            if svc.forwarding_mode == "NAT" and port.node_port:
                np_key = _nodeport_elem_key(port)
                if f"{fam}{_canon(np_key)}" in claimed:
                    np_key = None
                else:
                    claimed.add(f"{fam}{_canon(np_key)}")
            if not keys and np_key is None:
                continue  # another Service holds these addresses: nothing of this one
            if fw is not None:
                if keys and fw not in t.chains:
                    _firewall(t, svc, ranges, vips, node)
                for key in keys:
                    t.element(N.FIREWALL[fam], key, _goto(fw))
            sel, targets = _port_selection(svc, port, fam, node)
            if sel.endpoints and svc.affinity_timeout is None:
                _flat_port(t, svc, fam, node, sel, targets, keys, np_key)
                continue
            if sel.endpoints:
                verdict = _goto(_affinity_chains(t, svc, port, fam, node, sel, targets))
                dispatch, np_map = N.VIPS[fam], N.NODEPORTS[fam]
            else:
                verdict = DROP if sel.has_any else _goto(N.REJECT)
                dispatch, np_map = N.NO_ENDPOINTS[fam], N.NO_ENDPOINT_NODEPORTS[fam]
            for key in keys:
                t.element(dispatch, key, verdict)
                if not sel.endpoints and not sel.has_any and N.REJECT_LOCAL[fam] in t.maps:
                    t.element(N.REJECT_LOCAL[fam], key, _goto(N.REJECT_DNAT[fam]))
            if np_key is not None:
                t.element(np_map, np_key, verdict)


@dataclass
class _Fragment:
    """One Service's part of a render, in index form (the JSON it was made from is not kept:
    only a full replace needs a document, which ``document_of`` makes from the index)."""

    index: RulesIndex
    claims: frozenset[str]


# Maps whose elements several Services may put in (an endpoint address, an endpoint count):
# counted, so that one Service leaving does not take them from the others. Every other element
# is keyed by a claimed VIP port or nodePort, and so has one owner.
_SHARED_MAPS = frozenset(
    m[f] for m in (N.REMOTE_ENDPOINTS, N.HAIRPIN, N.PICKS, N.NODEPORT_PICKS) for f in (4, 6)
)


@dataclass
class Touched:
    """What may differ between two renders (so a diff need not compare the rest): chains
    (with their rules), sets, and elements by map."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    elements: dict[str, set[str]] = field(default_factory=dict)  # map -> canonical keys


@dataclass(frozen=True)
class Render:
    """One render of a node's table: its index; how to build the whole document (only a full
    replace needs it); and, when it was made from the renderer's previous render, that render's
    index and what may differ from it, so ``diff_rules(base, index, touched)`` costs the change,
    not the table. Indexes are never modified once returned."""

    index: RulesIndex
    document: Callable[[], Json]
    base: RulesIndex | None = None
    touched: Touched | None = None


def _by_name(svc: LBService) -> tuple[str, str]:
    return (svc.namespace, svc.name)


class NodeRenderer:
    """``render_node_rules`` and ``index_rules`` of its result, for an agent that renders after
    every change: each Service's part is rendered and indexed once and reused until that Service
    (or the node) changes, and the table's index is updated by the parts that changed, so a
    change costs the changed Services, not every Service. The result is the same as the full
    render's (tests compare them); when two Services claim one address it falls back to the
    full render, whose order decides. Services are told apart by key and compared by identity
    first: a caller that keeps unchanged Services as the same objects pays nothing for them."""

    def __init__(self) -> None:
        self._node: NodeInfo | None = None
        self._fixed = _Table()
        self._fixed_index = RulesIndex()
        self._parts: dict[str, tuple[LBService, _Fragment]] = {}  # by Service key
        self._index: RulesIndex | None = None  # the last render's, when built from the parts
        self._claims: dict[str, str] = {}  # VIP port / nodePort claimed -> Service key
        self._refs: dict[tuple[str, str], int] = {}  # chains, sets, shared elements -> parts

    def render(self, services: Iterable[LBService], node: NodeInfo) -> Render:
        services = list(services)
        if node != self._node:
            self._node, self._fixed = node, _Table()
            _fixed(self._fixed, node)
            self._fixed_index = _index_of(self._fixed)
            self._parts, self._index = {}, None
        live = {s.key: s for s in services}
        gone = [k for k in self._parts if k not in live]
        parts = self._parts
        changed = {
            k: (s, self._fragment(s))
            for k, s in live.items()
            if (part := parts.get(k)) is None or part[0] is not s
        }
        base, touched = self._index, Touched()
        if base is not None and self._move_claims(gone, changed):
            index: RulesIndex | None = self._update(base, gone, changed, touched)
        else:
            for k in gone:
                del self._parts[k]
            self._parts.update(changed)
            base, index = None, self._rebuild(sorted(services, key=_by_name))
        self._index = index
        if index is None:  # two Services claim one address: the full render decides
            full = render_node_rules(services, node)
            return Render(index_rules(full), lambda: full)
        return Render(
            index, lambda: document_of(index), base, touched if base is not None else None
        )

    def _fragment(self, svc: LBService) -> _Fragment:
        part = self._parts.get(svc.key)
        if part is not None and part[0] == svc:
            return part[1]
        assert self._node is not None
        t = _Table()
        # The fixed maps exist (elements go into them); nothing else of the fixed part.
        for name, m in self._fixed.maps.items():
            t.maps[name] = m
            t.elements[name] = {}
        claimed: set[str] = set()
        _render_service(t, svc, self._node, claimed)
        return _Fragment(_index_of(t, maps=False), frozenset(claimed))

    def _move_claims(
        self, gone: list[str], changed: Mapping[str, tuple[LBService, _Fragment]]
    ) -> bool:
        """Releases the claims of the parts that go or change and takes the new parts' claims;
        False (and nothing changed) when one is held by another Service."""
        claims = dict(self._claims)
        for k in [*gone, *(k for k in changed if k in self._parts)]:
            for c in self._parts[k][1].claims:
                del claims[c]
        for k, (_, frag) in changed.items():
            for c in frag.claims:
                if claims.setdefault(c, k) != k:
                    return False
        self._claims = claims
        return True

    def _rebuild(self, ordered: list[LBService]) -> RulesIndex | None:
        """The index from every part; None when two claim one address."""
        claims: dict[str, str] = {}
        self._refs = {}
        frags = [self._parts[s.key][1] for s in ordered]
        for svc, frag in zip(ordered, frags, strict=True):
            for c in frag.claims:
                if claims.setdefault(c, svc.key) != svc.key:
                    self._claims = {}
                    return None
            for key in self._counted(frag.index):
                self._refs[key] = self._refs.get(key, 0) + 1
        self._claims = claims
        return _combined(self._fixed_index, [f.index for f in frags])

    @staticmethod
    def _counted(part: RulesIndex) -> Iterable[tuple[str, str]]:
        yield from ((":chain", c) for c in part.chains)
        yield from ((":set", st) for st in part.sets)
        for m in _SHARED_MAPS:
            yield from ((m, k) for k in part.elements.get(m, ()))

    def _update(
        self,
        base: RulesIndex,
        gone: list[str],
        changed: Mapping[str, tuple[LBService, _Fragment]],
        touched: Touched,
    ) -> RulesIndex:
        """A new index: ``base`` less the parts that go or change, plus the changed ones.
        Copies only what it modifies (``base`` is the index in force: never modified)."""
        idx = replace(
            base,
            chains=dict(base.chains),
            rules=dict(base.rules),
            elements=dict(base.elements),
            sets=dict(base.sets),
        )
        copied: set[str] = set()

        def elements(m: str) -> dict[str, str]:
            touched.elements.setdefault(m, set())
            if m not in copied:
                idx.elements[m] = dict(idx.elements[m])
                copied.add(m)
            return idx.elements[m]

        for k in [*gone, *(k for k in changed if k in self._parts)]:
            part = self._parts.pop(k)[1].index
            for c in part.chains:
                if self._unref((":chain", c)):
                    del idx.chains[c], idx.rules[c]
                    touched.chains.add(c)
            for st in part.sets:
                if self._unref((":set", st)):
                    del idx.sets[st]
                    touched.sets.add(st)
            for m, elems in part.elements.items():
                shared = m in _SHARED_MAPS
                for key in elems:
                    if not shared or self._unref((m, key)):
                        del elements(m)[key]
                        touched.elements[m].add(key)
        for k, (svc, frag) in changed.items():
            part = frag.index
            for c in part.chains:
                if self._ref((":chain", c)):
                    idx.chains[c], idx.rules[c] = part.chains[c], part.rules[c]
                    touched.chains.add(c)
            for st in part.sets:
                if self._ref((":set", st)):
                    idx.sets[st] = part.sets[st]
                    touched.sets.add(st)
            for m, elems in part.elements.items():
                shared = m in _SHARED_MAPS
                for key, value in elems.items():
                    if not shared or self._ref((m, key)):
                        elements(m)[key] = value
                        touched.elements[m].add(key)
            self._parts[k] = (svc, frag)
        return idx

    def _ref(self, key: tuple[str, str]) -> bool:
        """Counts one more holder; True for the first."""
        n = self._refs.get(key, 0)
        self._refs[key] = n + 1
        return n == 0

    def _unref(self, key: tuple[str, str]) -> bool:
        """Counts one holder less; True when it was the last."""
        n = self._refs[key] - 1
        if n:
            self._refs[key] = n
        else:
            del self._refs[key]
        return n == 0


# ==============================================================================================
# reading a render or a kernel listing back, comparing, diffing
# ==============================================================================================
@dataclass
class RulesIndex:
    """What a table holds, in comparable form: a render's ``add`` commands and the kernel's
    ``nft -j list table`` both read into this."""

    table: bool = False
    chains: dict[str, Json] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> canonical exprs
    maps: dict[str, Json] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # map -> key -> value
    sets: dict[str, Json] = field(default_factory=dict)

    def same_as(self, other: RulesIndex) -> bool:
        return (
            self.table == other.table
            and self.chains == other.chains
            and self.rules == other.rules
            and self.maps == other.maps
            and self.elements == other.elements
            and self.sets == other.sets
        )

    def differences(self, other: RulesIndex, limit: int = 10) -> list[str]:
        """What differs from ``other``, briefly (for logs and test failures)."""
        out: list[str] = []
        if self.table != other.table:
            out.append(f"table present: {self.table} vs {other.table}")
        for what in ("chains", "rules", "maps", "elements", "sets"):
            mine, theirs = getattr(self, what), getattr(other, what)
            for name in sorted(set(mine) | set(theirs)):
                if mine.get(name) != theirs.get(name):
                    out.append(f"{what} {name}: {mine.get(name)} vs {theirs.get(name)}")
        return out[:limit]

    def counts(self) -> dict[str, int]:
        return {
            "chains": len(self.chains),
            "rules": sum(len(r) for r in self.rules.values()),
            "maps": len(self.maps),
            "elements": sum(len(e) for e in self.elements.values()),
            "sets": len(self.sets),
        }


_CHAIN_KEYS = ("name", "type", "hook", "prio", "policy")


def index_rules(doc: Mapping[str, Any]) -> RulesIndex:
    """Reads a render (``add`` commands) or a kernel listing of Portico's table. Objects of other
    tables are ignored; handles, sizes and dynamic set contents are not part of the content."""
    idx = RulesIndex()
    for item in doc.get("nftables") or []:
        if "add" in item:
            item = item["add"]
        (kind, obj), *_ = item.items()
        if not isinstance(obj, Mapping) or kind == "metainfo":
            continue
        if obj.get("family") != N.FAMILY or obj.get("table", obj.get("name")) != N.TABLE:
            continue
        if kind == "table":
            idx.table = True
        elif kind == "chain":
            idx.chains[obj["name"]] = {k: obj[k] for k in _CHAIN_KEYS if k in obj}
            idx.rules.setdefault(obj["name"], [])
        elif kind == "rule":
            idx.rules.setdefault(obj["chain"], []).append(_canon(obj["expr"]))
        elif kind == "map":
            idx.maps[obj["name"]] = {"name": obj["name"], "type": obj["type"], "map": obj["map"]}
            elems = idx.elements.setdefault(obj["name"], {})
            for k, v in obj.get("elem") or []:
                elems[_canon(k)] = _canon(v)
        elif kind == "element":
            elems = idx.elements.setdefault(obj["name"], {})
            for k, v in obj.get("elem") or []:
                elems[_canon(k)] = _canon(v)
        elif kind == "set":
            idx.sets[obj["name"]] = {
                "name": obj["name"],
                "type": obj["type"],
                "flags": ["timeout"],
                "timeout": obj.get("timeout"),
            }
    return idx


_Part = TypeVar("_Part", "_Table", "RulesIndex")


def _combined(base: _Part, parts: Iterable[_Part]) -> _Part:
    """``base`` (the fixed part, left untouched) with every Service's part added: their chains,
    rules and sets are their own; their elements go into the fixed maps."""
    out = replace(
        base,
        chains=dict(base.chains),
        rules=dict(base.rules),  # lists are replaced, never appended to: no copy needed
        maps=dict(base.maps),
        elements={k: dict(v) for k, v in base.elements.items()},
        sets=dict(base.sets),
    )
    for part in parts:
        out.chains.update(part.chains)
        out.rules.update(part.rules)
        out.sets.update(part.sets)
        for name, elems in part.elements.items():
            if elems:
                out.elements[name].update(elems)
    return out


def _index_of(t: _Table, *, maps: bool = True) -> RulesIndex:
    """``index_rules(t.doc())``, straight from the table (``maps=False``: a fragment's elements
    only, the maps being the fixed part's)."""
    idx = RulesIndex(table=True)
    for name, c in t.chains.items():
        idx.chains[name] = {k: c[k] for k in _CHAIN_KEYS if k in c}
        idx.rules[name] = [_canon(expr) for expr in t.rules.get(name, [])]
    if maps:
        idx.maps = {
            n: {"name": m["name"], "type": m["type"], "map": m["map"]} for n, m in t.maps.items()
        }
    for name, elems in t.elements.items():
        idx.elements[name] = {_canon(k): _canon(v) for k, v in elems.values()}
    for name, st in t.sets.items():
        idx.sets[name] = {
            "name": st["name"],
            "type": st["type"],
            "flags": ["timeout"],
            "timeout": st.get("timeout"),
        }
    return idx


def document_of(idx: RulesIndex) -> Json:
    """The ``add`` commands that build the table ``idx`` describes (what ``diff_rules`` gives
    from nothing), in the order ``_Table.doc`` uses: table, sets, maps, chains, elements,
    rules."""
    return diff_rules(RulesIndex(), idx)


def _as_index(x: RulesIndex | Mapping[str, Any]) -> RulesIndex:
    return x if isinstance(x, RulesIndex) else index_rules(x)


def _restricted(idx: RulesIndex, touched: Touched) -> RulesIndex:
    """Only what ``touched`` names of ``idx`` (and all its maps' definitions)."""
    return RulesIndex(
        table=idx.table,
        chains={c: idx.chains[c] for c in touched.chains if c in idx.chains},
        rules={c: idx.rules[c] for c in touched.chains if c in idx.rules},
        maps=idx.maps,
        elements={
            m: {k: elems[k] for k in touched.elements.get(m, ()) if k in elems}
            for m, elems in idx.elements.items()
        },
        sets={st: idx.sets[st] for st in touched.sets if st in idx.sets},
    )


def diff_rules(
    old: RulesIndex | Mapping[str, Any],
    new: RulesIndex | Mapping[str, Any],
    touched: Touched | None = None,
) -> Json:
    """The libnftables JSON that turns table ``old`` (a render, or the kernel's listing) into
    ``new`` in one transaction, touching only what differs: map elements are added and deleted
    one by one, a chain whose rules changed is flushed and refilled, chains and sets that appear
    or go are added or deleted. Dynamic set contents (ClientIP affinity pins) are kept. An empty
    command list means the two are the same. With ``touched`` (a ``Render``'s, from its base),
    only what it names is compared: everything else must be the same in both.

    A fixed object whose definition changed (a base chain's hook or priority, a map's type) is
    deleted and added again; an old table missing entirely gives the full render."""
    o, n = _as_index(old), _as_index(new)
    if touched is not None:
        o, n = _restricted(o, touched), _restricted(n, touched)
    where = {"family": N.FAMILY, "table": N.TABLE}
    cmds: list[Json] = []
    if not n.table:
        if o.table:
            cmds.append({"delete": {"table": {"family": N.FAMILY, "name": N.TABLE}}})
        return {"nftables": cmds}
    if not o.table:
        o = RulesIndex()
        cmds.append({"add": {"table": {"family": N.FAMILY, "name": N.TABLE}}})

    redefined_chains = {c for c in n.chains if c in o.chains and o.chains[c] != n.chains[c]}
    redefined_maps = {m for m in n.maps if m in o.maps and o.maps[m] != n.maps[m]}
    redefined_sets = {s for s in n.sets if s in o.sets and o.sets[s] != n.sets[s]}
    gone_chains = [c for c in o.chains if c not in n.chains or c in redefined_chains]
    gone_maps = [m for m in o.maps if m not in n.maps or m in redefined_maps]
    gone_sets = [s for s in o.sets if s not in n.sets or s in redefined_sets]

    # 1. Empty what goes away or is redefined (nothing may refer to it when it is deleted).
    for c in gone_chains:
        if o.rules.get(c):
            cmds.append({"flush": {"chain": {**where, "name": c}}})
    changed = [
        c
        for c in n.chains
        if c in o.chains and c not in redefined_chains and o.rules.get(c) != n.rules.get(c)
    ]
    for c in changed:
        if o.rules.get(c):
            cmds.append({"flush": {"chain": {**where, "name": c}}})
    # 2. Elements that go or change value (a verdict cannot be replaced in place).
    for m, old_elems in o.elements.items():
        if m in gone_maps:
            continue
        new_elems = n.elements.get(m, {})
        drop = [k for k, v in old_elems.items() if new_elems.get(k) != v]
        if drop:
            keys = [json.loads(k) for k in sorted(drop)]
            cmds.append({"delete": {"element": {**where, "name": m, "elem": keys}}})
    # 3. Delete what is gone (after the flushes and element deletions that referred to it).
    cmds += [{"delete": {"chain": {**where, "name": c}}} for c in gone_chains]
    cmds += [{"delete": {"map": {**where, "name": m}}} for m in gone_maps]
    cmds += [{"delete": {"set": {**where, "name": s}}} for s in gone_sets]
    # 4. Add what is new, then fill.
    new_sets = [s for s in n.sets if s not in o.sets or s in redefined_sets]
    new_maps = [m for m in n.maps if m not in o.maps or m in redefined_maps]
    new_chains = [c for c in n.chains if c not in o.chains or c in redefined_chains]
    cmds += [{"add": {"set": {**where, **n.sets[s]}}} for s in new_sets]
    cmds += [{"add": {"map": {**where, **n.maps[m]}}} for m in new_maps]
    cmds += [{"add": {"chain": {**where, **n.chains[c]}}} for c in new_chains]
    for m, new_elems in n.elements.items():
        old_elems = {} if m in new_maps else o.elements.get(m, {})
        add = [k for k, v in new_elems.items() if old_elems.get(k) != v]
        if add:
            items = [[json.loads(k), json.loads(new_elems[k])] for k in sorted(add)]
            cmds.append({"add": {"element": {**where, "name": m, "elem": items}}})
    for c in [*changed, *new_chains]:
        for expr in n.rules.get(c, []):
            cmds.append({"add": {"rule": {**where, "chain": c, "expr": json.loads(expr)}}})
    return {"nftables": cmds}


def replace_table(doc: Mapping[str, Any]) -> Json:
    """One transaction that removes whatever the table holds and builds ``doc`` instead: the
    fallback when an incremental change fails. (``add`` first, so that ``delete`` never fails on
    a missing table.) Affinity pins are lost; established flows keep their conntrack NAT."""
    t = {"family": N.FAMILY, "name": N.TABLE}
    return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}, *doc["nftables"]]}


def delete_table() -> Json:
    t = {"family": N.FAMILY, "name": N.TABLE}
    return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}


# ==============================================================================================
# from plain JSON
# ==============================================================================================
def input_from_json(obj: Mapping[str, Any]) -> tuple[NodeInfo, tuple[LBService, ...]]:
    """The renderer's input from plain JSON (what a node agent is handed in a file):
    ``{"node": {"name", "zone", "ips"}, "services": [<entry>, ...]}``, each entry as a NodeRules
    object carries it (``portico_common.rulesdoc``). Raises NodeRulesError when malformed."""
    from .rulesdoc import service_from_entry

    try:
        n = obj["node"]
        node = NodeInfo(n["name"], n.get("zone"), tuple(n.get("ips") or ()))
        services = tuple(service_from_entry(s) for s in obj.get("services") or [])
    except (KeyError, TypeError, ValueError) as e:
        raise NodeRulesError(f"malformed node rules input: {type(e).__name__}: {e}") from None
    return node, services

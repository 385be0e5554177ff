"""A node's nftables rules for LoadBalancer Services, as data: pure functions, no I/O.

``render_node_rules(services, node)`` turns plain typed data about each Service (as one node
needs it) into the libnftables JSON that builds Portico's one table, ``inet portico``
(names in :mod:`portico_nodeagent.nftnames`). ``diff_rules(old, new)`` (in ``rulesdiff``) turns
two renders (or the kernel's own listing and a render) into the commands that change only what
differs: map elements, and the few per-Service chains whose rules changed.

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

Endpoint selection (``topology``) is kube-proxy v1.34's ``CategorizeEndpoints``
(pkg/proxy/topology.go). Like kube-proxy, ``trafficDistribution`` acts only through the hints
the EndpointSlice controller writes for it (``forZones`` for PreferClose/PreferSameZone, also
``forNodes`` for PreferSameNode); the field itself is carried for status, not read here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from portico_common.model import (
    CLUSTER,
    LOCAL,
    PROTOCOLS,
    Endpoint,
    LBService,
    NodeInfo,
    NodeRulesError,
    ServicePort,
)

from . import nftnames as N
from .ruleset import (
    CT_NEW,
    DROP,
    Json,
    Table,
    addr_or_prefix,
    affinity_set,
    canon,
    dispatch_key,
    endpoint_chain,
    firewall_chain,
    goto,
    internal_service_chain,
    jump,
    match,
    meta,
    nodeport_elem_key,
    nodeport_key,
    nodeport_match,
    payload,
    service_chain,
    set_or_single,
    vip_key,
)
from .topology import Selection, endpoint_port, select_endpoints


def _node_ip(node: NodeInfo, family: int) -> str | None:
    for a in node.ips:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise NodeRulesError(f"node {node.name}: {a!r} is not an IP address") from None
        if ip.version == family:
            return str(ip)
    return None


def _pod_nets(node: NodeInfo, family: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The node's pod CIDRs of ``family``, in order."""
    nets = [ipaddress.ip_network(c, strict=False) for c in node.pod_cidrs]
    return sorted(n for n in nets if n.version == family)  # type: ignore[type-var]


def render_fixed(t: Table, node: NodeInfo) -> None:
    for name, typ, hook, prio in N.BASE_CHAINS:
        t.chain(name, type=typ, hook=hook, prio=prio, policy="accept")
    for name in (
        N.SERVICES,
        N.INTERNAL,
        N.FIREWALL_CHECK,
        N.ENDPOINTS_CHECK,
        N.REJECT,
        N.MARK_MASQ,
        N.MASQUERADING,
        N.SLOT_RESTORE,
        N.INTERNAL_SLOT_RESTORE,
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
        t.map(N.INTERNAL_COUNTS[fam], addr, "mark")
        t.map(N.INTERNAL_VIPS[fam], addr)
        t.map(N.INTERNAL_PORTS[fam], addr, "mark")
        t.map(N.INTERNAL_PICKS[fam], "mark")
        t.map(N.ENDPOINT_ADDRS[fam], [*addr, "mark"], N.ADDR_TYPE[fam])
        t.map(N.ENDPOINT_PORTS[fam], [*addr, "mark"], "inet_service")
        t.map(N.NODEPORT_ENDPOINT_ADDRS[fam], [*np_key, "mark"], N.ADDR_TYPE[fam])
        t.map(N.NODEPORT_ENDPOINT_PORTS[fam], [*np_key, "mark"], "inet_service")
        t.map(N.REMOTE_ENDPOINTS[fam], N.ADDR_TYPE[fam], "mark")
        t.map(N.HAIRPIN[fam], [N.ADDR_TYPE[fam], N.ADDR_TYPE[fam]], "mark")

    mark = meta("mark")
    local_ips = {fam: _node_ip(node, fam) for fam in (4, 6)}
    for fam, ip in local_ips.items():
        if ip is not None:
            t.map(N.REJECT_LOCAL[fam], [N.ADDR_TYPE[fam], "inet_proto", "inet_service"])
            t.chain(N.REJECT_DNAT[fam])
    t.rule(N.FILTER_PREROUTING, CT_NEW, jump(N.FIREWALL_CHECK))
    if any(local_ips.values()):
        t.rule(N.FILTER_INPUT, match({"&": [mark, N.REJECT_MARK]}, 0, "!="), goto(N.REJECT))
    t.rule(N.FILTER_INPUT, CT_NEW, jump(N.ENDPOINTS_CHECK))
    t.rule(N.FILTER_FORWARD, CT_NEW, jump(N.ENDPOINTS_CHECK))
    # The host's own traffic: source ranges first (a client they leave out learns nothing, not
    # even that the Service has no endpoint), as for traffic that arrives. To a Local VIP it
    # takes the internal path (see N.INTERNAL), which DNATs after this chain: it must not be
    # dropped here for want of a local endpoint.
    t.rule(N.FILTER_OUTPUT, CT_NEW, jump(N.FIREWALL_CHECK))
    for fam in (4, 6):
        internal = match(dispatch_key(fam), "@" + N.INTERNAL_PORTS[fam])
        t.rule(N.FILTER_OUTPUT, CT_NEW, internal, {"accept": None})
    t.rule(N.FILTER_OUTPUT, CT_NEW, jump(N.ENDPOINTS_CHECK))
    for fam, ip in local_ips.items():
        if ip is not None:
            key = {"vmap": {"key": dispatch_key(fam), "data": "@" + N.REJECT_LOCAL[fam]}}
            # Not for this node's pods: for them the reject in filter-forward answers with the
            # VIP's address (no redirect arises: the VIP is not routed back to the pod), while
            # a reset sent from the node after this DNAT leaves a bridge port untranslated.
            pods = [
                match(payload(N.IP_PROTO[fam], "saddr"), addr_or_prefix(net), "!=")
                for net in _pod_nets(node, fam)
            ]
            t.rule(N.NAT_PREROUTING, *pods, key)
            t.rule(
                N.REJECT_DNAT[fam],
                {"mangle": {"key": mark, "value": {"|": [mark, N.REJECT_MARK]}}},
                {"dnat": {"family": N.IP_PROTO[fam], "addr": ip}},
            )
    # Traffic from inside the cluster first (see N.INTERNAL): the node's pods, the node itself.
    for fam in (4, 6):
        for net in _pod_nets(node, fam):
            saddr = payload(N.IP_PROTO[fam], "saddr")
            t.rule(N.NAT_PREROUTING, match(saddr, addr_or_prefix(net)), jump(N.INTERNAL))
    t.rule(N.NAT_OUTPUT, jump(N.INTERNAL))
    t.rule(N.NAT_PREROUTING, jump(N.SERVICES))
    t.rule(N.NAT_OUTPUT, jump(N.SERVICES))
    t.rule(N.NAT_POSTROUTING, jump(N.MASQUERADING))
    ct_mark = {"ct": {"key": "mark"}}
    for fam in (4, 6):
        # ClientIP-affinity Service ports: their own chains; all others: N endpoints -> pick-N
        # (the packet mark saved in the conntrack mark first, see N.SLOT_BASE).
        for key, vmap, counts, picks, guard in (
            (dispatch_key(fam), N.VIPS, N.ENDPOINT_COUNTS, N.PICKS, []),
            (
                nodeport_key(),
                N.NODEPORTS,
                N.NODEPORT_ENDPOINT_COUNTS,
                N.NODEPORT_PICKS,
                nodeport_match(fam),
            ),
        ):
            t.rule(N.SERVICES, *guard, {"vmap": {"key": key, "data": "@" + vmap[fam]}})
            t.rule(
                N.SERVICES,
                *guard,
                match(key, "@" + counts[fam]),
                {"mangle": {"key": ct_mark, "value": mark}},
                {
                    "mangle": {
                        "key": mark,
                        "value": {"map": {"key": key, "data": "@" + counts[fam]}},
                    }
                },
                {"vmap": {"key": mark, "data": "@" + picks[fam]}},
            )
        # A VIP port Portico sends nowhere (no endpoint; Local without one here) is claimed all
        # the same, by a DNAT to where the packet already goes: the kernel sets a connection's
        # NAT once, by the first NAT chain that acts, so a NAT chain after this one (kube-
        # proxy's, at dstnat) cannot send it to a pod behind Portico's back. Without the claim,
        # kube-proxy's rules, a sync behind (its min-sync-period is 1 s) or with another view
        # of the endpoints, DNATed it to a pod, and the filter below, which knows the VIP, let
        # it through: a Service scaled to zero answered, a pinned client reached another pod.
        daddr = payload(N.IP_PROTO[fam], "daddr")
        claim = {"dnat": {"family": N.IP_PROTO[fam], "addr": daddr}}
        t.rule(N.SERVICES, match(dispatch_key(fam), "@" + N.NO_ENDPOINTS[fam]), claim)
        t.rule(
            N.SERVICES,
            *nodeport_match(fam),
            match(nodeport_key(), "@" + N.NO_ENDPOINT_NODEPORTS[fam]),
            claim,
        )
        t.rule(N.INTERNAL, {"vmap": {"key": dispatch_key(fam), "data": "@" + N.INTERNAL_VIPS[fam]}})
        t.rule(
            N.INTERNAL,
            match(dispatch_key(fam), "@" + N.INTERNAL_COUNTS[fam]),
            {"mangle": {"key": ct_mark, "value": mark}},
            {
                "mangle": {
                    "key": mark,
                    "value": {
                        "map": {"key": dispatch_key(fam), "data": "@" + N.INTERNAL_COUNTS[fam]}
                    },
                }
            },
            {"vmap": {"key": mark, "data": "@" + N.INTERNAL_PICKS[fam]}},
        )
        t.rule(
            N.FIREWALL_CHECK, {"vmap": {"key": dispatch_key(fam), "data": "@" + N.FIREWALL[fam]}}
        )
        t.rule(
            N.ENDPOINTS_CHECK,
            {"vmap": {"key": dispatch_key(fam), "data": "@" + N.NO_ENDPOINTS[fam]}},
        )
        t.rule(
            N.ENDPOINTS_CHECK,
            *nodeport_match(fam),
            {"vmap": {"key": nodeport_key(), "data": "@" + N.NO_ENDPOINT_NODEPORTS[fam]}},
        )
    t.rule(N.REJECT, match(meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}})
    t.rule(N.REJECT, {"reject": {"type": "icmpx", "expr": "port-unreachable"}})
    t.rule(N.MARK_MASQ, {"mangle": {"key": mark, "value": {"|": [mark, N.MASQ_MARK]}}})
    t.rule(N.MASQUERADING, match({"&": [mark, N.MASQ_MARK]}, 0), {"return": None})
    t.rule(N.MASQUERADING, {"mangle": {"key": mark, "value": {"^": [mark, N.MASQ_MARK]}}})
    t.rule(N.MASQUERADING, {"masquerade": {"flags": "fully-random"}})
    for chain in (N.SLOT_PREROUTING, N.SLOT_OUTPUT):
        # The internal path's slots first (a longer prefix of the same range): the pod's or
        # node's address is kept toward another node, as kube-proxy keeps it.
        t.rule(
            chain,
            match(mark, {"prefix": {"addr": N.INTERNAL_SLOT_BASE, "len": N.SLOT_PREFIX_LEN + 1}}),
            goto(N.INTERNAL_SLOT_RESTORE),
        )
        t.rule(
            chain,
            match(mark, {"prefix": {"addr": N.SLOT_BASE, "len": N.SLOT_PREFIX_LEN}}),
            goto(N.SLOT_RESTORE),
        )
    for restore in (N.SLOT_RESTORE, N.INTERNAL_SLOT_RESTORE):
        t.rule(
            restore,
            {"mangle": {"key": mark, "value": ct_mark}},
            {"mangle": {"key": ct_mark, "value": 0}},
        )
    for fam in (4, 6):
        ipx = N.IP_PROTO[fam]
        daddr = payload(ipx, "daddr")
        t.rule(N.SLOT_RESTORE, match(daddr, "@" + N.REMOTE_ENDPOINTS[fam]), jump(N.MARK_MASQ))
        pair = {"concat": [payload(ipx, "saddr"), daddr]}
        t.rule(N.SLOT_RESTORE, match(pair, "@" + N.HAIRPIN[fam]), jump(N.MARK_MASQ))
        t.rule(N.INTERNAL_SLOT_RESTORE, match(pair, "@" + N.HAIRPIN[fam]), jump(N.MARK_MASQ))
        for count in range(1, N.PICKS_ALWAYS + 1):
            for nodeport in (False, True):
                _pick_chain(t, fam, count, nodeport=nodeport, fixed=True)
            _pick_chain(t, fam, count, nodeport=False, fixed=True, internal=True)


def _pick_chain(
    t: Table,
    family: int,
    count: int,
    *,
    nodeport: bool,
    fixed: bool = False,
    internal: bool = False,
) -> None:
    """The shared chain that sends a new connection to one of ``count`` endpoint slots, and its
    element in the picks map (``fixed``: the fixed part's, for 1..PICKS_ALWAYS; ``internal``:
    the internal path's, whose slots start at INTERNAL_SLOT_BASE)."""
    prefix = N.NODEPORT_PICK_PREFIX if nodeport else N.PICK_PREFIX
    if internal:
        prefix = N.INTERNAL_PICK_PREFIX
    name = f"{prefix}{family}-{count}"
    if name in t.chains or (count <= N.PICKS_ALWAYS and not fixed):
        return  # made already, or one of the fixed part's (which a Service's fragment lacks)
    t.chain(name)
    picks = N.NODEPORT_PICKS[family] if nodeport else N.PICKS[family]
    if internal:
        picks = N.INTERNAL_PICKS[family]
    t.element(picks, count, goto(name))
    mark = meta("mark")
    ipx = N.IP_PROTO[family]
    if nodeport:
        key: Json = {"concat": [meta("l4proto"), payload("th", "dport"), mark]}
        addrs, ports = N.NODEPORT_ENDPOINT_ADDRS[family], N.NODEPORT_ENDPOINT_PORTS[family]
    else:
        key = {"concat": [*dispatch_key(family)["concat"], mark]}
        addrs, ports = N.ENDPOINT_ADDRS[family], N.ENDPOINT_PORTS[family]
    base = N.INTERNAL_SLOT_BASE if internal else N.SLOT_BASE
    slot = {"numgen": {"mode": "random", "mod": count, "offset": base}}
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
        ranges[fam] = [addr_or_prefix(n) for n in ipaddress.collapse_addresses(same)]  # type: ignore[type-var,arg-type]
    return vips, ranges


def _firewall(
    t: Table,
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
            t.rule(name, match(meta("nfproto"), N.NFPROTO[fam]), DROP)
            continue
        saddr = payload(N.IP_PROTO[fam], "saddr")
        t.rule(name, match(saddr, set_or_single(_sorted_values(allowed)), "!="), DROP)
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
    t: Table,
    svc: LBService,
    port: ServicePort,
    family: int,
    node: NodeInfo,
    sel: Selection,
    targets: Mapping[Endpoint, int],
    chain: str | None = None,
) -> str:
    """A ClientIP-affinity Service port's chains (kube-proxy's layout: the pins are per
    endpoint); returns the chain to send its traffic to (``chain``: another path's, the
    internal one, over the same endpoint chains and pins)."""
    chain = chain or service_chain(svc, port, family)
    t.chain(chain)
    ipx = N.IP_PROTO[family]
    saddr = payload(ipx, "saddr")
    timeout = svc.affinity_timeout
    ep_chains = []
    for e in sel.endpoints:
        target = targets[e]
        ep_chain = endpoint_chain(svc, port, e, target)
        ep_chains.append(ep_chain)
        if ep_chain in t.chains:  # the other path made it: its pin is shared
            if timeout is not None:
                aff = affinity_set(svc, port, e, target, timeout)
                t.rule(chain, match(saddr, "@" + aff), goto(ep_chain))
            continue
        t.chain(ep_chain)
        if svc.external_traffic_policy != LOCAL and e.node != node.name:
            t.rule(ep_chain, jump(N.MARK_MASQ))  # the endpoint is on another node
        else:
            t.rule(ep_chain, match(saddr, e.address), jump(N.MARK_MASQ))  # hairpin
        if timeout is not None:
            aff = affinity_set(svc, port, e, target, timeout)
            t.sets[aff] = {
                "name": aff,
                "type": N.ADDR_TYPE[family],
                "flags": ["timeout"],
                "timeout": timeout,
            }
            t.rule(ep_chain, {"set": {"op": "update", "elem": saddr, "set": "@" + aff}})
            t.rule(chain, match(saddr, "@" + aff), goto(ep_chain))
        t.rule(
            ep_chain,
            match(meta("l4proto"), port.protocol.lower()),
            {"dnat": {"family": ipx, "addr": e.address, "port": target}},
        )
    # kube-proxy's iptables way, exactly uniform: endpoint i of N is taken with probability
    # 1/(N-i) among those left. (A numgen vmap, kube-proxy's nftables way, creates an anonymous
    # set per Service, and the kernel allocates anonymous set names by scanning every set of
    # the table: loading 10,000 Services took 19 s that way, 1.7 s this way.)
    for i, ep_chain in enumerate(ep_chains[:-1]):
        left = len(ep_chains) - i
        numgen = {"numgen": {"mode": "random", "mod": left, "offset": 0}}
        t.rule(chain, match(numgen, 0), goto(ep_chain))
    t.rule(chain, goto(ep_chains[-1]))
    return chain


def _flat_port(
    t: Table,
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


def _internal_port(
    t: Table, svc: LBService, port: ServicePort, family: int, node: NodeInfo, keys: list[Json]
) -> None:
    """An externalTrafficPolicy: Local Service port's endpoints for traffic that starts inside
    the cluster (see N.INTERNAL): every endpoint, chosen as for Cluster, in slots from
    INTERNAL_SLOT_BASE. The pod's address is kept: after DNAT only a pod that reached itself
    (hairpin) is masqueraded, not one reaching a pod elsewhere."""
    anywhere = replace(svc, external_traffic_policy=CLUSTER)
    sel, targets = _port_selection(anywhere, port, family, node)
    if not sel.endpoints:
        return
    for key in keys:
        t.element(N.INTERNAL_PORTS[family], key, N.IN_SET)
    if svc.affinity_timeout is not None:
        chain = internal_service_chain(svc, port, family)
        _affinity_chains(t, svc, port, family, node, sel, targets, chain)
        for key in keys:
            t.element(N.INTERNAL_VIPS[family], key, goto(chain))
        return
    count = len(sel.endpoints)
    addrs = [(str(ipaddress.ip_address(e.address)), targets[e]) for e in sel.endpoints]
    for key in keys:
        t.element(N.INTERNAL_COUNTS[family], key, count)
        for i, (addr, target) in enumerate(addrs):
            slot_key = {"concat": [*key["concat"], N.INTERNAL_SLOT_BASE + i]}
            t.element(N.ENDPOINT_ADDRS[family], slot_key, addr)
            t.element(N.ENDPOINT_PORTS[family], slot_key, target)
    _pick_chain(t, family, count, nodeport=False, internal=True)
    for e, (addr, _) in zip(sel.endpoints, addrs, strict=True):
        if e.node == node.name:  # a pod here may reach itself
            t.element(N.HAIRPIN[family], {"concat": [addr, addr]}, N.IN_SET)


def render_node_rules(services: Iterable[LBService], node: NodeInfo) -> Json:
    """The whole of Portico's table for ``node``, as one libnftables JSON document of ``add``
    commands (table, sets, maps, chains, elements, rules, in that order).

    Services are taken in (namespace, name) order; should two claim the same
    ``VIP . protocol . port`` (which the operator's address sharing rules out), the first keeps
    it. Raises NodeRulesError for input that cannot be rendered."""
    return render_table(services, node).doc()


def render_table(services: Iterable[LBService], node: NodeInfo) -> Table:
    """``render_node_rules`` before it becomes a document: the ``Table`` built from scratch."""
    t = Table()
    render_fixed(t, node)
    claimed: set[str] = set()  # "VIP . proto . port" and "family . proto . nodePort" taken
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        render_service(t, svc, node, claimed)
    return t


def render_service(t: Table, svc: LBService, node: NodeInfo, claimed: set[str]) -> None:
    """One Service's chains, sets and map elements into ``t``; what it takes goes into
    ``claimed`` (and what is claimed already it leaves to its holder)."""
    vips, ranges = check_service(svc)
    fw = firewall_chain(svc) if svc.source_ranges else None
    for port in svc.ports:
        for fam in (4, 6):
            if not vips[fam]:
                continue
            keys = [vip_key(vip, port) for vip in vips[fam]]
            keys = [k for k in keys if canon(k) not in claimed]
            claimed.update(canon(k) for k in keys)
            np_key = None
            if svc.forwarding_mode == "NAT" and port.node_port:
                np_key = nodeport_elem_key(port)
                if f"{fam}{canon(np_key)}" in claimed:
                    np_key = None
                else:
                    claimed.add(f"{fam}{canon(np_key)}")
            if not keys and np_key is None:
                continue  # another Service holds these addresses: nothing of this one
            if fw is not None:
                if keys and fw not in t.chains:
                    _firewall(t, svc, ranges, vips, node)
                for key in keys:
                    t.element(N.FIREWALL[fam], key, goto(fw))
            sel, targets = _port_selection(svc, port, fam, node)
            if keys and svc.external_traffic_policy == LOCAL:
                _internal_port(t, svc, port, fam, node, keys)
            if sel.endpoints and svc.affinity_timeout is None:
                _flat_port(t, svc, fam, node, sel, targets, keys, np_key)
                continue
            if sel.endpoints:
                verdict = goto(_affinity_chains(t, svc, port, fam, node, sel, targets))
                dispatch, np_map = N.VIPS[fam], N.NODEPORTS[fam]
            else:
                verdict = DROP if sel.has_any else goto(N.REJECT)
                dispatch, np_map = N.NO_ENDPOINTS[fam], N.NO_ENDPOINT_NODEPORTS[fam]
            for key in keys:
                t.element(dispatch, key, verdict)
                if not sel.endpoints and not sel.has_any and N.REJECT_LOCAL[fam] in t.maps:
                    t.element(N.REJECT_LOCAL[fam], key, goto(N.REJECT_DNAT[fam]))
            if np_key is not None:
                t.element(np_map, np_key, verdict)

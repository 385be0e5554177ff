"""Where packets go through a node's rendered table: the render loaded into the strict fake
kernel and traced (nfttrace), so each test states behaviour (this packet is DNATed there,
masqueraded or not, dropped, rejected) rather than the rules' text."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

from portico_common.model import Endpoint, EndpointPort, LBService, NodeInfo, ServicePort
from portico_nodeagent import nftnames as N
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import diff_rules

from ..nftkernel import Kernel
from ..nfttrace import Outcome, Packet, Tracer

NODE_IP, NODE_IP6 = "10.0.0.1", "fd00:10::1"
NODE = NodeInfo("node-1", "zone-a", (NODE_IP, NODE_IP6))
VIP, VIP6 = "198.18.32.10", "fd00:18::a:10"
CLIENT, CLIENT6 = "203.0.113.5", "2001:db8::5"
HTTP = (EndpointPort("http", "TCP", 8080),)
L1, L2, R1 = "198.19.1.2", "198.19.1.3", "198.19.2.2"  # two endpoints on node-1, one on node-2


def ep(addr: str, node: str | None, **kw: Any) -> Endpoint:
    kw.setdefault("ports", HTTP)
    return Endpoint(addr, node, "zone-a" if node == "node-1" else "zone-b", **kw)


def svc(*eps: Endpoint, **kw: Any) -> LBService:
    kw.setdefault("vips", (VIP,))
    kw.setdefault("ports", (ServicePort("http", "TCP", 80, 31000, "http"),))
    return LBService("shop", kw.pop("name", "web"), endpoints=eps, **kw)


def node(*services: LBService, info: NodeInfo = NODE) -> Tracer:
    return Tracer(render_node_rules(services, info), local=info.ips)


def to(addr: str, port: int | None = 8080, masquerade: bool = False) -> Outcome:
    return Outcome("accept", (addr, port), masquerade)


def uniform(*outcomes: Outcome) -> dict[Outcome, Fraction]:
    return {o: Fraction(1, len(outcomes)) for o in outcomes}


ACCEPT = {Outcome("accept"): 1}
DROP = {Outcome("drop"): 1}
RESET = {Outcome("reject", reject="tcp reset"): 1}


def claimed(verdict: str, daddr: str = VIP, reject: str | None = None) -> dict[Outcome, int]:
    """Dropped or rejected after Portico's NAT claimed the connection (a DNAT to its own
    destination: no NAT chain after Portico's may send it elsewhere)."""
    return {Outcome(verdict, (daddr, None), reject=reject): 1}


def test_local_policy_dnats_to_a_local_endpoint_never_masqueraded() -> None:
    web = svc(ep(L1, "node-1"), ep(L2, "node-1"), ep(R1, "node-2"), external_traffic_policy="Local")
    t = node(web)
    assert t.outcomes(Packet(CLIENT, VIP)) == uniform(to(L1), to(L2))
    # the client's address is kept, and so is the packet's own mark (the slot rode in it)
    for tr in t.traces(Packet(CLIENT, VIP, mark=0x1234)):
        assert tr.mark == 0x1234 and tr.ct_mark == 0
        assert any("dnat to" in f for f in tr.fired)
    assert t.outcomes(Packet(CLIENT, VIP, dport=443)) == ACCEPT  # not a Service port: untouched


def test_local_policy_without_a_local_endpoint_drops() -> None:
    web = svc(ep(R1, "node-2"), external_traffic_policy="Local")
    assert node(web).outcomes(Packet(CLIENT, VIP)) == claimed("drop")
    # node-2 has it
    on_2 = NodeInfo("node-2", "zone-b", ("10.0.0.2",))
    assert node(web, info=on_2).outcomes(Packet(CLIENT, VIP)) == {to(R1): 1}


def test_cluster_policy_masquerades_what_goes_to_another_node() -> None:
    t = node(svc(ep(L1, "node-1"), ep(R1, "node-2")))
    assert t.outcomes(Packet(CLIENT, VIP)) == uniform(to(L1), to(R1, masquerade=True))
    for tr in t.traces(Packet(CLIENT, VIP, mark=0x1)):
        assert tr.mark == 0x1  # the masquerade bit is cleared again, the slot given back
    # a pod reaching itself through the VIP (hairpin) is masqueraded; another local pod is not
    assert t.outcomes(Packet(L1, VIP)) == uniform(to(L1, masquerade=True), to(R1, masquerade=True))
    assert t.outcomes(Packet(L2, VIP)) == uniform(to(L1), to(R1, masquerade=True))


def test_every_endpoint_is_equally_likely_beyond_the_fixed_pick_chains() -> None:
    many = [ep(f"198.19.2.{i}", "node-2") for i in range(2, 2 + N.PICKS_ALWAYS + 3)]
    t = node(svc(*many))
    assert t.outcomes(Packet(CLIENT, VIP)) == uniform(
        *(to(e.address, masquerade=True) for e in many)
    )


def test_source_ranges_drop_other_clients_before_dnat() -> None:
    web = svc(ep(L1, "node-1"), source_ranges=("203.0.113.0/28", "2001:db8::/64"))
    t = node(web)
    assert t.outcomes(Packet("203.0.113.5", VIP)) == {to(L1): 1}
    drop = t.trace(Packet("203.0.113.99", VIP))
    assert drop.outcome == Outcome("drop")
    assert drop.fired[-1].startswith(N.FIREWALL_CHAIN_PREFIX)  # dropped by the firewall
    # the host itself sending to the VIP is checked as well
    assert t.outcomes(Packet(NODE_IP, VIP, path="output")) == DROP


def test_no_endpoints_rejects() -> None:
    gone = svc()
    t = node(gone, info=NodeInfo("node-1", "zone-a"))  # the node's address unknown: forwarded
    assert t.outcomes(Packet(CLIENT, VIP)) == claimed("reject", reject="tcp reset")
    udp = svc(ports=(ServicePort("dns", "UDP", 53),), name="dns")
    t = node(udp, info=NodeInfo("node-1", "zone-a"))
    assert t.outcomes(Packet(CLIENT, VIP, l4proto="udp", dport=53)) == claimed(
        "reject", reject="icmpx port-unreachable"
    )
    # the node's address known: DNATed to it and rejected as local traffic (no ICMP redirect)
    tr = node(gone).trace(Packet(CLIENT, VIP))
    assert tr.outcome == Outcome("reject", (NODE_IP, None), reject="tcp reset")
    assert tr.mark & N.REJECT_MARK
    assert any(f.startswith(N.FILTER_INPUT) for f in tr.fired)


def test_an_ipv6_vip_goes_to_ipv6_endpoints() -> None:
    api = svc(
        ep(L1, "node-1"),
        ep("fd00:19:0:1::2", "node-1"),
        ep("fd00:19:0:2::2", "node-2"),
        vips=(VIP, VIP6),
        source_ranges=("2001:db8::/64",),
    )
    t = node(api)
    assert t.outcomes(Packet(CLIENT6, VIP6)) == uniform(
        to("fd00:19:0:1::2"), to("fd00:19:0:2::2", masquerade=True)
    )
    assert t.outcomes(Packet("2001:db8:1::5", VIP6)) == DROP  # outside the range
    assert t.outcomes(Packet(CLIENT, VIP)) == DROP  # no IPv4 range: every IPv4 client
    # an IPv6 Service without IPv6 endpoints rejects its IPv6 VIP only
    v4_only = svc(ep(L1, "node-1"), vips=(VIP, VIP6))
    t = node(v4_only, info=NodeInfo("node-1", "zone-a"))
    assert t.outcomes(Packet(CLIENT6, VIP6)) == claimed("reject", VIP6, "tcp reset")
    assert t.outcomes(Packet(CLIENT, VIP)) == {to(L1): 1}


def test_nat_mode_node_port_dnats_to_the_endpoints() -> None:
    gw = "198.18.0.1"  # the gateway, which masqueraded the client
    nat = svc(ep(L1, "node-1"), ep(R1, "node-2"), forwarding_mode="NAT")
    t = node(nat)
    assert t.outcomes(Packet(gw, NODE_IP, dport=31000)) == uniform(to(L1), to(R1, masquerade=True))
    assert t.outcomes(Packet(gw, NODE_IP, dport=31001)) == ACCEPT  # no such nodePort
    assert t.outcomes(Packet(gw, "10.0.0.9", dport=31000)) == ACCEPT  # not this node's address
    assert t.outcomes(Packet("127.0.0.1", "127.0.0.1", dport=31000, path="output")) == ACCEPT
    # the host sending to its own nodePort is DNATed too
    assert t.outcomes(Packet(NODE_IP, NODE_IP, dport=31000, path="output")) == uniform(
        to(L1), to(R1, masquerade=True)
    )
    # direct server return: no nodePort rules at all
    assert node(svc(ep(L1, "node-1"))).outcomes(Packet(gw, NODE_IP, dport=31000)) == ACCEPT
    # NAT mode, no endpoints: the nodePort rejects
    t = node(svc(forwarding_mode="NAT"), info=NodeInfo("node-1", "zone-a", (NODE_IP,)))
    assert t.outcomes(Packet(gw, NODE_IP, dport=31000)) == claimed("reject", NODE_IP, "tcp reset")


def test_client_ip_affinity_pins_a_client_to_its_first_endpoint() -> None:
    sticky = svc(
        ep(L1, "node-1"),
        ep(L2, "node-1"),
        ep(R1, "node-2"),
        session_affinity="ClientIP",
        session_affinity_timeout=60,
    )
    t = node(sticky)
    first = uniform(to(L1), to(L2), to(R1, masquerade=True))
    assert t.outcomes(Packet(CLIENT, VIP)) == first
    # the first connection takes the second endpoint, and pins the client to it
    path = next(tr for tr in t.traces(Packet(CLIENT, VIP)) if tr.outcome == to(L2))
    t.trace(Packet(CLIENT, VIP), [c for _, c in path.choices], commit=True)
    assert t.outcomes(Packet(CLIENT, VIP, sport=50000)) == {to(L2): 1}
    assert t.outcomes(Packet("203.0.113.6", VIP)) == first  # another client: any endpoint
    # ... the same through the nodePort of a NAT-mode Service
    t = node(replace(sticky, forwarding_mode="NAT"))
    gw = "198.18.0.1"
    assert t.outcomes(Packet(gw, NODE_IP, dport=31000)) == first
    t.trace(Packet(gw, NODE_IP, dport=31000), [2, 1], commit=True)  # not the 1st, not the 2nd
    assert set(t.outcomes(Packet(gw, NODE_IP, dport=31000, sport=1))) == {to(R1, masquerade=True)}


def test_the_host_reaches_a_vip_through_output() -> None:
    t = node(svc(ep(L1, "node-1"), ep(R1, "node-2")))
    assert t.outcomes(Packet(NODE_IP, VIP, path="output")) == uniform(
        to(L1), to(R1, masquerade=True)
    )


def test_an_endpoint_change_applied_as_a_diff_moves_the_traffic() -> None:
    """The diff the agent applies, run on the fake kernel, and the kernel's state traced."""
    before = [svc(ep(L1, "node-1"), ep(R1, "node-2"))]
    after = [svc(ep(L2, "node-1"), ep(R1, "node-2"), ep("198.19.2.3", "node-2"))]
    ra, rb = render_node_rules(before, NODE), render_node_rules(after, NODE)
    k = Kernel.load(ra)
    k.run(diff_rules(ra, rb))
    t = Tracer(k, local=NODE.ips)
    assert t.outcomes(Packet(CLIENT, VIP)) == uniform(
        to(L2), to(R1, masquerade=True), to("198.19.2.3", masquerade=True)
    )
    k.run(diff_rules(rb, render_node_rules([], NODE)))
    assert Tracer(k, local=NODE.ips).outcomes(Packet(CLIENT, VIP)) == ACCEPT


# --- traffic that starts inside the cluster (kube-proxy's short-circuit for ETP Local) ---------
PODS = NodeInfo("node-1", "zone-a", (NODE_IP, NODE_IP6), ("198.19.1.0/24", "fd00:19:0:1::/64"))
POD, POD6 = "198.19.1.9", "fd00:19:0:1::9"  # a pod of node-1 that is no endpoint


def test_a_pod_reaches_a_local_policy_vip_whose_endpoints_are_elsewhere() -> None:
    web = svc(ep(R1, "node-2"), external_traffic_policy="Local")
    t = node(web, info=PODS)
    assert t.outcomes(Packet(CLIENT, VIP)) == claimed("drop")  # from outside: none here
    # from a pod of this node: the endpoint elsewhere, the pod's address kept
    assert t.outcomes(Packet(POD, VIP)) == {to(R1): 1}
    # a pod of another node's range arriving here is external traffic
    assert t.outcomes(Packet("198.19.3.9", VIP)) == claimed("drop")


def test_a_pod_and_the_node_use_every_endpoint_of_a_local_policy_vip() -> None:
    web = svc(ep(L1, "node-1"), ep(R1, "node-2"), external_traffic_policy="Local")
    t = node(web, info=PODS)
    assert t.outcomes(Packet(CLIENT, VIP)) == {to(L1): 1}  # external: local endpoints only
    assert t.outcomes(Packet(POD, VIP)) == uniform(to(L1), to(R1))
    assert t.outcomes(Packet(NODE_IP, VIP, path="output")) == uniform(to(L1), to(R1))
    # a pod reaching itself is masqueraded (hairpin), as kube-proxy does
    assert t.outcomes(Packet(L1, VIP)) == uniform(to(L1, masquerade=True), to(R1))
    # the packet's own mark survives the internal path too
    for tr in t.traces(Packet(POD, VIP, mark=0x77)):
        assert tr.mark == 0x77 and tr.ct_mark == 0


def test_the_node_itself_reaches_a_local_policy_vip_without_a_pod_cidr_known() -> None:
    web = svc(ep(R1, "node-2"), external_traffic_policy="Local")
    t = node(web)  # the Node has no podCIDRs: only the host's own traffic is internal
    assert t.outcomes(Packet(NODE_IP, VIP, path="output")) == {to(R1): 1}
    assert t.outcomes(Packet(POD, VIP)) == claimed("drop")
    # the source ranges still hold for the host's own traffic on the internal path
    ranged = svc(ep(R1, "node-2"), external_traffic_policy="Local", source_ranges=("1.2.3.4/32",))
    assert node(ranged).outcomes(Packet(NODE_IP, VIP, path="output")) == DROP


def test_the_internal_path_in_ipv6_and_not_for_cluster_or_affinity() -> None:
    web6 = svc(ep("fd00:19:0:2::2", "node-2"), vips=(VIP6,), external_traffic_policy="Local")
    t = node(web6, info=PODS)
    assert t.outcomes(Packet(CLIENT6, VIP6)) == claimed("drop", VIP6)
    assert t.outcomes(Packet(POD6, VIP6)) == {to("fd00:19:0:2::2"): 1}
    # Cluster: the same path for everyone (remote endpoints masqueraded, by address)
    cluster = node(svc(ep(R1, "node-2")), info=PODS)
    assert cluster.outcomes(Packet(POD, VIP)) == {to(R1, masquerade=True): 1}
    # no endpoints anywhere: rejected from inside too
    none = node(svc(external_traffic_policy="Local"), info=PODS)
    assert [o.reject for o in none.outcomes(Packet(POD, VIP))] == ["tcp reset"]


def test_the_internal_path_keeps_the_pods_address_toward_a_shared_remote_endpoint() -> None:
    # R1 is also a Cluster Service's endpoint on another node (remote-endpoints4 holds it):
    # still, a pod reaching the Local VIP keeps its address, as kube-proxy keeps it.
    local = svc(ep(R1, "node-2"), external_traffic_policy="Local")
    cluster = svc(ep(R1, "node-2"), name="api", vips=("198.18.32.11",))
    t = node(local, cluster, info=PODS)
    assert t.outcomes(Packet(POD, VIP)) == {to(R1): 1}
    assert t.outcomes(Packet(NODE_IP, VIP, path="output")) == {to(R1): 1}
    assert t.outcomes(Packet(POD, "198.18.32.11")) == {to(R1, masquerade=True): 1}


def test_a_pod_gets_the_reject_from_the_vip_itself_when_there_are_no_endpoints() -> None:
    none = svc(external_traffic_policy="Local")
    t = node(none, info=PODS)
    # from outside: DNATed to the node and rejected there (no ICMP redirect to the client)
    (ext,) = t.outcomes(Packet(CLIENT, VIP))
    assert (ext.reject, ext.dnat) == ("tcp reset", (NODE_IP, None))
    # from a pod of this node: rejected where it is forwarded, with the VIP's own address (its
    # NAT claimed, to the VIP itself)
    (pod,) = t.outcomes(Packet(POD, VIP))
    assert (pod.reject, pod.dnat) == ("tcp reset", (VIP, None))


def test_the_hosts_own_traffic_outside_the_ranges_learns_nothing() -> None:
    # no endpoints and a range that leaves the host out: dropped, not refused
    gone = svc(source_ranges=("203.0.113.0/28",))
    assert node(gone).outcomes(Packet(NODE_IP, VIP, path="output")) == DROP


def test_client_ip_affinity_on_the_internal_path_pins_and_reaches_every_endpoint() -> None:
    web = svc(
        ep(L1, "node-1"),
        ep(R1, "node-2"),
        external_traffic_policy="Local",
        session_affinity="ClientIP",
        session_affinity_timeout=60,
    )
    t = node(web, info=PODS)
    assert t.outcomes(Packet(CLIENT, VIP)) == {to(L1): 1}  # external: the local one only
    assert set(t.outcomes(Packet(POD, VIP))) == {to(L1), to(R1)}  # from a pod: either
    # pinned: once a pod went to R1 it keeps going there
    t.trace(Packet(POD, VIP), [1], commit=True)
    assert t.outcomes(Packet(POD, VIP, sport=1)) == {to(R1): 1}
    assert set(t.outcomes(Packet(NODE_IP, VIP, path="output"))) == {to(L1), to(R1)}
    # without a local endpoint the external path drops, the internal one still answers
    remote_only = node(replace(web, endpoints=(ep(R1, "node-2"),)), info=PODS)
    assert remote_only.outcomes(Packet(CLIENT, VIP)) == claimed("drop")
    assert remote_only.outcomes(Packet(POD, VIP)) == {to(R1): 1}


# --- beside kube-proxy: a NAT chain after Portico's (kube-proxy's, at dstnat) -----------------
STALE = "198.19.1.77"  # a pod kube-proxy still sends to (its rules a sync behind)


def beside_kube_proxy(services: list[LBService], info: NodeInfo = PODS) -> Tracer:
    """Portico's table and, after its NAT chains, a stand-in for kube-proxy's nat chain whose
    view is stale: it DNATs every TCP packet to STALE."""
    doc = render_node_rules(services, info)
    table = {"family": N.FAMILY, "table": N.TABLE}
    chain = {**table, "name": "kube-proxy-nat"}
    doc["nftables"] += [
        {"add": {"chain": {**chain, "type": "nat", "hook": "prerouting", "prio": -100}}},
        {
            "add": {
                "rule": {
                    **table,
                    "chain": "kube-proxy-nat",
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": {"meta": {"key": "l4proto"}},
                                "right": "tcp",
                            }
                        },
                        {"dnat": {"family": "ip", "addr": STALE}},
                    ],
                }
            }
        },
    ]
    return Tracer(doc, local=info.ips)


def test_portico_decides_for_its_vips_whatever_a_later_nat_chain_says() -> None:
    local_elsewhere = svc(ep(R1, "node-2"), external_traffic_policy="Local")
    gone = svc(name="gone", vips=("198.18.32.11",))
    served = svc(ep(L1, "node-1"), name="served", vips=("198.18.32.12",))
    nat = svc(name="nat", vips=("198.18.32.13",), forwarding_mode="NAT")
    t = beside_kube_proxy([local_elsewhere, gone, served, nat])
    # Local without a local endpoint: dropped, not sent to kube-proxy's pick
    assert t.outcomes(Packet(CLIENT, VIP)) == claimed("drop")
    # scaled to zero: refused, from a pod of this node as from outside
    assert t.outcomes(Packet(POD, "198.18.32.11")) == claimed("reject", "198.18.32.11", "tcp reset")
    (ext,) = t.outcomes(Packet(CLIENT, "198.18.32.11"))
    assert (ext.verdict, ext.reject, ext.dnat) == ("reject", "tcp reset", (NODE_IP, None))
    # a NAT-mode Service's nodePort without endpoints: refused too
    (np,) = t.outcomes(Packet("198.18.0.1", NODE_IP, dport=31000))
    assert (np.verdict, np.reject) == ("reject", "tcp reset")
    # what Portico serves, it serves; what is not Portico's is left to kube-proxy
    assert t.outcomes(Packet(CLIENT, "198.18.32.12")) == {to(L1): 1}
    assert t.outcomes(Packet(CLIENT, VIP, dport=443)) == {Outcome("accept", (STALE, None)): 1}

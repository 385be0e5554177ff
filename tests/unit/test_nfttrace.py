"""The fake kernel (nftkernel) refuses what the kernel refuses; the packet tracer (nfttrace)
follows nftables' semantics and knows only what it implements; and the gateway's forwarding
table, traced: where its packets go."""

from __future__ import annotations

import ipaddress
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest
from portico_lbnode.flowrules import node_ids
from portico_lbnode.fwddiff import diff_fwd
from portico_lbnode.fwdrules import FLOW_HASH_SEED, FwdPort, render_fwd

from .nftkernel import Kernel, Refused
from .nfttrace import (
    Invalid,
    NeedsChoice,
    Outcome,
    Packet,
    Tracer,
    UnknownExpression,
    jhash,
)

T = {"family": "inet", "table": "t"}


def table(*cmds: dict[str, Any]) -> list[dict[str, Any]]:
    """Commands for table ``inet t``: "add" of each object given as (kind, fields)."""
    return [{"add": {"table": {"family": "inet", "name": "t"}}}, *cmds]


def add(kind: str, **obj: Any) -> dict[str, Any]:
    return {"add": {kind: {**T, **obj}}}


def cmd(verb: str, kind: str, **obj: Any) -> dict[str, Any]:
    return {verb: {kind: {**T, **obj}}}


def base(name: str, hook: str, prio: int = 0, type: str = "filter") -> dict[str, Any]:
    return add("chain", name=name, type=type, hook=hook, prio=prio, policy="accept")


def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return add("rule", chain=chain, expr=list(expr))


def payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


MARK = {"meta": {"key": "mark"}}
DADDR = payload("ip", "daddr")


# ==============================================================================================
# the fake kernel
# ==============================================================================================
SMALL = table(
    base("in", "prerouting"),
    add("chain", name="a"),
    add("chain", name="b"),
    add("set", name="s", type="ipv4_addr"),
    add("set", name="r", type="ipv4_addr", flags=["interval"]),
    add("map", name="m", type=["ipv4_addr"], map="verdict"),
    add("element", name="m", elem=[["192.0.2.1", {"goto": {"target": "a"}}]]),
    add("element", name="s", elem=["192.0.2.9"]),
    add("element", name="r", elem=[{"prefix": {"addr": "10.0.0.0", "len": 8}}]),
    rule("in", {"vmap": {"key": DADDR, "data": "@m"}}),
    rule("in", match(DADDR, "@s"), {"jump": {"target": "b"}}),
)

REFUSED = {
    "element added twice": cmd("add", "element", name="s", elem=["192.0.2.9"]),
    "element deleted when absent": cmd("delete", "element", name="s", elem=["192.0.2.8"]),
    "element of a missing set": cmd("add", "element", name="x", elem=["192.0.2.8"]),
    "map element without value": cmd("add", "element", name="m", elem=["192.0.2.2"]),
    "overlapping interval": cmd(
        "add", "element", name="r", elem=[{"prefix": {"addr": "10.1.0.0", "len": 16}}]
    ),
    "vmap element to a missing chain": cmd(
        "add", "element", name="m", elem=[["192.0.2.2", {"goto": {"target": "nope"}}]]
    ),
    "vmap element to a base chain": cmd(
        "add", "element", name="m", elem=[["192.0.2.2", {"goto": {"target": "in"}}]]
    ),
    "rule jumping to a missing chain": rule("a", {"jump": {"target": "nope"}}),
    "rule jumping to a base chain": rule("a", {"jump": {"target": "in"}}),
    "rule using a missing set": rule("a", match(DADDR, "@nope"), {"drop": None}),
    "rule in a missing chain": rule("nope", {"drop": None}),
    "chain with rules deleted": cmd("delete", "chain", name="in"),
    "chain jumped to by a rule deleted": cmd("delete", "chain", name="b"),
    "chain jumped to by a vmap element deleted": cmd("delete", "chain", name="a"),
    "missing chain flushed": cmd("flush", "chain", name="nope"),
    "missing chain deleted": cmd("delete", "chain", name="nope"),
    "set in use deleted": cmd("delete", "set", name="s"),
    "map in use deleted": cmd("delete", "map", name="m"),
    "set deleted as a map": cmd("delete", "map", name="r"),
    "base chain redefined": base("in", "prerouting", prio=1),
    "set redefined": add("set", name="s", type="ipv6_addr"),
    "map added under a set's name": add("map", name="s", type="ipv4_addr", map="verdict"),
    "dnat in a chain a filter chain dispatches to": rule(
        "a", {"dnat": {"family": "ip", "addr": "10.0.0.1"}}
    ),
    "masquerade in a chain a filter chain jumps to": rule("b", {"masquerade": None}),
}


def test_the_kernel_refuses_a_filter_chains_lookup_of_a_map_whose_chains_dnat() -> None:
    # Valid from a nat chain; the same verdict map merely looked up from a filter chain (as a
    # set) is refused: the kernel validates a map's chains from every chain that uses it.
    k = Kernel.load(
        table(
            base("nat", "prerouting", type="nat", prio=-100),
            base("out", "output"),
            add("chain", name="d"),
            add("map", name="m2", type=["ipv4_addr"], map="verdict"),
            add("element", name="m2", elem=[["192.0.2.1", {"goto": {"target": "d"}}]]),
            rule("d", {"dnat": {"family": "ip", "addr": "10.0.0.1"}}),
            rule("nat", {"vmap": {"key": DADDR, "data": "@m2"}}),
        )
    )
    with pytest.raises(Refused, match="Operation not supported"):
        k.run([rule("out", match(DADDR, "@m2"), {"accept": None})])
    # a data map looked up the same way is fine
    k.run([add("map", name="d2", type=["ipv4_addr"], map="mark")])
    k.run([rule("out", match(DADDR, "@d2"), {"accept": None})])


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_the_kernel_refuses(what: str) -> None:
    k = Kernel.load(SMALL)
    with pytest.raises(Refused):
        k.run([REFUSED[what]])


def test_the_kernel_accepts_in_the_right_order_and_lists_back() -> None:
    k = Kernel.load(SMALL)
    k.run(
        [
            cmd("flush", "chain", name="in"),
            cmd("delete", "element", name="m", elem=["192.0.2.1"]),
            cmd("delete", "chain", name="a"),
            cmd("delete", "chain", name="b"),
            cmd("delete", "map", name="m"),
            cmd("delete", "set", name="s"),
            add("element", name="r", elem=[{"prefix": {"addr": "11.0.0.0", "len": 8}}]),
        ]
    )
    assert set(k.chains) == {"in"} and set(k.colls) == {"r"}
    again = Kernel.load(k.listing())
    assert again.listing() == k.listing()
    assert Kernel.load(Kernel.load(SMALL).listing()).listing() == Kernel.load(SMALL).listing()
    with pytest.raises(Refused, match="no table"):
        Kernel().run([add("chain", name="a")])
    k.run([cmd("delete", "table", name="t")])
    assert k.listing() == {"nftables": []}


# ==============================================================================================
# the tracer's semantics
# ==============================================================================================
def test_jhash_is_lookup3() -> None:
    # Bob Jenkins' lookup3.c driver5 vectors (Linux's jhash is hashlittle on little-endian).
    s = b"Four score and seven years ago"
    assert jhash(s, 0) == 0x17770551
    assert jhash(s, 1) == 0xCD628161
    assert jhash(b"", 0xDEADBEEF) == 0xBD5B7DDE


def pkt(daddr: str = "192.0.2.1", **kw: Any) -> Packet:
    return Packet("198.51.100.7", daddr, **kw)


def test_jump_returns_goto_does_not_and_a_miss_ends_only_the_rule() -> None:
    t = Tracer(
        table(
            base("pre", "prerouting"),
            add("chain", name="j"),
            add("chain", name="g"),
            add("map", name="m", type="ipv4_addr", map="verdict"),
            rule("pre", {"vmap": {"key": DADDR, "data": "@m"}}),  # a miss: next rule
            rule("pre", {"jump": {"target": "j"}}),
            rule("pre", {"mangle": {"key": MARK, "value": 7}}),  # runs after j returns
            rule("pre", {"goto": {"target": "g"}}),
            rule("pre", {"drop": None}),  # never: g ends, and goto does not come back
            rule("j", {"mangle": {"key": MARK, "value": 1}}),
            rule("j", {"return": None}),
            rule("j", {"drop": None}),
            rule("g", match(MARK, 7, "!="), {"drop": None}),
        )
    )
    tr = t.trace(pkt())
    assert tr.outcome == Outcome("accept")
    assert tr.mark == 7
    assert tr.fired == ["pre[1]: jump j", "j[1]: return", "pre[3]: goto g", "pre: policy accept"]


def test_nat_is_terminal_and_later_nat_chains_of_the_hook_are_skipped() -> None:
    dnat = {"dnat": {"family": "ip", "addr": "10.1.1.1", "port": 8080}}
    t = Tracer(
        table(
            base("first", "prerouting", -101, "nat"),
            base("second", "prerouting", -100, "nat"),
            base("filter", "forward"),
            rule("first", dnat),
            rule("first", {"drop": None}),
            rule("second", {"dnat": {"family": "ip", "addr": "10.2.2.2"}}),
            rule("filter", match(DADDR, "10.1.1.1"), match(payload("th", "dport"), 8080)),
            rule("filter", match(DADDR, "10.1.1.1"), {"reject": {"type": "tcp reset"}}),
        )
    )
    tr = t.trace(pkt())
    assert tr.outcome == Outcome("reject", ("10.1.1.1", 8080), reject="tcp reset")
    assert "second: skipped, NAT already set up" in tr.fired
    # an IPv4 dnat in an inet table does nothing to an IPv6 packet: the next rule drops it
    tr = t.trace(Packet("2001:db8::1", "2001:db8::2"))
    assert tr.outcome == Outcome("drop")
    assert tr.fired == ["first[1]: drop"]


def test_numgen_is_a_choice_with_its_probability() -> None:
    draw = {"numgen": {"mode": "random", "mod": 3, "offset": 0}}
    t = Tracer(
        table(
            base("pre", "prerouting", -100, "nat"),
            add("map", name="to", type="mark", map="ipv4_addr"),
            add("element", name="to", elem=[[0, "10.0.0.10"], [1, "10.0.0.11"], [2, "10.0.0.12"]]),
            rule("pre", {"mangle": {"key": MARK, "value": draw}}),
            rule("pre", {"dnat": {"family": "ip", "addr": {"map": {"key": MARK, "data": "@to"}}}}),
        )
    )
    assert t.outcomes(pkt()) == {
        Outcome("accept", (f"10.0.0.1{i}", None)): Fraction(1, 3) for i in range(3)
    }
    assert t.trace(pkt(), [2]).outcome.dnat == ("10.0.0.12", None)
    with pytest.raises(NeedsChoice, match="mod 3"):
        t.trace(pkt())
    with pytest.raises(ValueError, match="2 choices given, 1 used"):
        t.trace(pkt(), [0, 0])


UNKNOWN = {
    "a statement": {"counter": None},
    "a meta key": match({"meta": {"key": "skuid"}}, 0),
    "numgen inc": match({"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, 0),
    "an operator": match(MARK, 1, "<"),
    "a raw payload": match({"payload": {"base": "nh", "offset": 0, "len": 8}}, 1),
    "an anonymous vmap": {"vmap": {"key": DADDR, "data": {"set": []}}},
    "a ct key": match({"ct": {"key": "status"}}, "dnat"),
    "a fib form": match({"fib": {"result": "oif", "flags": ["daddr"]}}, "eth0"),
    "a verdict": {"queue": {"num": 1}},
}


@pytest.mark.parametrize("what", sorted(UNKNOWN))
def test_an_unknown_form_raises(what: str) -> None:
    t = Tracer(table(base("pre", "prerouting"), rule("pre", UNKNOWN[what])))
    with pytest.raises(UnknownExpression):
        t.trace(pkt())


def test_what_the_kernel_would_not_load_raises() -> None:
    dnat = {"dnat": {"family": "ip", "addr": "10.0.0.1"}}
    # refused by the fake kernel already as the transaction commits
    with pytest.raises(Refused, match="Operation not supported: dnat in pre"):
        Tracer(table(base("pre", "prerouting"), rule("pre", dnat))).trace(pkt())
    masq = {"masquerade": None}
    with pytest.raises(Invalid, match="masquerade reached from hook prerouting"):
        Tracer(table(base("pre", "prerouting", type="nat"), rule("pre", masq))).trace(pkt())


# ==============================================================================================
# the gateway's forwarding table, traced
# ==============================================================================================
ip = ipaddress.ip_address
NODES = tuple(ip(f"198.18.210.{i}") for i in (11, 12, 13))
NODES6 = tuple(ip(f"fd00:210::{i}") for i in (11, 12, 13))
VIP, VIP6 = "198.18.211.10", "fd00:211::10"
CLIENT, CLIENT6 = "203.0.113.5", "2001:db8::5"


def gw_port(vip: str = VIP, slots: tuple[Any, ...] = NODES, **kw: Any) -> FwdPort:
    kw.setdefault("affinity", False)
    kw.setdefault("source_ranges", ())
    return FwdPort(
        "ns/web", ip(vip), kw.pop("protocol", "TCP"), kw.pop("port", 80), slots=slots, **kw
    )


def gateway(*ports: FwdPort, devices: tuple[str, ...] = ("eth0",), size: int = 3) -> Tracer:
    return Tracer(render_fwd(ports, list(devices), size).to_json_replace())


def flows(t: Tracer, client: str, vip: str, **kw: Any) -> list[tuple[int, str | None]]:
    """(slot, next hop) of 200 flows of one client, by source port."""
    out = []
    for sport in range(20000, 20200):
        tr = t.trace(Packet(client, vip, sport=sport, **kw))
        assert tr.outcome.verdict == "fwd", tr.fired
        (_, slot), *_ = tr.hashes
        # The slot rides in the mark and picks the slot map's element, the node's id (an IPv4
        # node's address), which the nodes map turns into the next hop.
        hop = ipaddress.ip_address(tr.outcome.fwd or "0.0.0.0")
        assert tr.mark == node_ids([hop])[hop]
        out.append((slot, tr.outcome.fwd))
    return out


def test_gateway_forwards_a_vip_port_packet_to_the_node_of_its_slot() -> None:
    slots = (NODES[1], NODES[0], NODES[1], NODES[2], NODES[0])  # a Maglev table, 5 slots
    t = gateway(gw_port(slots=slots), size=5)
    seen = flows(t, CLIENT, VIP)
    assert all(hop == str(slots[slot]) for slot, hop in seen)
    assert {slot for slot, _ in seen} == set(range(5))  # flows spread over every slot
    # the flow hash is over the client's address and port, with the fixed seed
    tr = t.trace(Packet(CLIENT, VIP, sport=20000))
    data, _ = tr.hashes[0]
    assert data == ip(CLIENT).packed + (20000).to_bytes(2, "big") + bytes(2)
    h = jhash(data, FLOW_HASH_SEED) * 5 >> 32
    assert tr.outcome.fwd == str(slots[h])
    # the same flow again: the same node (no conntrack, so this is the hash alone)
    assert t.trace(Packet(CLIENT, VIP, sport=20000)).outcome == tr.outcome


RST = Outcome("reject", reject="tcp reset")
UNREACHABLE = Outcome("reject", reject="icmpx port-unreachable")  # ICMP or ICMPv6, by family


def test_gateway_lets_other_traffic_pass_and_refuses_other_vip_ports() -> None:
    t = gateway(gw_port(), gw_port(VIP6, NODES6))
    assert t.outcomes(Packet(CLIENT, "198.18.211.99")) == {Outcome("accept"): 1}
    assert t.outcomes(Packet(CLIENT, VIP, iif="eth1")) == {Outcome("accept"): 1}  # not a LAN dev
    assert t.outcomes(Packet(CLIENT6, "fd00:211::99")) == {Outcome("accept"): 1}
    assert {hop for _, hop in flows(t, CLIENT6, VIP6)} == {str(n) for n in NODES6}
    # a port or protocol the Service does not have: a reset, a port unreachable
    for client, vip in ((CLIENT, VIP), (CLIENT6, VIP6)):
        assert t.outcomes(Packet(client, vip, dport=81)) == {RST: 1}
        assert t.outcomes(Packet(client, vip, l4proto="udp")) == {UNREACHABLE: 1}
        assert t.outcomes(Packet(client, vip, l4proto="sctp", dport=9)) == {UNREACHABLE: 1}
        # ICMP (echo included) and other protocols: dropped, as before
        for proto in ("icmp", "icmpv6", "gre"):
            assert t.outcomes(Packet(client, vip, l4proto=proto)) == {Outcome("drop"): 1}
        # over the gateway's refusal rate: dropped
        assert t.outcomes(Packet(client, vip, dport=81, over_limit=True)) == {Outcome("drop"): 1}
        # the limit is for refusals only: the Service's port is forwarded whatever the rate
        assert t.trace(Packet(client, vip, over_limit=True)).outcome.verdict == "fwd"
    tr = t.trace(Packet(CLIENT, VIP, dport=81))
    assert tr.fired == [
        'ingress-eth0[1]: vmap @unknown4 "198.18.211.10": goto refuse4',
        "refuse4[1]: jump refuse",
        "refuse[1]: reject tcp reset",
    ]


def test_gateway_never_refuses_a_fragment_it_cannot_place() -> None:
    """A later fragment has no ports: it misses every Service port, even its own, and a refusal
    of it would be false; it is dropped (as before). A first fragment carries the ports."""
    t = gateway(gw_port(), gw_port(VIP6, NODES6))
    for client, vip in ((CLIENT, VIP), (CLIENT6, VIP6)):
        first = t.trace(Packet(client, vip, frag_offset=0))
        assert first.outcome.verdict == "fwd"
        assert t.outcomes(Packet(client, vip, dport=81, frag_offset=0)) == {RST: 1}
        for dport in (80, 81):
            later = Packet(client, vip, l4proto="udp", dport=dport, frag_offset=185)
            assert t.outcomes(later) == {Outcome("drop"): 1}


def test_gateway_refuses_only_clients_the_vips_source_ranges_admit() -> None:
    """A VIP whose every port has source ranges: outsiders learn nothing of it (dropped, as on
    its ports), insiders are refused on its other ports. One open port opens the VIP."""
    inside, outside = "203.0.113.5", "198.51.100.9"
    ranges = (ipaddress.ip_network("203.0.113.0/28"), ipaddress.ip_network("fd00:99::/64"))
    t = gateway(gw_port(source_ranges=ranges), gw_port(VIP6, NODES6, source_ranges=ranges))
    assert t.trace(Packet(inside, VIP)).outcome.verdict == "fwd"
    assert t.outcomes(Packet(outside, VIP)) == {Outcome("drop"): 1}
    assert t.outcomes(Packet(inside, VIP, dport=81)) == {RST: 1}
    assert t.outcomes(Packet(outside, VIP, dport=81)) == {Outcome("drop"): 1}
    assert t.outcomes(Packet("fd00:99::5", VIP6, l4proto="udp")) == {UNREACHABLE: 1}
    assert t.outcomes(Packet(CLIENT6, VIP6, l4proto="udp")) == {Outcome("drop"): 1}
    # ranges of the other family only: nobody of this family is admitted, nor refused
    v4_only = (ipaddress.ip_network("203.0.113.0/28"),)
    t = gateway(gw_port(VIP6, NODES6, source_ranges=v4_only))
    assert t.outcomes(Packet(CLIENT6, VIP6, dport=81)) == {Outcome("drop"): 1}
    # two Services on one VIP, one of them open: everyone is refused on the other ports
    other = FwdPort("ns/open", ip(VIP), "TCP", 443, False, (), NODES)
    t = gateway(gw_port(source_ranges=ranges), other)
    assert t.outcomes(Packet(outside, VIP, dport=81)) == {RST: 1}
    assert t.outcomes(Packet(outside, VIP)) == {Outcome("drop"): 1}  # its own port still is
    # a port without a healthy node stays dropped (fail-closed), its other ports are refused
    t = gateway(gw_port(slots=()))
    assert t.outcomes(Packet(CLIENT, VIP)) == {Outcome("drop"): 1}
    assert t.outcomes(Packet(CLIENT, VIP, dport=81)) == {RST: 1}


def test_gateway_tracer_limit_and_fragment_forms() -> None:
    """The forms the refusal uses, by themselves: ``limit`` (within / over), the IPv4 fragment
    offset under its flags, the IPv6 fragment header (absent: the rule stops)."""
    w = {"family": "netdev", "table": "t"}
    frag4 = {"&": [payload("ip", "frag-off"), 0x1FFF]}
    frag6 = {"exthdr": {"name": "frag", "field": "frag-off"}}
    lim = {"rate": 1, "burst": 5, "per": "second"}
    exprs = [
        [{"limit": {**lim, "inv": True}}, {"drop": None}],
        [match(frag4, 0, "!="), {"drop": None}],
        [match(frag6, 0, "!="), {"drop": None}],
        [match(payload("ip", "frag-off"), 0x4000), {"accept": None}],  # DF, not a fragment
        [{"limit": lim}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}],
    ]
    t = Tracer(
        [
            {"add": {"table": {"family": "netdev", "name": "t"}}},
            {
                "add": {
                    "chain": {
                        **w,
                        "name": "in",
                        "type": "filter",
                        "hook": "ingress",
                        "dev": "eth0",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            *({"add": {"rule": {**w, "chain": "in", "expr": e}}} for e in exprs),
        ]
    )
    assert t.trace(pkt(over_limit=True)).fired == ["in[0]: drop"]
    assert t.trace(pkt()).fired == ["in[3]: accept"]
    assert t.trace(pkt(frag_offset=0)).outcome == UNREACHABLE  # MF set, offset 0
    assert t.trace(pkt(frag_offset=3)).fired == ["in[1]: drop"]
    assert t.trace(Packet(CLIENT6, VIP6, frag_offset=3)).fired == ["in[2]: drop"]
    assert t.trace(Packet(CLIENT6, VIP6, frag_offset=0)).outcome == UNREACHABLE
    assert t.trace(Packet(CLIENT6, VIP6)).outcome == UNREACHABLE  # no fragment header
    bad = {"limit": {**lim, "rate_unit": "kbytes"}}
    with pytest.raises(UnknownExpression):
        Tracer(table(base("pre", "prerouting"), rule("pre", bad))).trace(pkt())


def test_gateway_affinity_sends_every_flow_of_a_client_to_one_node() -> None:
    t = gateway(gw_port(affinity=True))
    assert len(set(flows(t, CLIENT, VIP))) == 1
    assert t.trace(Packet(CLIENT, VIP)).hashes[0][0] == ip(CLIENT).packed
    clients = {t.trace(Packet(f"203.0.113.{i}", VIP)).outcome.fwd for i in range(1, 60)}
    assert clients == {str(n) for n in NODES}


def test_gateway_source_ranges_no_nodes_and_nat_mode() -> None:
    ranges = (ipaddress.ip_network("203.0.113.0/28"),)
    t = gateway(gw_port(source_ranges=ranges))
    assert t.trace(Packet("203.0.113.5", VIP)).outcome.verdict == "fwd"
    assert t.outcomes(Packet("203.0.113.99", VIP)) == {Outcome("drop"): 1}
    assert gateway(gw_port(slots=())).outcomes(Packet(CLIENT, VIP)) == {Outcome("drop"): 1}
    nat = gw_port(slots=(), source_ranges=ranges, to_stack=True)
    t = gateway(nat)
    assert t.outcomes(Packet("203.0.113.5", VIP)) == {Outcome("accept"): 1}  # to the IP stack
    assert t.outcomes(Packet("203.0.113.99", VIP)) == {Outcome("drop"): 1}


def test_gateway_a_node_leaving_moves_only_its_flows() -> None:
    """The differ's change, applied to the fake kernel's state, traced: flows of the slots the
    node held move, every other flow stays where it was."""
    a, b, c = NODES
    before, after = (a, b, c, a, b, c, a), (a, b, a, a, b, b, a)
    old = render_fwd([gw_port(slots=before)], ["eth0"], 7)
    new = render_fwd([gw_port(slots=after)], ["eth0"], 7, previous=old)
    k = Kernel.load(old.to_json_replace())
    t_old = Tracer(k)
    was = {sport: t_old.trace(Packet(CLIENT, VIP, sport=sport)).outcome.fwd for sport in range(300)}
    k.run(diff_fwd(old, new))
    t_new = Tracer(k)
    now = {sport: t_new.trace(Packet(CLIENT, VIP, sport=sport)).outcome.fwd for sport in range(300)}
    moved = Counter((was[s], now[s]) for s in was if was[s] != now[s])
    assert set(moved) == {(str(c), str(a)), (str(c), str(b))}
    assert str(c) not in now.values()

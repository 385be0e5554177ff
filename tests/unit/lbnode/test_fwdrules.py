"""The gateway's forwarding table as data: the render, the differ, and (by a strict model of
nftables' reference rules) that a diff or a replace turns one table into the other."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from portico_lbnode.flowrules import TCP_TIMEOUT, V6_KEY_SEED, helpers
from portico_lbnode.flowrules import helper_rules as flow_helper_rules
from portico_lbnode.fwddiff import diff_fwd, parse_listing
from portico_lbnode.fwdmemo import RenderMemo
from portico_lbnode.fwdrules import (
    DEFAULT_FLOW_LIMIT,
    FLOW_HASH_SEED,
    REFUSE_BURST,
    REFUSE_RATE,
    BaseChain,
    Collection,
    FwdPort,
    FwdRules,
    FwdRulesError,
    admit_set,
    render_fwd,
    service_chain,
    source_set,
    vip_chain,
)

from ..nftkernel import Kernel
from ..nftkernel import canon as _canon

ip = ipaddress.ip_address
net = ipaddress.ip_network
A, B, C, D = (ip(f"198.18.210.{i}") for i in (11, 12, 13, 14))
A6, B6, C6 = (ip(f"fd00:210::{i}") for i in (11, 12, 13))
VIP = ip("198.18.211.10")
VIP6 = ip("fd00:211::10")


def port(
    service: str = "ns/web",
    vip: Any = VIP,
    protocol: str = "TCP",
    number: int = 80,
    slots: tuple[Any, ...] = (A, B, C),
    affinity: bool = False,
    ranges: tuple[str, ...] = (),
) -> FwdPort:
    return FwdPort(service, vip, protocol, number, affinity, tuple(net(r) for r in ranges), slots)


def rules_of(r: FwdRules, chain: str) -> list[Any]:
    return [json.loads(x) for x in r.rules[chain]]


def slot_maps(r: FwdRules) -> dict[str, tuple[int, tuple[str, ...]]]:
    return r.slot_maps()


def only(xs: Any) -> Any:
    (x,) = xs
    return x


def ipv4(field: str) -> dict[str, Any]:
    return {"payload": {"protocol": "ip", "field": field}}


# ==============================================================================================
# the render
# ==============================================================================================
def test_small_render_as_data() -> None:
    p = port()
    r = render_fwd([p], ["eth0"], 3)
    svc = service_chain(p)
    slots = only(slot_maps(r))
    assert {n: c for n, c in r.chains.items() if not n.startswith("pin-")} == {
        "ingress-eth0": BaseChain("eth0", 0),
        "refuse": None,
        "refuse4": None,
        "refuse6": None,
        svc: None,
    }
    assert {n for n in r.chains if n.startswith("pin-")} == set(helpers())
    l4proto = {"meta": {"key": "l4proto"}}
    assert rules_of(r, "ingress-eth0") == [
        [
            {
                "vmap": {
                    "key": {
                        "concat": [
                            ipv4("daddr"),
                            l4proto,
                            {"payload": {"protocol": "th", "field": "dport"}},
                        ]
                    },
                    "data": "@svc4",
                }
            }
        ],
        [{"vmap": {"key": ipv4("daddr"), "data": "@unknown4"}}],
        [
            {
                "vmap": {
                    "key": {
                        "concat": [
                            {"payload": {"protocol": "ip6", "field": "daddr"}},
                            l4proto,
                            {"payload": {"protocol": "th", "field": "dport"}},
                        ]
                    },
                    "data": "@svc6",
                }
            }
        ],
        [
            {
                "vmap": {
                    "key": {"payload": {"protocol": "ip6", "field": "daddr"}},
                    "data": "@unknown6",
                }
            }
        ],
    ]
    mark = {"meta": {"key": "mark"}}

    def tcp(fld: str, proto: str = "tcp") -> dict[str, Any]:
        return {"payload": {"protocol": proto, "field": fld}}

    def hashed(l4: str) -> list[dict[str, Any]]:
        flow = {"concat": [ipv4("saddr"), tcp("sport", l4)]}
        jhash = {"jhash": {"mod": 3, "seed": FLOW_HASH_SEED, "expr": flow}}
        to_id = {"map": {"key": mark, "data": "@" + slots}}
        return [
            {"mangle": {"key": mark, "value": jhash}},
            {"mangle": {"key": mark, "value": to_id}},
        ]

    fwd = {
        "fwd": {
            "dev": {"meta": {"key": "iif"}},
            "family": "ip",
            "addr": {"map": {"key": mark, "data": "@nodes4"}},
        }
    }
    est = only(n for n in r.collections if n.startswith("est-"))
    key = {"concat": [ipv4("saddr"), tcp("sport"), ipv4("daddr"), tcp("dport")]}
    pinned = [
        {"mangle": {"key": mark, "value": {"map": {"key": key, "data": "@flows4-tcp"}}}},
        {"match": {"op": "==", "left": mark, "right": "@" + est}},
    ]
    syn = {"match": {"op": "==", "left": {"&": [tcp("flags"), ["syn", "ack"]]}, "right": "syn"}}
    assert rules_of(r, svc) == [
        [{"counter": "forwarded-198.18.211.10"}],  # everything past it is forwarded (vipstats)
        [
            {"match": {"op": "!", "left": tcp("flags"), "right": ["fin", "rst"]}},
            *pinned,
            {"goto": {"target": "pin-refresh4-tcp"}},
        ],
        [
            {"match": {"op": "in", "left": tcp("flags"), "right": ["fin", "rst"]}},
            *pinned,
            {"goto": {"target": "pin-close4-tcp"}},
        ],
        [syn, *hashed("tcp"), fwd],  # a new connection: the hash alone, nothing stored
        [  # an unpinned FIN or RST: the hash alone, nothing stored
            {"match": {"op": "in", "left": tcp("flags"), "right": ["fin", "rst"]}},
            *hashed("tcp"),
            fwd,
        ],
        [*hashed("th"), {"goto": {"target": "pin-add4-tcp"}}],  # not pinned (yet): pin it
    ]
    local = [
        {"match": {"op": "==", "left": mark, "right": "@local-nodes"}},
        {"mangle": {"key": mark, "value": 0}},
        {"accept": None},
    ]
    assert rules_of(r, "pin-add4-tcp") == [
        ["add @flows4-tcp { ip saddr . th sport . ip daddr . th dport : meta mark }"],
        [fwd],
        local,  # reached only when the fwd missed: this gateway's own node (none here)
    ]
    assert r.elements["local-nodes"] == {}
    assert rules_of(r, "pin-close4-tcp")[0] == [
        "update @flows4-tcp { ip saddr . th sport . ip daddr . th dport timeout 10s : meta mark }"
    ]
    flows = r.collections["flows4-tcp"]
    assert flows == Collection(
        ("ipv4_addr", "inet_service", "ipv4_addr", "inet_service"),
        "mark",
        ("timeout",),
        DEFAULT_FLOW_LIMIT,
        TCP_TIMEOUT,
    )
    assert flows.dynamic and r.elements["flows4-tcp"] == {}
    ids = {str(n): int(n) for n in (A, B, C)}  # an IPv4 node's id is its address
    assert {int(k): json.loads(v or "") for k, v in r.elements["nodes4"].items()} == {
        v: k for k, v in ids.items()
    }
    assert set(map(int, r.elements[est])) == set(ids.values())
    assert r.collections == {
        "svc4": Collection(("ipv4_addr", "inet_proto", "inet_service"), "verdict"),
        "unknown4": Collection("ipv4_addr", "verdict"),
        "svc6": Collection(("ipv6_addr", "inet_proto", "inet_service"), "verdict"),
        "unknown6": Collection("ipv6_addr", "verdict"),
        slots: Collection("mark", "mark"),
        "nodes4": Collection("mark", "ipv4_addr"),
        "nodes6": Collection("mark", "ipv6_addr"),
        est: Collection("mark"),
        "local-nodes": Collection("mark"),  # empty: this gateway is no node
        **{n: r.collections[n] for n in r.collections if n.startswith("flows")},
    }
    decoded = {
        n: {json.loads(k): v and json.loads(v) for k, v in r.elements[n].items()}
        for n in ("unknown4", slots, "svc6", "unknown6")
    }
    assert decoded["unknown4"] == {"198.18.211.10": {"goto": {"target": "refuse4"}}}
    assert r.elements["svc4"] == {
        json.dumps({"concat": ["198.18.211.10", "tcp", 80]}, separators=(",", ":")): json.dumps(
            {"goto": {"target": svc}}, separators=(",", ":")
        )
    }
    assert decoded[slots] == {0: int(A), 1: int(B), 2: int(C)}
    assert slot_maps(r)[slots] == (4, ("198.18.210.11", "198.18.210.12", "198.18.210.13"))
    assert decoded["svc6"] == decoded["unknown6"] == {}
    assert r.skipped == ()


def test_other_packets_to_a_vip_are_refused_once_checked_and_rate_limited() -> None:
    r = render_fwd([port()], ["eth0"], 3)
    l4proto = {"meta": {"key": "l4proto"}}
    port_protocols = {"set": ["tcp", "udp", "sctp"]}
    frag4 = {"&": [ipv4("frag-off"), 0x1FFF]}  # the offset: DF and MF left out
    assert rules_of(r, "refuse4") == [
        [{"match": {"op": "!=", "left": frag4, "right": 0}}, {"drop": None}],
        [
            {"match": {"op": "==", "left": l4proto, "right": port_protocols}},
            {"jump": {"target": "refuse"}},
        ],
        [{"drop": None}],  # ICMP, and anything refuse left: dropped
    ]
    frag6 = {"exthdr": {"name": "frag", "field": "frag-off"}}
    assert rules_of(r, "refuse6")[0] == [
        {"match": {"op": "!=", "left": frag6, "right": 0}},
        {"drop": None},
    ]
    assert rules_of(r, "refuse6")[1:] == rules_of(r, "refuse4")[1:]
    limit = {"rate": REFUSE_RATE, "burst": REFUSE_BURST, "per": "second", "inv": True}
    assert (REFUSE_RATE, REFUSE_BURST) == (100, 50)
    assert rules_of(r, "refuse") == [
        [{"limit": limit}, {"drop": None}],
        [
            {"match": {"op": "==", "left": l4proto, "right": "tcp"}},
            {"reject": {"type": "tcp reset"}},
        ],
        [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}],
    ]


def test_a_vip_whose_ports_all_have_ranges_refuses_only_their_union() -> None:
    a = port("ns/a", ranges=("198.18.0.0/16", "fd00::/8"))
    b = port("ns/b", number=443, ranges=("198.19.0.0/16", "203.0.113.7/32"))
    v6 = port("ns/a", VIP6, slots=(A6, B6, C6), ranges=("198.18.0.0/16",))
    r = render_fwd([a, b, v6], ["eth0"], 3)
    chain, adm = vip_chain(VIP), admit_set(VIP)
    assert r.collections[adm] == Collection("ipv4_addr", flags=("interval",))
    assert set(r.elements[adm]) == {
        _canon({"prefix": {"addr": "198.18.0.0", "len": 15}}),
        _canon("203.0.113.7"),
    }
    assert rules_of(r, chain) == [
        [{"match": {"op": "!=", "left": ipv4("saddr"), "right": "@" + adm}}, {"drop": None}],
        [{"goto": {"target": "refuse4"}}],
    ]
    assert json.loads(r.elements["unknown4"][_canon(str(VIP))]) == {"goto": {"target": chain}}
    # IPv6 ranges: none, so no IPv6 client is refused (nor admitted)
    assert r.elements[admit_set(VIP6)] == {}
    # a port of the VIP open to everyone opens its other ports' refusal to everyone too
    r2 = render_fwd([a, port("ns/c", number=8080)], ["eth0"], 3)
    assert chain not in r2.chains and adm not in r2.collections
    assert json.loads(r2.elements["unknown4"][_canon(str(VIP))]) == {"goto": {"target": "refuse4"}}


def test_render_is_deterministic_and_names_are_stable() -> None:
    ports = [port(), port(number=443, slots=(B, A, C)), port("ns/db", VIP6, slots=(A6, B6, C6))]
    one = render_fwd(ports, ["eth0"], 3)
    two = render_fwd(list(reversed(ports)), ["eth0"], 3)
    assert one == two
    assert service_chain(port()) == service_chain(port(slots=()))  # slots are not identity
    assert service_chain(port()) != service_chain(port(number=81))
    assert service_chain(port()) != service_chain(port(protocol="UDP"))
    assert service_chain(port()) != service_chain(port("ns/other"))
    assert service_chain(port()) != service_chain(port(vip=ip("198.18.211.11")))


def test_the_hash_seed_is_fixed_in_every_forwarding_rule() -> None:
    r = render_fwd([port(), port("ns/b", VIP6, slots=(A6, B6, C6))], ["eth0"], 3)
    hashes = [
        st["mangle"]["value"]["jhash"]
        for rs in r.rules.values()
        for x in rs
        for st in json.loads(x)
        if isinstance(st, dict) and "jhash" in str(st.get("mangle"))
    ]
    # SYN, FIN/RST and miss rules of each port; the IPv6 pins' key (pinned and FIN rules)
    assert len(hashes) == 3 * 2 + 2
    assert all(h["seed"] in (FLOW_HASH_SEED, V6_KEY_SEED) for h in hashes)
    assert sum(h["seed"] == FLOW_HASH_SEED for h in hashes) == 6


def test_affinity_hashes_the_client_address_only() -> None:
    r = render_fwd(
        [port(affinity=True), port("ns/b", VIP6, slots=(A6, B6, C6), affinity=True)], ["e"], 3
    )
    v4 = rules_of(r, service_chain(port(affinity=True)))[-1][0]["mangle"]["value"]["jhash"]
    assert v4["expr"] == ipv4("saddr")
    v6 = rules_of(r, service_chain(port("ns/b", VIP6)))[-1]
    assert v6[0]["mangle"]["value"]["jhash"]["expr"] == {
        "payload": {"protocol": "ip6", "field": "saddr"}
    }
    assert v6[-1] == {"goto": {"target": "pin-add6-tcp"}}
    assert rules_of(r, "pin-add6-tcp")[1][0]["fwd"]["family"] == "ip6"


def test_ports_with_equal_slot_lists_share_one_map() -> None:
    same = [port(f"ns/s{i}", ip(f"198.18.212.{i}")) for i in range(100)]
    other = port("ns/x", ip("198.18.213.1"), slots=(A, A, B))
    v6 = [port(f"ns/v{i}", ip(f"fd00:212::{i + 1}"), slots=(A6, B6, C6)) for i in range(3)]
    r = render_fwd([*same, other, *v6], ["eth0"], 3)
    maps = slot_maps(r)
    assert len(maps) == 3
    assert sorted(maps.values()) == sorted(
        [
            (4, ("198.18.210.11", "198.18.210.12", "198.18.210.13")),
            (4, ("198.18.210.11", "198.18.210.11", "198.18.210.12")),
            (6, ("fd00:210::11", "fd00:210::12", "fd00:210::13")),
        ]
    )
    # slots, svc + vip per port, nodes (3 + 3), est sets (3 + 2 + 3 ids)
    assert r.counts()["elements"] == 3 * 3 + 104 * 2 + 6 + 8
    refs = {
        json.loads(r.rules[service_chain(p)][-1])[1]["mangle"]["value"]["map"]["data"] for p in same
    }
    assert len(refs) == 1


def test_source_ranges_are_an_interval_set_of_the_ports_family() -> None:
    ranges = ("198.18.0.0/16", "198.19.0.0/16", "10.0.0.1/32", "10.0.0.0/8", "fd00::/8")
    p = port(ranges=ranges)
    r = render_fwd([p], ["eth0"], 3)
    src = source_set(p)
    assert r.collections[src] == Collection("ipv4_addr", flags=("interval",))
    assert set(r.elements[src]) == {
        _canon({"prefix": {"addr": "10.0.0.0", "len": 8}}),
        _canon({"prefix": {"addr": "198.18.0.0", "len": 15}}),  # two /16 collapsed, no v6
    }
    first, *_, last = rules_of(r, service_chain(p))
    assert first == [
        {"match": {"op": "!=", "left": ipv4("saddr"), "right": "@" + src}},
        {"drop": None},
    ]
    assert last[-1] == {"goto": {"target": "pin-add4-tcp"}}
    # a single address is listed by the kernel as an address, not a /32
    p2 = port("ns/one", ranges=("203.0.113.7/32",))
    r2 = render_fwd([p2], ["eth0"], 3)
    assert list(r2.elements[source_set(p2)]) == ['"203.0.113.7"']
    # ranges of the other family only: the set stays empty, every client is dropped
    p3 = port("ns/v6only", ranges=("fd00::/8",))
    r3 = render_fwd([p3], ["eth0"], 3)
    assert r3.elements[source_set(p3)] == {}
    assert rules_of(r3, service_chain(p3))[0][0]["match"]["op"] == "!="
    assert source_set(port()) not in render_fwd([port()], ["eth0"], 3).collections


def test_a_port_without_healthy_nodes_is_dropped_and_has_no_map() -> None:
    p = port(slots=(), ranges=("198.18.0.0/15",))
    r = render_fwd([p], ["eth0"], 3)
    assert rules_of(r, service_chain(p))[-1] == [{"drop": None}]
    assert slot_maps(r) == {}
    assert list(r.elements["unknown4"]) == ['"198.18.211.10"']  # its other ports refused
    assert len(r.elements["svc4"]) == 1


def test_one_chain_set_serves_every_device() -> None:
    r = render_fwd([port()], ["eth0", "eth1"], 3)
    assert {n for n, c in r.chains.items() if c is not None} == {"ingress-eth0", "ingress-eth1"}
    assert r.rules["ingress-eth0"] == r.rules["ingress-eth1"]
    # refuse, refuse4/6, the port, the pin helpers
    assert sum(1 for c in r.chains.values() if c is None) == 4 + len(helpers())


def test_bad_input_is_refused() -> None:
    with pytest.raises(FwdRulesError, match="slots"):
        render_fwd([port(slots=(A, B))], ["eth0"], 3)
    with pytest.raises(FwdRulesError, match="family"):
        render_fwd([port(slots=(A, B6, C))], ["eth0"], 3)
    with pytest.raises(FwdRulesError, match="protocol"):
        render_fwd([port(protocol="ICMP")], ["eth0"], 3)
    with pytest.raises(FwdRulesError, match="device"):
        render_fwd([port()], ["a-device-name-too-long"], 3)


def test_a_claimed_vip_port_goes_to_the_first_service() -> None:
    first, second = port("ns/a", slots=(A, A, A)), port("ns/b", slots=(B, B, B))
    r = render_fwd([second, first], ["eth0"], 3)
    assert r.skipped == (second,)
    assert service_chain(second) not in r.chains
    assert list(slot_maps(r).values()) == [(4, ("198.18.210.11",) * 3)]


# ==============================================================================================
# the differ
# ==============================================================================================
def test_a_node_leaving_touches_only_the_slots_that_held_it() -> None:
    before = (A, B, C, A, B, C, D)
    after = (A, B, A, A, B, D, D)  # C's slots (2 and 5) went to A and D, the rest stayed
    ports = lambda s: [port(f"ns/s{i}", ip(f"198.18.212.{i}"), slots=s) for i in range(50)]  # noqa: E731
    old = render_fwd(ports(before), ["eth0"], 7)
    new = render_fwd(ports(after), ["eth0"], 7, previous=old)
    assert list(slot_maps(new)) == list(slot_maps(old))  # the same map, changed in place
    cmds = diff_fwd(old, new)
    name = only(slot_maps(old))
    w = {"family": "netdev", "table": "portico-gw", "name": name}
    est = only(n for n in old.collections if n.startswith("est-"))
    assert sorted(map(int, new.elements[est])) == [int(n) for n in (A, B, D)]  # in place too
    wn = {**w, "name": "nodes4"}
    we = {**w, "name": est}
    assert cmds == [
        {"delete": {"element": {**wn, "elem": [int(C)]}}},
        {"delete": {"element": {**w, "elem": [2, 5]}}},
        {"delete": {"element": {**we, "elem": [int(C)]}}},
        {"add": {"element": {**w, "elem": [[2, int(A)], [5, int(D)]]}}},
    ]
    assert diff_fwd(new, new) == []
    assert simulate(old, cmds).same_as(new)


def test_without_previous_a_changed_slot_list_is_a_new_map_and_chain_rewrites() -> None:
    other = port("ns/b", ip("198.18.211.11"), slots=(A, B, C))
    old = render_fwd([port(slots=(A, B, C)), other], ["eth0"], 3)
    new = render_fwd([port(slots=(A, B, A)), other], ["eth0"], 3)
    cmds = diff_fwd(old, new)
    kinds = [next(iter(next(iter(c.values())))) for c in cmds]
    # one flush + one rule for the Service's chain, the new map and its elements; the old map is
    # still used by ns/b and stays
    assert sorted(kinds) == ["chain", "element", "element", "map", *["rule"] * 6, "set"]
    assert len(slot_maps(new)) == 2
    assert simulate(old, cmds).same_as(new)


def test_a_divergent_port_leaves_the_shared_map_to_the_others() -> None:
    ports = [port(f"ns/s{i}", ip(f"198.18.212.{i}")) for i in range(5)]
    old = render_fwd(ports, ["eth0"], 3)
    changed = [*ports[:4], port("ns/s4", ip("198.18.212.4"), slots=(A, A, A))]
    new = render_fwd(changed, ["eth0"], 3, previous=old)
    shared = only(slot_maps(old))
    assert slot_maps(new)[shared] == slot_maps(old)[shared]
    assert len(slot_maps(new)) == 2
    cmds = diff_fwd(old, new)
    rewritten = {c["add"]["rule"]["chain"] for c in cmds if "rule" in c.get("add", {})}
    assert rewritten == {service_chain(changed[4])}
    assert simulate(old, cmds).same_as(new)


def test_a_reused_name_never_collides_with_a_content_name() -> None:
    r1 = render_fwd([port(slots=(A, B, C))], ["eth0"], 3)
    r2 = render_fwd([port(slots=(A, B, A))], ["eth0"], 3, previous=r1)  # in place: name of ABC
    assert list(slot_maps(r2)) == list(slot_maps(r1))
    r3 = render_fwd(
        [port(slots=(A, B, A)), port("ns/b", ip("198.18.211.11"), slots=(A, B, C))],
        ["eth0"],
        3,
        previous=r2,
    )
    assert len(slot_maps(r3)) == 2
    assert simulate(r2, diff_fwd(r2, r3)).same_as(r3)


def test_removing_a_service_removes_its_chain_elements_and_unused_map() -> None:
    keep = port("ns/keep", ip("198.18.212.1"), slots=(A, B, C))
    gone = port("ns/gone", ip("198.18.212.2"), slots=(C, C, C), ranges=("198.18.0.0/15",))
    old = render_fwd([keep, gone], ["eth0"], 3)
    new = render_fwd([keep], ["eth0"], 3, previous=old)
    cmds = diff_fwd(old, new)
    gone_map = only(set(slot_maps(old)) - set(slot_maps(new)))
    gone_est = only(n for n in set(old.collections) - set(new.collections) if "est-" in n)
    w = {"family": "netdev", "table": "portico-gw"}
    assert cmds == [
        {"flush": {"chain": {**w, "name": service_chain(gone)}}},
        {"flush": {"chain": {**w, "name": vip_chain(gone.vip)}}},
        {
            "delete": {
                "element": {**w, "name": "svc4", "elem": [{"concat": ["198.18.212.2", "tcp", 80]}]}
            }
        },
        {"delete": {"element": {**w, "name": "unknown4", "elem": ["198.18.212.2"]}}},
        {"delete": {"chain": {**w, "name": service_chain(gone)}}},
        {"delete": {"chain": {**w, "name": vip_chain(gone.vip)}}},
        {"delete": {"map": {**w, "name": gone_map}}},
        {"delete": {"set": {**w, "name": gone_est}}},
        {"delete": {"set": {**w, "name": source_set(gone)}}},
        {"delete": {"set": {**w, "name": admit_set(gone.vip)}}},
        {"delete": {"counter": {**w, "name": "forwarded-198.18.212.2"}}},  # its VIP went
    ]
    assert simulate(old, cmds).same_as(new)
    # a map another port still uses stays
    twin = port("ns/twin", ip("198.18.212.3"), slots=(A, B, C))
    old2 = render_fwd([keep, twin], ["eth0"], 3)
    cmds2 = diff_fwd(old2, render_fwd([keep], ["eth0"], 3, previous=old2))
    assert not any("map" in c.get("delete", {}) for c in cmds2)


def test_losing_every_node_rewrites_the_chain_to_drop() -> None:
    old = render_fwd([port()], ["eth0"], 3)
    new = render_fwd([port(slots=())], ["eth0"], 3, previous=old)
    cmds = diff_fwd(old, new)
    assert next(c for c in cmds if "rule" in c.get("add", {}))["add"]["rule"]["expr"] == [
        {"drop": None}
    ]
    assert simulate(old, cmds).same_as(new)


# ==============================================================================================
# the differ and the replace run on a strict fake of the kernel (nftkernel.Kernel)
# ==============================================================================================
def helper_rules() -> list[dict[str, Any]]:
    """The pin helpers' rules, which ``FwdTable`` writes as nft text after a replace: in the
    fake kernel, as the JSON the kernel lists them in (a map statement as text)."""
    w = {"family": "netdev", "table": "portico-gw"}
    return [
        {"add": {"rule": {**w, "chain": chain, "expr": list(rule)}}}
        for chain in helpers()
        for rule in flow_helper_rules(chain)
    ]


def replace(m: Kernel, r: FwdRules, current: FwdRules | None = None) -> None:
    """A full replace as ``FwdTable`` runs it: the JSON, then the helpers' rules."""
    m.run(r.to_json_replace(current)["nftables"])
    w = {"family": "netdev", "table": "portico-gw"}
    m.run([{"flush": {"chain": {**w, "name": c}}} for c in helpers()] + helper_rules())


def load(r: FwdRules) -> Kernel:
    m = Kernel()
    replace(m, r)
    return m


def simulate(old: FwdRules, cmds: list[dict[str, Any]]) -> FwdRules:
    m = load(old)
    assert parse_listing(m.listing()).same_as(old)
    m.run(cmds)
    return parse_listing(m.listing())


# -- generated tables --------------------------------------------------------------------------
V4_NODES = [A, B, C, D]
V6_NODES = [A6, B6, C6]
SIZE = 5


@st.composite
def port_lists(draw: Any) -> list[FwdPort]:
    out = []
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["ns/a", "ns/b", "ns/c", "ns/d"]),
                st.sampled_from([VIP, ip("198.18.211.11"), VIP6]),
                st.sampled_from(["TCP", "UDP", "SCTP"]),
                st.sampled_from([80, 443]),
            ),
            max_size=8,
            unique=True,
        )
    )
    for service, vip, proto, number in keys:
        nodes = V4_NODES if vip.version == 4 else V6_NODES
        pattern = draw(st.sampled_from(["none", "shared", "free"]))
        if pattern == "none":
            slots: tuple[Any, ...] = ()
        elif pattern == "shared":  # as Cluster Services over the same healthy nodes
            healthy = draw(st.integers(1, len(nodes)))
            slots = tuple(nodes[i % healthy] for i in range(SIZE))
        else:
            slots = tuple(draw(st.lists(st.sampled_from(nodes), min_size=SIZE, max_size=SIZE)))
        ranges = draw(st.sampled_from([(), ("198.18.0.0/15",), ("10.0.0.0/8", "fd00::/8")]))
        out.append(port(service, vip, proto, number, slots, draw(st.booleans()), ranges))
    return out


devices = st.sampled_from([["eth0"], ["eth0", "eth1"], ["eth1"]])


@settings(max_examples=300, deadline=None)
@given(port_lists(), port_lists(), devices, devices, st.booleans())
def test_a_diff_turns_the_old_table_into_the_new(
    a: list[FwdPort], b: list[FwdPort], dev_a: list[str], dev_b: list[str], reuse: bool
) -> None:
    old = render_fwd(a, dev_a, SIZE)
    new = render_fwd(b, dev_b, SIZE, previous=old if reuse else None)
    got = simulate(old, diff_fwd(old, new))
    assert got.same_as(new), (got, new)
    assert diff_fwd(new, new) == []


@settings(max_examples=200, deadline=None)
@given(port_lists(), port_lists(), devices, devices)
def test_a_replace_turns_any_table_into_the_new(
    a: list[FwdPort], b: list[FwdPort], dev_a: list[str], dev_b: list[str]
) -> None:
    old, new = render_fwd(a, dev_a, SIZE), render_fwd(b, dev_b, SIZE)
    m = load(old)
    replace(m, new, parse_listing(m.listing()))
    assert parse_listing(m.listing()).same_as(new)


@settings(max_examples=200, deadline=None)
@given(port_lists(), port_lists())
def test_every_slot_list_is_held_by_exactly_one_map(a: list[FwdPort], b: list[FwdPort]) -> None:
    old = render_fwd(a, ["eth0"], SIZE)
    new = render_fwd(b, ["eth0"], SIZE, previous=old)
    held = sorted(new.slot_maps().values())
    wanted = sorted(
        {(p.vip.version, tuple(map(str, p.slots))) for p in b if p.slots and p not in new.skipped}
    )
    assert held == wanted


def test_a_nat_mode_port_is_handed_to_the_ip_stack_after_its_source_check() -> None:
    p = FwdPort("ns/nat", VIP, "TCP", 80, False, (net("198.18.1.0/24"),), (), to_stack=True)
    r = render_fwd([p], ["eth0"], 3)
    # counted, then handed over (``vipstats``)
    assert rules_of(r, service_chain(p))[-1] == [
        {"counter": "forwarded-198.18.211.10"},
        {"accept": None},
    ]
    assert len(rules_of(r, service_chain(p))) == 2  # the source range check stays first
    assert slot_maps(r) == {}
    # Back to direct server return: the chain's verdict changes, in place.
    back = render_fwd([port(service="ns/nat", slots=(A, B, C))], ["eth0"], 3, previous=r)
    assert any(("flush" in c or "add" in c) for c in diff_fwd(r, back))


# A few slot lists as objects shared by every port and render of an example, as the gateway's
# Maglev cache hands them out (``fwdmemo`` knows a slot list by its tuple), and equal copies.
_SHARED = {
    (fam, healthy): tuple((V4_NODES if fam == 4 else V6_NODES)[i % healthy] for i in range(SIZE))
    for fam in (4, 6)
    for healthy in (1, 2, 3)
}


@st.composite
def memo_port_lists(draw: Any) -> list[FwdPort]:
    out = []
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["ns/a", "ns/b", "ns/c"]),
                st.sampled_from([VIP, VIP6]),
                st.sampled_from(["TCP", "UDP"]),
                st.sampled_from([80, 443]),
            ),
            max_size=6,
            unique=True,
        )
    )
    for service, vip, proto, number in keys:
        nodes = V4_NODES if vip.version == 4 else V6_NODES
        healthy = draw(st.integers(0, 3))
        slots: tuple[Any, ...] = ()
        if healthy:
            slots = _SHARED[(vip.version, healthy)]
            if draw(st.booleans()):
                slots = tuple(slots)[:-1] + slots[-1:]  # equal, another object
        est = tuple(draw(st.lists(st.sampled_from(nodes), max_size=2, unique=True)))
        ranges = draw(st.sampled_from([(), ("198.18.0.0/15",), ("10.0.0.0/8", "fd00::/8")]))
        p = port(service, vip, proto, number, slots, draw(st.booleans()), ranges)
        to_stack = draw(st.booleans()) and not slots
        out.append(dataclasses.replace(p, established=est, to_stack=to_stack))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(memo_port_lists(), min_size=1, max_size=4), devices)
def test_a_render_with_a_memo_equals_one_without(
    steps: list[list[FwdPort]], dev: list[str]
) -> None:
    """``fwdmemo``: each render reuses what the last one made from the same input; the result
    is what a render without the memo makes, step after step (previous = the last render)."""
    memo = RenderMemo()
    with_memo = without = None
    for ports in steps:
        before = with_memo
        with_memo = render_fwd(ports, dev, SIZE, previous=with_memo, memo=memo)
        without = render_fwd(ports, dev, SIZE, previous=without)
        assert with_memo.same_as(without), (with_memo, without)
        if before is not None:  # renders share what did not change: the diff skips it
            assert simulate(before, diff_fwd(before, with_memo)).same_as(with_memo)
        assert with_memo.skipped == without.skipped
        assert memo.last_slot_maps == without.slot_maps()

# ruff: noqa: E501
"""Golden rendered rulesets and the behaviour of the node rules renderer and differ (pure).

Goldens are written in nft's own syntax, printed from the libnftables JSON by ``dump`` below,
the way kube-proxy's nftables proxier tests compare dumps. That the kernel lists the render back
unchanged is checked in tests/lab/test_nodeagent_nft.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from portico_common.model import (
    AFFINITY_TIMEOUT_DEFAULT,
    AFFINITY_TIMEOUT_MAX,
    Endpoint,
    EndpointPort,
    LBService,
    NodeInfo,
    NodeRulesError,
    ServicePort,
)
from portico_nodeagent import nftnames as N
from portico_nodeagent.inputfile import input_from_json
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import diff_rules, replace_table
from portico_nodeagent.rulesindex import index_rules
from portico_nodeagent.topology import select_endpoints
from portico_operator.slices import endpoints_from_slices

# ==============================================================================================
# a printer of the JSON in nft syntax (only what the renderer emits; anything else raises)
# ==============================================================================================


def _e(x: Any) -> str:
    if isinstance(x, int) and x >= N.SLOT_BASE:
        return hex(x)  # an endpoint slot
    if isinstance(x, (str, int)):
        return str(x)
    if not isinstance(x, dict) or len(x) != 1:
        raise ValueError(f"cannot print {x!r}")
    ((k, v),) = x.items()
    if k == "payload":
        return f"{v['protocol']} {v['field']}"
    if k == "meta":
        return f"meta {v['key']}"
    if k == "ct":
        return f"ct {v['key']}"
    if k == "fib":
        return f"fib {' '.join(v['flags'])} {v['result']}"
    if k == "concat":
        return " . ".join(_e(i) for i in v)
    if k == "prefix":
        addr = hex(v["addr"]) if isinstance(v["addr"], int) else v["addr"]
        return f"{addr}/{v['len']}"
    if k == "map":
        return f"{_e(v['key'])} map {v['data']}"
    if k == "set":
        return (
            "{ "
            + ", ".join(_e(i) if not isinstance(i, list) else f"{_e(i[0])} : {_e(i[1])}" for i in v)
            + " }"
        )
    if k == "numgen":
        return f"numgen {v['mode']} mod {v['mod']}" + (
            f" offset {hex(v['offset'])}" if v["offset"] else ""
        )
    if k in ("&", "|", "^"):
        return f"{_e(v[0])} {k} {hex(v[1])}"
    if k in ("jump", "goto"):
        return f"{k} {v['target']}"
    if k in ("drop", "return") and v is None:
        return k
    raise ValueError(f"cannot print {x!r}")


def stmt(s: dict) -> str:
    ((k, v),) = s.items()
    if k == "match":
        op = {
            "==": "== "
            if isinstance(v["left"], dict) and ("&" in v["left"] or "numgen" in v["left"])
            else "",
            "in": "",
            "!=": "!= ",
        }[v["op"]]
        return f"{_e(v['left'])} {op}{_e(v['right'])}"
    if k == "vmap":
        return f"{_e(v['key'])} vmap {_e(v['data'])}"
    if k == "mangle":
        return f"{_e(v['key'])} set {_e(v['value'])}"
    if k == "masquerade":
        return f"masquerade {v['flags']}"
    if k == "reject":
        return (
            "reject with tcp reset"
            if v["type"] == "tcp reset"
            else f"reject with {v['type']} {v['expr']}"
        )
    if k == "dnat":
        if isinstance(v["addr"], dict) and "port" not in v:  # a claim: to where it goes
            return f"dnat {v['family']} to {_e(v['addr'])}"
        if isinstance(v["addr"], dict):  # the flat endpoint maps
            return f"dnat {v['family']} to {_e(v['addr'])} : {_e(v['port'])}"
        addr = f"[{v['addr']}]" if ":" in v["addr"] else v["addr"]
        return f"dnat {v['family']} to {addr}" + (f":{v['port']}" if "port" in v else "")
    if k == "set":
        return f"{v['op']} {v['set']} {{ {_e(v['elem'])} }}"
    if k in ("accept", "drop") and v is None:
        return k
    return _e(s)


def dump(doc: dict) -> str:
    lines = []
    for cmd in doc["nftables"]:
        ((verb, body),) = cmd.items()
        ((kind, o),) = body.items()
        where = f"{o['family']} {o.get('table', o.get('name'))}"
        if kind == "table":
            lines.append(f"{verb} table {o['family']} {o['name']}")
        elif kind == "chain":
            base = (
                f" {{ type {o['type']} hook {o['hook']} priority {o['prio']} ; policy {o['policy']} ; }}"
                if "hook" in o
                else ""
            )
            lines.append(f"{verb} chain {where} {o['name']}{base}")
        elif kind == "map":
            typ = o["type"] if isinstance(o["type"], str) else " . ".join(o["type"])
            lines.append(f"{verb} map {where} {o['name']} {{ type {typ} : {o['map']} ; }}")
        elif kind == "set":
            lines.append(
                f"{verb} set {where} {o['name']} {{ type {o['type']} ; flags {','.join(o['flags'])} ; timeout {o['timeout']}s ; }}"
            )
        elif kind == "element":
            items = ", ".join(
                f"{_e(k)} : {stmt(v) if isinstance(v, dict) else v}" if verb == "add" else _e(k)
                for k, v in ([i, None] if verb != "add" else i for i in o["elem"])
            )
            lines.append(f"{verb} element {where} {o['name']} {{ {items} }}")
        elif kind == "rule":
            lines.append(
                f"{verb} rule {where} {o['chain']} " + " ".join(stmt(s) for s in o["expr"])
            )
        else:
            raise ValueError(kind)
    return "\n".join(lines)


SKELETON = """
add table inet portico
add map inet portico vips4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet portico firewall4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet portico noendpoints4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet portico nodeports4 { type inet_proto . inet_service : verdict ; }
add map inet portico noendpoint-nodeports4 { type inet_proto . inet_service : verdict ; }
add map inet portico endpoint-counts4 { type ipv4_addr . inet_proto . inet_service : mark ; }
add map inet portico nodeport-endpoint-counts4 { type inet_proto . inet_service : mark ; }
add map inet portico picks4 { type mark : verdict ; }
add map inet portico nodeport-picks4 { type mark : verdict ; }
add map inet portico internal-endpoint-counts4 { type ipv4_addr . inet_proto . inet_service : mark ; }
add map inet portico internal-vips4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet portico internal-ports4 { type ipv4_addr . inet_proto . inet_service : mark ; }
add map inet portico internal-picks4 { type mark : verdict ; }
add map inet portico endpoint-addrs4 { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr ; }
add map inet portico endpoint-ports4 { type ipv4_addr . inet_proto . inet_service . mark : inet_service ; }
add map inet portico nodeport-endpoint-addrs4 { type inet_proto . inet_service . mark : ipv4_addr ; }
add map inet portico nodeport-endpoint-ports4 { type inet_proto . inet_service . mark : inet_service ; }
add map inet portico remote-endpoints4 { type ipv4_addr : mark ; }
add map inet portico hairpin4 { type ipv4_addr . ipv4_addr : mark ; }
add map inet portico vips6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add map inet portico firewall6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add map inet portico noendpoints6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add map inet portico nodeports6 { type inet_proto . inet_service : verdict ; }
add map inet portico noendpoint-nodeports6 { type inet_proto . inet_service : verdict ; }
add map inet portico endpoint-counts6 { type ipv6_addr . inet_proto . inet_service : mark ; }
add map inet portico nodeport-endpoint-counts6 { type inet_proto . inet_service : mark ; }
add map inet portico picks6 { type mark : verdict ; }
add map inet portico nodeport-picks6 { type mark : verdict ; }
add map inet portico internal-endpoint-counts6 { type ipv6_addr . inet_proto . inet_service : mark ; }
add map inet portico internal-vips6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add map inet portico internal-ports6 { type ipv6_addr . inet_proto . inet_service : mark ; }
add map inet portico internal-picks6 { type mark : verdict ; }
add map inet portico endpoint-addrs6 { type ipv6_addr . inet_proto . inet_service . mark : ipv6_addr ; }
add map inet portico endpoint-ports6 { type ipv6_addr . inet_proto . inet_service . mark : inet_service ; }
add map inet portico nodeport-endpoint-addrs6 { type inet_proto . inet_service . mark : ipv6_addr ; }
add map inet portico nodeport-endpoint-ports6 { type inet_proto . inet_service . mark : inet_service ; }
add map inet portico remote-endpoints6 { type ipv6_addr : mark ; }
add map inet portico hairpin6 { type ipv6_addr . ipv6_addr : mark ; }
add chain inet portico filter-prerouting { type filter hook prerouting priority -110 ; policy accept ; }
add chain inet portico filter-input { type filter hook input priority -110 ; policy accept ; }
add chain inet portico filter-forward { type filter hook forward priority -110 ; policy accept ; }
add chain inet portico filter-output { type filter hook output priority -110 ; policy accept ; }
add chain inet portico nat-prerouting { type nat hook prerouting priority -101 ; policy accept ; }
add chain inet portico nat-output { type nat hook output priority -101 ; policy accept ; }
add chain inet portico nat-postrouting { type nat hook postrouting priority 100 ; policy accept ; }
add chain inet portico slot-prerouting { type filter hook prerouting priority -90 ; policy accept ; }
add chain inet portico slot-output { type filter hook output priority -90 ; policy accept ; }
add chain inet portico services
add chain inet portico internal-services
add chain inet portico firewall-check
add chain inet portico endpoints-check
add chain inet portico reject-chain
add chain inet portico mark-for-masquerade
add chain inet portico masquerading
add chain inet portico slot-restore
add chain inet portico internal-slot-restore
add chain inet portico pick4-1
add chain inet portico nodeport-pick4-1
add chain inet portico internal-pick4-1
add chain inet portico pick4-2
add chain inet portico nodeport-pick4-2
add chain inet portico internal-pick4-2
add chain inet portico pick4-3
add chain inet portico nodeport-pick4-3
add chain inet portico internal-pick4-3
add chain inet portico pick4-4
add chain inet portico nodeport-pick4-4
add chain inet portico internal-pick4-4
add chain inet portico pick4-5
add chain inet portico nodeport-pick4-5
add chain inet portico internal-pick4-5
add chain inet portico pick4-6
add chain inet portico nodeport-pick4-6
add chain inet portico internal-pick4-6
add chain inet portico pick4-7
add chain inet portico nodeport-pick4-7
add chain inet portico internal-pick4-7
add chain inet portico pick4-8
add chain inet portico nodeport-pick4-8
add chain inet portico internal-pick4-8
add chain inet portico pick4-9
add chain inet portico nodeport-pick4-9
add chain inet portico internal-pick4-9
add chain inet portico pick4-10
add chain inet portico nodeport-pick4-10
add chain inet portico internal-pick4-10
add chain inet portico pick4-11
add chain inet portico nodeport-pick4-11
add chain inet portico internal-pick4-11
add chain inet portico pick4-12
add chain inet portico nodeport-pick4-12
add chain inet portico internal-pick4-12
add chain inet portico pick4-13
add chain inet portico nodeport-pick4-13
add chain inet portico internal-pick4-13
add chain inet portico pick4-14
add chain inet portico nodeport-pick4-14
add chain inet portico internal-pick4-14
add chain inet portico pick4-15
add chain inet portico nodeport-pick4-15
add chain inet portico internal-pick4-15
add chain inet portico pick4-16
add chain inet portico nodeport-pick4-16
add chain inet portico internal-pick4-16
add chain inet portico pick6-1
add chain inet portico nodeport-pick6-1
add chain inet portico internal-pick6-1
add chain inet portico pick6-2
add chain inet portico nodeport-pick6-2
add chain inet portico internal-pick6-2
add chain inet portico pick6-3
add chain inet portico nodeport-pick6-3
add chain inet portico internal-pick6-3
add chain inet portico pick6-4
add chain inet portico nodeport-pick6-4
add chain inet portico internal-pick6-4
add chain inet portico pick6-5
add chain inet portico nodeport-pick6-5
add chain inet portico internal-pick6-5
add chain inet portico pick6-6
add chain inet portico nodeport-pick6-6
add chain inet portico internal-pick6-6
add chain inet portico pick6-7
add chain inet portico nodeport-pick6-7
add chain inet portico internal-pick6-7
add chain inet portico pick6-8
add chain inet portico nodeport-pick6-8
add chain inet portico internal-pick6-8
add chain inet portico pick6-9
add chain inet portico nodeport-pick6-9
add chain inet portico internal-pick6-9
add chain inet portico pick6-10
add chain inet portico nodeport-pick6-10
add chain inet portico internal-pick6-10
add chain inet portico pick6-11
add chain inet portico nodeport-pick6-11
add chain inet portico internal-pick6-11
add chain inet portico pick6-12
add chain inet portico nodeport-pick6-12
add chain inet portico internal-pick6-12
add chain inet portico pick6-13
add chain inet portico nodeport-pick6-13
add chain inet portico internal-pick6-13
add chain inet portico pick6-14
add chain inet portico nodeport-pick6-14
add chain inet portico internal-pick6-14
add chain inet portico pick6-15
add chain inet portico nodeport-pick6-15
add chain inet portico internal-pick6-15
add chain inet portico pick6-16
add chain inet portico nodeport-pick6-16
add chain inet portico internal-pick6-16
add element inet portico picks4 { 1 : goto pick4-1, 2 : goto pick4-2, 3 : goto pick4-3, 4 : goto pick4-4, 5 : goto pick4-5, 6 : goto pick4-6, 7 : goto pick4-7, 8 : goto pick4-8, 9 : goto pick4-9, 10 : goto pick4-10, 11 : goto pick4-11, 12 : goto pick4-12, 13 : goto pick4-13, 14 : goto pick4-14, 15 : goto pick4-15, 16 : goto pick4-16 }
add element inet portico nodeport-picks4 { 1 : goto nodeport-pick4-1, 2 : goto nodeport-pick4-2, 3 : goto nodeport-pick4-3, 4 : goto nodeport-pick4-4, 5 : goto nodeport-pick4-5, 6 : goto nodeport-pick4-6, 7 : goto nodeport-pick4-7, 8 : goto nodeport-pick4-8, 9 : goto nodeport-pick4-9, 10 : goto nodeport-pick4-10, 11 : goto nodeport-pick4-11, 12 : goto nodeport-pick4-12, 13 : goto nodeport-pick4-13, 14 : goto nodeport-pick4-14, 15 : goto nodeport-pick4-15, 16 : goto nodeport-pick4-16 }
add element inet portico internal-picks4 { 1 : goto internal-pick4-1, 2 : goto internal-pick4-2, 3 : goto internal-pick4-3, 4 : goto internal-pick4-4, 5 : goto internal-pick4-5, 6 : goto internal-pick4-6, 7 : goto internal-pick4-7, 8 : goto internal-pick4-8, 9 : goto internal-pick4-9, 10 : goto internal-pick4-10, 11 : goto internal-pick4-11, 12 : goto internal-pick4-12, 13 : goto internal-pick4-13, 14 : goto internal-pick4-14, 15 : goto internal-pick4-15, 16 : goto internal-pick4-16 }
add element inet portico picks6 { 1 : goto pick6-1, 2 : goto pick6-2, 3 : goto pick6-3, 4 : goto pick6-4, 5 : goto pick6-5, 6 : goto pick6-6, 7 : goto pick6-7, 8 : goto pick6-8, 9 : goto pick6-9, 10 : goto pick6-10, 11 : goto pick6-11, 12 : goto pick6-12, 13 : goto pick6-13, 14 : goto pick6-14, 15 : goto pick6-15, 16 : goto pick6-16 }
add element inet portico nodeport-picks6 { 1 : goto nodeport-pick6-1, 2 : goto nodeport-pick6-2, 3 : goto nodeport-pick6-3, 4 : goto nodeport-pick6-4, 5 : goto nodeport-pick6-5, 6 : goto nodeport-pick6-6, 7 : goto nodeport-pick6-7, 8 : goto nodeport-pick6-8, 9 : goto nodeport-pick6-9, 10 : goto nodeport-pick6-10, 11 : goto nodeport-pick6-11, 12 : goto nodeport-pick6-12, 13 : goto nodeport-pick6-13, 14 : goto nodeport-pick6-14, 15 : goto nodeport-pick6-15, 16 : goto nodeport-pick6-16 }
add element inet portico internal-picks6 { 1 : goto internal-pick6-1, 2 : goto internal-pick6-2, 3 : goto internal-pick6-3, 4 : goto internal-pick6-4, 5 : goto internal-pick6-5, 6 : goto internal-pick6-6, 7 : goto internal-pick6-7, 8 : goto internal-pick6-8, 9 : goto internal-pick6-9, 10 : goto internal-pick6-10, 11 : goto internal-pick6-11, 12 : goto internal-pick6-12, 13 : goto internal-pick6-13, 14 : goto internal-pick6-14, 15 : goto internal-pick6-15, 16 : goto internal-pick6-16 }
add rule inet portico filter-prerouting ct state new jump firewall-check
add rule inet portico filter-input ct state new jump endpoints-check
add rule inet portico filter-forward ct state new jump endpoints-check
add rule inet portico filter-output ct state new jump firewall-check
add rule inet portico filter-output ct state new ip daddr . meta l4proto . th dport @internal-ports4 accept
add rule inet portico filter-output ct state new ip6 daddr . meta l4proto . th dport @internal-ports6 accept
add rule inet portico filter-output ct state new jump endpoints-check
add rule inet portico nat-prerouting jump services
add rule inet portico nat-output jump internal-services
add rule inet portico nat-output jump services
add rule inet portico nat-postrouting jump masquerading
add rule inet portico slot-prerouting meta mark 0x208000/17 goto internal-slot-restore
add rule inet portico slot-prerouting meta mark 0x200000/16 goto slot-restore
add rule inet portico slot-output meta mark 0x208000/17 goto internal-slot-restore
add rule inet portico slot-output meta mark 0x200000/16 goto slot-restore
add rule inet portico services ip daddr . meta l4proto . th dport vmap @vips4
add rule inet portico services ip daddr . meta l4proto . th dport @endpoint-counts4 ct mark set meta mark meta mark set ip daddr . meta l4proto . th dport map @endpoint-counts4 meta mark vmap @picks4
add rule inet portico services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @nodeports4
add rule inet portico services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @nodeport-endpoint-counts4 ct mark set meta mark meta mark set meta l4proto . th dport map @nodeport-endpoint-counts4 meta mark vmap @nodeport-picks4
add rule inet portico services ip daddr . meta l4proto . th dport @noendpoints4 dnat ip to ip daddr
add rule inet portico services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @noendpoint-nodeports4 dnat ip to ip daddr
add rule inet portico services ip6 daddr . meta l4proto . th dport vmap @vips6
add rule inet portico services ip6 daddr . meta l4proto . th dport @endpoint-counts6 ct mark set meta mark meta mark set ip6 daddr . meta l4proto . th dport map @endpoint-counts6 meta mark vmap @picks6
add rule inet portico services fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @nodeports6
add rule inet portico services fib daddr type local ip6 daddr != ::1 meta l4proto . th dport @nodeport-endpoint-counts6 ct mark set meta mark meta mark set meta l4proto . th dport map @nodeport-endpoint-counts6 meta mark vmap @nodeport-picks6
add rule inet portico services ip6 daddr . meta l4proto . th dport @noendpoints6 dnat ip6 to ip6 daddr
add rule inet portico services fib daddr type local ip6 daddr != ::1 meta l4proto . th dport @noendpoint-nodeports6 dnat ip6 to ip6 daddr
add rule inet portico internal-services ip daddr . meta l4proto . th dport vmap @internal-vips4
add rule inet portico internal-services ip daddr . meta l4proto . th dport @internal-endpoint-counts4 ct mark set meta mark meta mark set ip daddr . meta l4proto . th dport map @internal-endpoint-counts4 meta mark vmap @internal-picks4
add rule inet portico internal-services ip6 daddr . meta l4proto . th dport vmap @internal-vips6
add rule inet portico internal-services ip6 daddr . meta l4proto . th dport @internal-endpoint-counts6 ct mark set meta mark meta mark set ip6 daddr . meta l4proto . th dport map @internal-endpoint-counts6 meta mark vmap @internal-picks6
add rule inet portico firewall-check ip daddr . meta l4proto . th dport vmap @firewall4
add rule inet portico firewall-check ip6 daddr . meta l4proto . th dport vmap @firewall6
add rule inet portico endpoints-check ip daddr . meta l4proto . th dport vmap @noendpoints4
add rule inet portico endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @noendpoint-nodeports4
add rule inet portico endpoints-check ip6 daddr . meta l4proto . th dport vmap @noendpoints6
add rule inet portico endpoints-check fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @noendpoint-nodeports6
add rule inet portico reject-chain meta l4proto tcp reject with tcp reset
add rule inet portico reject-chain reject with icmpx port-unreachable
add rule inet portico mark-for-masquerade meta mark set meta mark | 0x400000
add rule inet portico masquerading meta mark & 0x400000 == 0 return
add rule inet portico masquerading meta mark set meta mark ^ 0x400000
add rule inet portico masquerading masquerade fully-random
add rule inet portico slot-restore meta mark set ct mark ct mark set 0
add rule inet portico slot-restore ip daddr @remote-endpoints4 jump mark-for-masquerade
add rule inet portico slot-restore ip saddr . ip daddr @hairpin4 jump mark-for-masquerade
add rule inet portico slot-restore ip6 daddr @remote-endpoints6 jump mark-for-masquerade
add rule inet portico slot-restore ip6 saddr . ip6 daddr @hairpin6 jump mark-for-masquerade
add rule inet portico internal-slot-restore meta mark set ct mark ct mark set 0
add rule inet portico internal-slot-restore ip saddr . ip daddr @hairpin4 jump mark-for-masquerade
add rule inet portico internal-slot-restore ip6 saddr . ip6 daddr @hairpin6 jump mark-for-masquerade
add rule inet portico pick4-1 meta mark set numgen random mod 1 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-1 meta mark set numgen random mod 1 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-1 meta mark set numgen random mod 1 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-2 meta mark set numgen random mod 2 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-2 meta mark set numgen random mod 2 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-2 meta mark set numgen random mod 2 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-3 meta mark set numgen random mod 3 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-3 meta mark set numgen random mod 3 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-3 meta mark set numgen random mod 3 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-4 meta mark set numgen random mod 4 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-4 meta mark set numgen random mod 4 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-4 meta mark set numgen random mod 4 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-5 meta mark set numgen random mod 5 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-5 meta mark set numgen random mod 5 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-5 meta mark set numgen random mod 5 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-6 meta mark set numgen random mod 6 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-6 meta mark set numgen random mod 6 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-6 meta mark set numgen random mod 6 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-7 meta mark set numgen random mod 7 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-7 meta mark set numgen random mod 7 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-7 meta mark set numgen random mod 7 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-8 meta mark set numgen random mod 8 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-8 meta mark set numgen random mod 8 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-8 meta mark set numgen random mod 8 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-9 meta mark set numgen random mod 9 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-9 meta mark set numgen random mod 9 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-9 meta mark set numgen random mod 9 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-10 meta mark set numgen random mod 10 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-10 meta mark set numgen random mod 10 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-10 meta mark set numgen random mod 10 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-11 meta mark set numgen random mod 11 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-11 meta mark set numgen random mod 11 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-11 meta mark set numgen random mod 11 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-12 meta mark set numgen random mod 12 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-12 meta mark set numgen random mod 12 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-12 meta mark set numgen random mod 12 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-13 meta mark set numgen random mod 13 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-13 meta mark set numgen random mod 13 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-13 meta mark set numgen random mod 13 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-14 meta mark set numgen random mod 14 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-14 meta mark set numgen random mod 14 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-14 meta mark set numgen random mod 14 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-15 meta mark set numgen random mod 15 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-15 meta mark set numgen random mod 15 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-15 meta mark set numgen random mod 15 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick4-16 meta mark set numgen random mod 16 offset 0x200000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico nodeport-pick4-16 meta mark set numgen random mod 16 offset 0x200000 dnat ip to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs4 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports4
add rule inet portico internal-pick4-16 meta mark set numgen random mod 16 offset 0x208000 dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4
add rule inet portico pick6-1 meta mark set numgen random mod 1 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-1 meta mark set numgen random mod 1 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-1 meta mark set numgen random mod 1 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-2 meta mark set numgen random mod 2 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-2 meta mark set numgen random mod 2 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-2 meta mark set numgen random mod 2 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-3 meta mark set numgen random mod 3 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-3 meta mark set numgen random mod 3 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-3 meta mark set numgen random mod 3 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-4 meta mark set numgen random mod 4 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-4 meta mark set numgen random mod 4 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-4 meta mark set numgen random mod 4 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-5 meta mark set numgen random mod 5 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-5 meta mark set numgen random mod 5 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-5 meta mark set numgen random mod 5 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-6 meta mark set numgen random mod 6 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-6 meta mark set numgen random mod 6 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-6 meta mark set numgen random mod 6 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-7 meta mark set numgen random mod 7 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-7 meta mark set numgen random mod 7 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-7 meta mark set numgen random mod 7 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-8 meta mark set numgen random mod 8 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-8 meta mark set numgen random mod 8 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-8 meta mark set numgen random mod 8 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-9 meta mark set numgen random mod 9 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-9 meta mark set numgen random mod 9 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-9 meta mark set numgen random mod 9 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-10 meta mark set numgen random mod 10 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-10 meta mark set numgen random mod 10 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-10 meta mark set numgen random mod 10 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-11 meta mark set numgen random mod 11 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-11 meta mark set numgen random mod 11 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-11 meta mark set numgen random mod 11 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-12 meta mark set numgen random mod 12 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-12 meta mark set numgen random mod 12 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-12 meta mark set numgen random mod 12 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-13 meta mark set numgen random mod 13 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-13 meta mark set numgen random mod 13 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-13 meta mark set numgen random mod 13 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-14 meta mark set numgen random mod 14 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-14 meta mark set numgen random mod 14 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-14 meta mark set numgen random mod 14 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-15 meta mark set numgen random mod 15 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-15 meta mark set numgen random mod 15 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-15 meta mark set numgen random mod 15 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico pick6-16 meta mark set numgen random mod 16 offset 0x200000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
add rule inet portico nodeport-pick6-16 meta mark set numgen random mod 16 offset 0x200000 dnat ip6 to meta l4proto . th dport . meta mark map @nodeport-endpoint-addrs6 : meta l4proto . th dport . meta mark map @nodeport-endpoint-ports6
add rule inet portico internal-pick6-16 meta mark set numgen random mod 16 offset 0x208000 dnat ip6 to ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-addrs6 : ip6 daddr . meta l4proto . th dport . meta mark map @endpoint-ports6
"""


def lines(doc: dict[str, Any]) -> str:
    """The render less the fixed skeleton: what the Services added."""
    skel = set(SKELETON.strip().splitlines())
    return "\n".join(line for line in dump(doc).splitlines() if line not in skel)


def render(
    services: list[LBService], node: str = "node-1", zone: str = "zone-a", ips: tuple[str, ...] = ()
) -> dict[str, Any]:
    return render_node_rules(services, NodeInfo(node, zone, ips))


HTTP = (EndpointPort("http", "TCP", 8080),)

LOCAL_WEB = LBService(
    "shop",
    "web",
    ("198.18.32.10",),
    (ServicePort("http", "TCP", 80, 31000, "http"),),
    (
        Endpoint("198.19.1.2", "node-1", "zone-a", ports=HTTP),
        Endpoint("198.19.1.3", "node-1", "zone-a", ready=False, serving=False, ports=HTTP),
        Endpoint("198.19.1.4", "node-1", "zone-a", ports=HTTP),
        Endpoint("198.19.2.2", "node-2", "zone-b", ports=HTTP),
    ),
    external_traffic_policy="Local",
)

CLUSTER_API = LBService(
    "shop",
    "api",
    ("198.18.32.11", "fd00:18::a:11"),
    (ServicePort("https", "TCP", 443, 30443, 8443), ServicePort("dns", "UDP", 53, None, 5353)),
    (
        Endpoint("198.19.1.2", "node-1", "zone-a"),
        Endpoint("198.19.2.2", "node-2", "zone-b"),
        Endpoint("fd00:19:0:2::2", "node-2", "zone-b"),
    ),
    session_affinity="ClientIP",
    session_affinity_timeout=600,
    source_ranges=("198.18.1.0/24", "198.18.1.7/32", "fd00:18::1:0/112"),
    forwarding_mode="NAT",
)


# ==============================================================================================
# goldens
# ==============================================================================================
def test_golden_skeleton() -> None:
    assert dump(render([])) == SKELETON.strip()


def test_golden_local_policy_on_a_node_with_ready_endpoints() -> None:
    # Only node-1's ready endpoints, one slot each (2 endpoints: pick4-2); the not-ready one
    # and node-2's are not used; no masquerade but for a pod reaching itself; DSR mode: no
    # nodePort element. Traffic from inside the cluster (internal slots from 0x208000) goes to
    # every ready endpoint, node-2's too, as kube-proxy's short-circuit sends it.
    assert (
        lines(render([LOCAL_WEB]))
        == """
add element inet portico endpoint-counts4 { 198.18.32.10 . tcp . 80 : 2 }
add element inet portico internal-endpoint-counts4 { 198.18.32.10 . tcp . 80 : 3 }
add element inet portico internal-ports4 { 198.18.32.10 . tcp . 80 : 1 }
add element inet portico endpoint-addrs4 { 198.18.32.10 . tcp . 80 . 0x208000 : 198.19.1.2, 198.18.32.10 . tcp . 80 . 0x208001 : 198.19.1.4, 198.18.32.10 . tcp . 80 . 0x208002 : 198.19.2.2, 198.18.32.10 . tcp . 80 . 0x200000 : 198.19.1.2, 198.18.32.10 . tcp . 80 . 0x200001 : 198.19.1.4 }
add element inet portico endpoint-ports4 { 198.18.32.10 . tcp . 80 . 0x208000 : 8080, 198.18.32.10 . tcp . 80 . 0x208001 : 8080, 198.18.32.10 . tcp . 80 . 0x208002 : 8080, 198.18.32.10 . tcp . 80 . 0x200000 : 8080, 198.18.32.10 . tcp . 80 . 0x200001 : 8080 }
add element inet portico hairpin4 { 198.19.1.2 . 198.19.1.2 : 1, 198.19.1.4 . 198.19.1.4 : 1 }
""".strip()
    )


def test_golden_more_endpoints_than_the_fixed_pick_chains() -> None:
    many = tuple(Endpoint(f"198.19.2.{i}", "node-2", "zone-b") for i in range(2, 2 + 17))
    big = LBService("shop", "big", ("198.18.32.13",), (ServicePort("", "UDP", 53),), many)
    out = lines(render([big]))
    assert out.splitlines()[0] == "add chain inet portico pick4-17"  # DSR: no nodePort one
    assert "nodeport-pick4-17" not in out
    assert "add element inet portico endpoint-counts4 { 198.18.32.13 . udp . 53 : 17 }" in out
    assert "16 : goto pick4-16, 17 : goto pick4-17 }" in out
    assert "198.18.32.13 . udp . 53 . 0x200010 : 198.19.2.18" in out  # slot 16, the 17th
    assert (
        "add rule inet portico pick4-17 meta mark set numgen random mod 17 offset 0x200000 "
        "dnat ip to ip daddr . meta l4proto . th dport . meta mark map @endpoint-addrs4 : "
        "ip daddr . meta l4proto . th dport . meta mark map @endpoint-ports4"
    ) in out
    # all on node-2: masqueraded from node-1
    assert "add element inet portico remote-endpoints4 { 198.19.2.2 : 1, 198.19.2.3 : 1," in out


def test_golden_local_policy_on_a_node_without_endpoints_drops() -> None:
    # External traffic is dropped; the node's own and its pods' go to the endpoints elsewhere.
    assert (
        lines(render([LOCAL_WEB], node="node-3"))
        == """
add element inet portico noendpoints4 { 198.18.32.10 . tcp . 80 : drop }
add element inet portico internal-endpoint-counts4 { 198.18.32.10 . tcp . 80 : 3 }
add element inet portico internal-ports4 { 198.18.32.10 . tcp . 80 : 1 }
add element inet portico endpoint-addrs4 { 198.18.32.10 . tcp . 80 . 0x208000 : 198.19.1.2, 198.18.32.10 . tcp . 80 . 0x208001 : 198.19.1.4, 198.18.32.10 . tcp . 80 . 0x208002 : 198.19.2.2 }
add element inet portico endpoint-ports4 { 198.18.32.10 . tcp . 80 . 0x208000 : 8080, 198.18.32.10 . tcp . 80 . 0x208001 : 8080, 198.18.32.10 . tcp . 80 . 0x208002 : 8080 }
""".strip()
    )


def test_golden_cluster_dual_stack_affinity_source_ranges_nat_mode() -> None:
    # Masquerade only toward node-2's endpoints; affinity sets with the Service's timeout;
    # 198.18.1.7/32 folds into 198.18.1.0/24; NAT mode adds the nodePort (443 only: dns has
    # none); each family gets its own chains and its own endpoints.
    assert (
        lines(render([CLUSTER_API]))
        == """
add set inet portico aff-BP6LPLA3-v4/shop/api/tcp/https__198.19.1.2/8443/600s { type ipv4_addr ; flags timeout ; timeout 600s ; }
add set inet portico aff-ZEPFZFF3-v4/shop/api/tcp/https__198.19.2.2/8443/600s { type ipv4_addr ; flags timeout ; timeout 600s ; }
add set inet portico aff-TKX32AH3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443/600s { type ipv6_addr ; flags timeout ; timeout 600s ; }
add set inet portico aff-4SD4Q6O4-v4/shop/api/udp/dns__198.19.1.2/5353/600s { type ipv4_addr ; flags timeout ; timeout 600s ; }
add set inet portico aff-4ZLR5474-v4/shop/api/udp/dns__198.19.2.2/5353/600s { type ipv4_addr ; flags timeout ; timeout 600s ; }
add set inet portico aff-XLE3MVL6-v6/shop/api/udp/dns__fd00.19.0.2..2/5353/600s { type ipv6_addr ; flags timeout ; timeout 600s ; }
add chain inet portico fw-ON5EBOPY-shop/api
add chain inet portico svc-GMKOLKUB-v4/shop/api/tcp/https
add chain inet portico ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443
add chain inet portico ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443
add chain inet portico svc-VRPZIKNS-v6/shop/api/tcp/https
add chain inet portico ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443
add chain inet portico svc-D6H3EW76-v4/shop/api/udp/dns
add chain inet portico ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353
add chain inet portico ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353
add chain inet portico svc-UJEPQKK7-v6/shop/api/udp/dns
add chain inet portico ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353
add element inet portico vips4 { 198.18.32.11 . tcp . 443 : goto svc-GMKOLKUB-v4/shop/api/tcp/https, 198.18.32.11 . udp . 53 : goto svc-D6H3EW76-v4/shop/api/udp/dns }
add element inet portico firewall4 { 198.18.32.11 . tcp . 443 : goto fw-ON5EBOPY-shop/api, 198.18.32.11 . udp . 53 : goto fw-ON5EBOPY-shop/api }
add element inet portico nodeports4 { tcp . 30443 : goto svc-GMKOLKUB-v4/shop/api/tcp/https }
add element inet portico vips6 { fd00:18::a:11 . tcp . 443 : goto svc-VRPZIKNS-v6/shop/api/tcp/https, fd00:18::a:11 . udp . 53 : goto svc-UJEPQKK7-v6/shop/api/udp/dns }
add element inet portico firewall6 { fd00:18::a:11 . tcp . 443 : goto fw-ON5EBOPY-shop/api, fd00:18::a:11 . udp . 53 : goto fw-ON5EBOPY-shop/api }
add element inet portico nodeports6 { tcp . 30443 : goto svc-VRPZIKNS-v6/shop/api/tcp/https }
add rule inet portico fw-ON5EBOPY-shop/api ip saddr != 198.18.1.0/24 drop
add rule inet portico fw-ON5EBOPY-shop/api ip6 saddr != fd00:18::1:0/112 drop
add rule inet portico svc-GMKOLKUB-v4/shop/api/tcp/https ip saddr @aff-BP6LPLA3-v4/shop/api/tcp/https__198.19.1.2/8443/600s goto ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443
add rule inet portico svc-GMKOLKUB-v4/shop/api/tcp/https ip saddr @aff-ZEPFZFF3-v4/shop/api/tcp/https__198.19.2.2/8443/600s goto ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443
add rule inet portico svc-GMKOLKUB-v4/shop/api/tcp/https numgen random mod 2 == 0 goto ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443
add rule inet portico svc-GMKOLKUB-v4/shop/api/tcp/https goto ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443
add rule inet portico ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443 ip saddr 198.19.1.2 jump mark-for-masquerade
add rule inet portico ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443 update @aff-BP6LPLA3-v4/shop/api/tcp/https__198.19.1.2/8443/600s { ip saddr }
add rule inet portico ep-JOQJJLSC-v4/shop/api/tcp/https__198.19.1.2/8443 meta l4proto tcp dnat ip to 198.19.1.2:8443
add rule inet portico ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443 jump mark-for-masquerade
add rule inet portico ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443 update @aff-ZEPFZFF3-v4/shop/api/tcp/https__198.19.2.2/8443/600s { ip saddr }
add rule inet portico ep-3XEJBGZV-v4/shop/api/tcp/https__198.19.2.2/8443 meta l4proto tcp dnat ip to 198.19.2.2:8443
add rule inet portico svc-VRPZIKNS-v6/shop/api/tcp/https ip6 saddr @aff-TKX32AH3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443/600s goto ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443
add rule inet portico svc-VRPZIKNS-v6/shop/api/tcp/https goto ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443
add rule inet portico ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443 jump mark-for-masquerade
add rule inet portico ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443 update @aff-TKX32AH3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443/600s { ip6 saddr }
add rule inet portico ep-JEEJGSI3-v6/shop/api/tcp/https__fd00.19.0.2..2/8443 meta l4proto tcp dnat ip6 to [fd00:19:0:2::2]:8443
add rule inet portico svc-D6H3EW76-v4/shop/api/udp/dns ip saddr @aff-4SD4Q6O4-v4/shop/api/udp/dns__198.19.1.2/5353/600s goto ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353
add rule inet portico svc-D6H3EW76-v4/shop/api/udp/dns ip saddr @aff-4ZLR5474-v4/shop/api/udp/dns__198.19.2.2/5353/600s goto ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353
add rule inet portico svc-D6H3EW76-v4/shop/api/udp/dns numgen random mod 2 == 0 goto ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353
add rule inet portico svc-D6H3EW76-v4/shop/api/udp/dns goto ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353
add rule inet portico ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353 ip saddr 198.19.1.2 jump mark-for-masquerade
add rule inet portico ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353 update @aff-4SD4Q6O4-v4/shop/api/udp/dns__198.19.1.2/5353/600s { ip saddr }
add rule inet portico ep-OW6FN4SX-v4/shop/api/udp/dns__198.19.1.2/5353 meta l4proto udp dnat ip to 198.19.1.2:5353
add rule inet portico ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353 jump mark-for-masquerade
add rule inet portico ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353 update @aff-4ZLR5474-v4/shop/api/udp/dns__198.19.2.2/5353/600s { ip saddr }
add rule inet portico ep-LT3I4557-v4/shop/api/udp/dns__198.19.2.2/5353 meta l4proto udp dnat ip to 198.19.2.2:5353
add rule inet portico svc-UJEPQKK7-v6/shop/api/udp/dns ip6 saddr @aff-XLE3MVL6-v6/shop/api/udp/dns__fd00.19.0.2..2/5353/600s goto ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353
add rule inet portico svc-UJEPQKK7-v6/shop/api/udp/dns goto ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353
add rule inet portico ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353 jump mark-for-masquerade
add rule inet portico ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353 update @aff-XLE3MVL6-v6/shop/api/udp/dns__fd00.19.0.2..2/5353/600s { ip6 saddr }
add rule inet portico ep-7IXKL5DY-v6/shop/api/udp/dns__fd00.19.0.2..2/5353 meta l4proto udp dnat ip6 to [fd00:19:0:2::2]:5353
""".strip()
    )


def test_golden_no_endpoints_rejects() -> None:
    empty = LBService("shop", "gone", ("198.18.32.12",), (ServicePort("", "SCTP", 9999),))
    assert (
        lines(render([empty]))
        == """
add element inet portico noendpoints4 { 198.18.32.12 . sctp . 9999 : goto reject-chain }
""".strip()
    )


# ==============================================================================================
# behaviour
# ==============================================================================================
def chains(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cmd in doc["nftables"]:
        o = cmd["add"]
        if "chain" in o:
            out[o["chain"]["name"]] = []
        if "rule" in o:
            out[o["rule"]["chain"]].append(" ".join(stmt(s) for s in o["rule"]["expr"]))
    return out


def flat_targets(doc: dict[str, Any], internal: bool = False) -> dict[str, list[str]]:
    """The flat endpoint maps read back: "vip . proto . port" -> ["addr:port", ...] in slot
    order (and "proto . nodePort" for the nodePort maps); with ``internal``, the slots of the
    path for traffic from inside the cluster (an externalTrafficPolicy: Local Service's)."""
    base = N.INTERNAL_SLOT_BASE if internal else N.SLOT_BASE
    idx = index_rules(doc)
    out: dict[str, list[str]] = {}
    for fam in (4, 6):
        for addrs, ports in (
            (N.ENDPOINT_ADDRS[fam], N.ENDPOINT_PORTS[fam]),
            (N.NODEPORT_ENDPOINT_ADDRS[fam], N.NODEPORT_ENDPOINT_PORTS[fam]),
        ):
            a, p = idx.elements[addrs], idx.elements[ports]
            assert a.keys() == p.keys()  # every slot has an address and a port
            for key in sorted(a, key=lambda k: json.loads(k)["concat"][-1]):
                *dispatch, slot = json.loads(key)["concat"]
                if (slot >= N.INTERNAL_SLOT_BASE) != internal:
                    continue
                addr = json.loads(a[key])
                addr = f"[{addr}]" if ":" in addr else addr
                slots = out.setdefault(" . ".join(map(str, dispatch)), [])
                assert slot == base + len(slots)  # slots 0..N-1, none missing
                slots.append(f"{addr}:{json.loads(p[key])}")
    return out


def dnat_targets(doc: dict[str, Any]) -> list[str]:
    """Every endpoint the render DNATs to: from affinity Services' endpoint chains and from the
    flat maps' VIP entries."""
    in_chains = [
        r.split(" to ", 1)[1] for rules in chains(doc).values() for r in rules if " dnat " in r
    ]
    flat = [t for key, ts in flat_targets(doc).items() if key.count(".") >= 2 for t in ts]
    # (not the claims of VIP ports without endpoints: a DNAT to where the packet goes)
    return sorted(t for t in in_chains + flat if "map @" not in t and not t.endswith(" daddr"))


def elements(doc: dict[str, Any], name: str) -> dict[str, str]:
    return dict(index_rules(doc).elements.get(name, {}))


def ep(addr: str, node: str | None, zone: str | None = None, **kw: Any) -> Endpoint:
    return Endpoint(addr, node, zone, **kw)


def svc(*eps: Endpoint, **kw: Any) -> LBService:
    kw.setdefault("vips", ("198.18.32.20",))
    kw.setdefault("ports", (ServicePort("http", "TCP", 80, None, 8080),))
    return LBService("ns", kw.pop("name", "s"), endpoints=eps, **kw)


def test_cluster_masquerades_only_toward_other_nodes() -> None:
    eps = (ep("198.19.1.2", "node-1"), ep("198.19.2.2", "node-2"), ep("198.19.3.2", None))
    doc = render([svc(*eps)])
    # no node known: treated as remote
    assert sorted(elements(doc, N.REMOTE_ENDPOINTS[4])) == ['"198.19.2.2"', '"198.19.3.2"']
    assert list(elements(doc, N.HAIRPIN[4])) == ['{"concat":["198.19.1.2","198.19.1.2"]}']
    assert "ip daddr @remote-endpoints4 jump mark-for-masquerade" in chains(doc)[N.SLOT_RESTORE]
    # ClientIP affinity keeps a chain per endpoint, which decides the same way
    doc = render([svc(*eps, session_affinity="ClientIP")])
    ep_chains = {n: r for n, r in chains(doc).items() if n.startswith("ep-")}
    first = {n.rsplit("__", 1)[1]: r[0] for n, r in ep_chains.items()}
    assert first == {
        "198.19.1.2/8080": "ip saddr 198.19.1.2 jump mark-for-masquerade",
        "198.19.2.2/8080": "jump mark-for-masquerade",
        "198.19.3.2/8080": "jump mark-for-masquerade",  # no node known: treated as remote
    }


def test_local_falls_back_to_serving_terminating_then_drops() -> None:
    term = dict(ready=False, serving=True, terminating=True)
    s = svc(
        ep("198.19.1.2", "node-1", **term),
        ep("198.19.1.3", "node-1", ready=False, serving=False, terminating=True),
        ep("198.19.2.2", "node-2"),
        external_traffic_policy="Local",
    )
    assert dnat_targets(render([s])) == ["198.19.1.2:8080"]
    gone = svc(
        ep("198.19.1.3", "node-1", ready=False, serving=False, terminating=True),
        ep("198.19.2.2", "node-2"),
        external_traffic_policy="Local",
    )
    assert dnat_targets(render([gone])) == []
    assert list(elements(render([gone]), "noendpoints4").values()) == ['{"drop":null}']


def test_cluster_prefers_ready_everywhere_over_local_terminating() -> None:
    term = dict(ready=False, serving=True, terminating=True)
    s = svc(ep("198.19.1.2", "node-1", **term), ep("198.19.2.2", "node-2"))
    assert dnat_targets(render([s])) == ["198.19.2.2:8080"]
    only_term = svc(ep("198.19.1.2", "node-1", **term), ep("198.19.2.2", "node-2", **term))
    assert dnat_targets(render([only_term])) == ["198.19.1.2:8080", "198.19.2.2:8080"]


def test_zone_hints_are_used_only_when_every_ready_endpoint_has_them() -> None:
    a = ep("198.19.1.2", "node-1", "zone-a", for_zones=("zone-a",))
    b = ep("198.19.2.2", "node-2", "zone-b", for_zones=("zone-b",))
    c = ep("198.19.3.2", "node-3", "zone-a", for_zones=("zone-a",))
    bare = ep("198.19.4.2", "node-4", "zone-b")
    node2 = NodeInfo("node-2", "zone-b")
    assert [
        e.address
        for e in select_endpoints([a, b, c], "Cluster", NodeInfo("node-1", "zone-a")).endpoints
    ] == ["198.19.1.2", "198.19.3.2"]
    assert [e.address for e in select_endpoints([a, b, c], "Cluster", node2).endpoints] == [
        "198.19.2.2"
    ]
    # one ready endpoint without hints: hints are ignored
    assert len(select_endpoints([a, b, c, bare], "Cluster", node2).endpoints) == 4
    # a not-ready endpoint without hints does not count
    sick = ep("198.19.4.2", "node-4", "zone-b", ready=False, serving=False)
    assert [e.address for e in select_endpoints([a, b, sick], "Cluster", node2).endpoints] == [
        "198.19.2.2"
    ]
    # no endpoint hinted for this node's zone (or no zone label): all of them
    assert len(select_endpoints([a, c], "Cluster", node2).endpoints) == 2
    assert len(select_endpoints([a, b], "Cluster", NodeInfo("node-9", None)).endpoints) == 2
    # hints do not apply to Local
    assert select_endpoints([a, b], "Local", node2).endpoints == (b,)


def test_node_hints_prefer_same_node_then_zone() -> None:
    # PreferSameNode: the EndpointSlice controller writes forNodes and forZones.
    a = ep("198.19.1.2", "node-1", "zone-a", for_zones=("zone-a",), for_nodes=("node-1",))
    c = ep("198.19.3.2", "node-3", "zone-a", for_zones=("zone-a",), for_nodes=("node-3",))
    sel = select_endpoints([a, c], "Cluster", NodeInfo("node-1", "zone-a"))
    assert (sel.endpoints, sel.topology) == ((a,), "PreferSameNode")
    # node-5 has no endpoint of its own: fall back to the zone hints
    sel = select_endpoints([a, c], "Cluster", NodeInfo("node-5", "zone-a"))
    assert (sel.endpoints, sel.topology) == ((a, c), "PreferSameZone")


def test_named_target_port_resolves_per_endpointslice() -> None:
    port = ServicePort("web", "TCP", 80, None, "web")
    s = svc(
        ep("198.19.1.2", "node-1", ports=(EndpointPort("web", "TCP", 8080),)),
        ep("198.19.1.3", "node-1", ports=(EndpointPort("web", "TCP", 9090),)),
        ep("198.19.1.4", "node-1", ports=(EndpointPort("other", "TCP", 7070),)),  # lacks it
        ep("198.19.1.5", "node-1"),  # no ports known: a named targetPort cannot resolve
        ports=(port,),
    )
    assert dnat_targets(render([s])) == ["198.19.1.2:8080", "198.19.1.3:9090"]


def test_target_port_defaults() -> None:
    s = svc(ep("198.19.1.2", "node-1"), ports=(ServicePort("", "TCP", 80),))
    assert dnat_targets(render([s])) == ["198.19.1.2:80"]
    s = svc(ep("198.19.1.2", "node-1"), ports=(ServicePort("", "TCP", 80, None, "8081"),))
    assert dnat_targets(render([s])) == ["198.19.1.2:8081"]


def test_protocols_and_families() -> None:
    s = svc(
        ep("198.19.1.2", "node-1"),
        ep("fd00:19:0:1::2", "node-1"),
        vips=("198.18.32.20", "fd00:18::a:20"),
        ports=(
            ServicePort("a", "TCP", 80, None, 80),
            ServicePort("b", "UDP", 53, None, 53),
            ServicePort("c", "SCTP", 99, None, 99),
        ),
    )
    doc = render([s])
    assert elements(doc, "endpoint-counts4") == {
        '{"concat":["198.18.32.20","sctp",99]}': "1",
        '{"concat":["198.18.32.20","tcp",80]}': "1",
        '{"concat":["198.18.32.20","udp",53]}': "1",
    }
    assert len(elements(doc, "endpoint-counts6")) == 3
    assert flat_targets(doc) == {
        "198.18.32.20 . tcp . 80": ["198.19.1.2:80"],
        "198.18.32.20 . udp . 53": ["198.19.1.2:53"],
        "198.18.32.20 . sctp . 99": ["198.19.1.2:99"],
        "fd00:18::a:20 . tcp . 80": ["[fd00:19:0:1::2]:80"],
        "fd00:18::a:20 . udp . 53": ["[fd00:19:0:1::2]:53"],
        "fd00:18::a:20 . sctp . 99": ["[fd00:19:0:1::2]:99"],
    }
    # with affinity, the endpoint chains DNAT per protocol
    rules = [
        r
        for rs in chains(render([replace(s, session_affinity="ClientIP")])).values()
        for r in rs
        if " dnat " in r
    ]
    assert "meta l4proto sctp dnat ip to 198.19.1.2:99" in rules
    assert "meta l4proto udp dnat ip6 to [fd00:19:0:1::2]:53" in rules


def test_family_without_endpoints_rejects_for_that_family_only() -> None:
    s = svc(ep("198.19.1.2", "node-1"), vips=("198.18.32.20", "fd00:18::a:20"))
    doc = render([s])
    assert len(elements(doc, "endpoint-counts4")) == 1 and not elements(doc, "endpoint-counts6")
    assert list(elements(doc, "noendpoints6").values()) == ['{"goto":{"target":"reject-chain"}}']


def test_affinity_timeout_default_and_cap() -> None:
    def timeouts(**kw: Any) -> set[int]:
        doc = render([svc(ep("198.19.1.2", "node-1"), session_affinity="ClientIP", **kw)])
        return {c["add"]["set"]["timeout"] for c in doc["nftables"] if "set" in c["add"]}

    assert timeouts() == {AFFINITY_TIMEOUT_DEFAULT}
    assert timeouts(session_affinity_timeout=10**6) == {AFFINITY_TIMEOUT_MAX}
    assert timeouts(session_affinity_timeout=30) == {30}
    no_aff = render([svc(ep("198.19.1.2", "node-1"))])
    assert not [c for c in no_aff["nftables"] if "set" in c["add"]]


def test_source_ranges_per_family_and_the_node_itself() -> None:
    s = svc(
        ep("198.19.1.2", "node-1"),
        vips=("198.18.32.20", "fd00:18::a:20"),
        source_ranges=("fd00:18::1:0/112",),
    )
    fw = [r for n, r in chains(render([s])).items() if n.startswith("fw-")]
    assert fw == [["meta nfproto ipv4 drop", "ip6 saddr != fd00:18::1:0/112 drop"]]
    # a range that holds this node's IP also admits the VIP (kube-proxy's rule for VIPs that
    # loop back through the node)
    s = svc(ep("198.19.1.2", "node-1"), source_ranges=("198.18.0.0/24", "198.18.2.0/24"))
    fw = [r for n, r in chains(render([s], ips=("198.18.0.10",))).items() if n.startswith("fw-")]
    assert fw == [["ip saddr != { 198.18.0.0/24, 198.18.2.0/24, 198.18.32.20 } drop"]]


def test_first_service_keeps_a_contested_address() -> None:
    a = svc(ep("198.19.1.2", "node-1"), name="a")
    b = svc(ep("198.19.1.3", "node-1"), name="b")
    assert dnat_targets(render([b, a])) == ["198.19.1.2:8080"]


@pytest.mark.parametrize(
    "kw",
    [
        {"vips": ("not-an-ip",)},
        {"ports": (ServicePort("x", "ICMP", 80),)},
        {"ports": (ServicePort("x", "TCP", 0),)},
        {"source_ranges": ("10.0.0.0/33",)},
    ],
)
def test_bad_input_raises(kw: dict[str, Any]) -> None:
    with pytest.raises(NodeRulesError):
        render([svc(ep("198.19.1.2", "node-1"), **kw)])
    with pytest.raises(NodeRulesError):
        render([svc(ep("not-an-ip", "node-1"))])


def test_endpoints_from_slices() -> None:
    slices = [
        {
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [
                {
                    "addresses": ["198.19.1.2"],
                    "nodeName": "node-1",
                    "zone": "zone-a",
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-1"}]},
                },
                {
                    "addresses": ["198.19.1.3"],
                    "nodeName": "node-1",
                    "conditions": {"ready": False, "serving": True, "terminating": True},
                },
                {"addresses": ["198.19.1.4"], "conditions": {}},
            ],
        }
    ]
    a, b, c = endpoints_from_slices(slices)
    assert a == Endpoint(
        "198.19.1.2",
        "node-1",
        "zone-a",
        True,
        True,
        False,
        ("zone-a",),
        ("node-1",),
        (EndpointPort("http", "TCP", 8080),),
    )
    assert (b.ready, b.serving, b.terminating) == (False, True, True)
    assert (c.ready, c.serving, c.node) == (True, True, None)  # nil conditions mean ready


def test_input_from_json_round_trip() -> None:
    obj = {
        "node": {"name": "node-1", "zone": "zone-a", "ips": ["198.18.0.10"]},
        "services": [
            {
                "namespace": "shop",
                "name": "web",
                "vips": ["198.18.32.10"],
                "ports": [
                    {
                        "name": "http",
                        "protocol": "TCP",
                        "port": 80,
                        "nodePort": 31000,
                        "targetPort": "http",
                    }
                ],
                "endpoints": [
                    {
                        "address": "198.19.1.2",
                        "node": "node-1",
                        "zone": "zone-a",
                        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                    },
                    {
                        "address": "198.19.1.3",
                        "node": "node-1",
                        "zone": "zone-a",
                        "ready": False,
                        "serving": False,
                        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                    },
                    {
                        "address": "198.19.1.4",
                        "node": "node-1",
                        "zone": "zone-a",
                        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                    },
                    {
                        "address": "198.19.2.2",
                        "node": "node-2",
                        "zone": "zone-b",
                        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                    },
                ],
                "externalTrafficPolicy": "Local",
            }
        ],
    }
    node, services = input_from_json(obj)
    assert node == NodeInfo("node-1", "zone-a", ("198.18.0.10",))
    assert services == (LOCAL_WEB,)
    with pytest.raises(NodeRulesError):
        input_from_json({"services": []})


# ==============================================================================================
# diffs
# ==============================================================================================
def verbs(change: dict[str, Any]) -> list[str]:
    return [f"{v} {k}" for c in change["nftables"] for v, body in c.items() for k in body]


def test_diff_of_equal_renders_is_empty() -> None:
    assert diff_rules(render([LOCAL_WEB, CLUSTER_API]), render([CLUSTER_API, LOCAL_WEB])) == {
        "nftables": []
    }


def test_endpoint_change_is_a_few_elements_and_no_chain() -> None:
    before = render([LOCAL_WEB, CLUSTER_API])
    eps = (*LOCAL_WEB.endpoints[:2], Endpoint("198.19.1.9", "node-1", "zone-a", ports=HTTP))
    after = render([replace(LOCAL_WEB, endpoints=eps), CLUSTER_API])
    change = diff_rules(before, after)
    # 198.19.1.4 (slot 1) is replaced by 198.19.1.9: that slot's address and the hairpin entry;
    # on the internal path node-2's endpoint left too (slot 2 and the count of 3 go)
    assert sorted(verbs(change)) == ["add element"] * 3 + ["delete element"] * 4
    text = dump({"nftables": [c for c in change["nftables"] if "add" in c]})
    assert "198.18.32.10 . tcp . 80 . 0x200001 : 198.19.1.9" in text
    assert "198.19.1.9 . 198.19.1.9 : 1" in text
    # one more endpoint: a new count (the next pick chain), one slot more, still no chain
    more = (*LOCAL_WEB.endpoints, Endpoint("198.19.1.9", "node-1", "zone-a", ports=HTTP))
    change = diff_rules(before, render([replace(LOCAL_WEB, endpoints=more), CLUSTER_API]))
    assert sorted(verbs(change)) == ["add element"] * 5 + ["delete element"] * 3
    text = dump({"nftables": [c for c in change["nftables"] if "add" in c]})
    assert "endpoint-counts4 { 198.18.32.10 . tcp . 80 : 3 }" in text
    assert "198.18.32.10 . tcp . 80 . 0x200002 : 198.19.1.9" in text
    # no verdict element either (adding one makes the kernel re-validate every jump)
    assert not [c for c in change["nftables"] if "goto" in json.dumps(c)]


def test_losing_the_last_local_endpoint_moves_the_element() -> None:
    before = render([LOCAL_WEB])
    gone = LBService(**{**LOCAL_WEB.__dict__, "endpoints": LOCAL_WEB.endpoints[3:]})
    change = diff_rules(before, render([gone]))
    adds = [
        c["add"]["element"]["name"] for c in change["nftables"] if "element" in c.get("add", {})
    ]
    deletes = [
        c["delete"]["element"]["name"]
        for c in change["nftables"]
        if "element" in c.get("delete", {})
    ]
    # the internal path keeps node-2's endpoint (its count, slot 0 now theirs)
    assert adds == ["noendpoints4", "internal-endpoint-counts4", "endpoint-addrs4"]
    assert sorted(deletes) == [
        "endpoint-addrs4",
        "endpoint-counts4",
        "endpoint-ports4",
        "hairpin4",
        "internal-endpoint-counts4",
    ]
    # an affinity Service's element that pointed at its chain goes before the chain
    aff = replace(LOCAL_WEB, session_affinity="ClientIP")
    order = verbs(diff_rules(render([aff]), render([replace(aff, endpoints=gone.endpoints)])))
    assert order.index("delete element") < order.index("delete chain")


def test_new_service_only_adds() -> None:
    change = diff_rules(render([CLUSTER_API]), render([CLUSTER_API, LOCAL_WEB]))
    assert {v.split()[0] for v in verbs(change)} == {"add"}


def test_diff_from_nothing_and_to_nothing() -> None:
    full = diff_rules({"nftables": []}, render([LOCAL_WEB]))
    assert index_rules(full).same_as(index_rules(render([LOCAL_WEB])))
    assert diff_rules(render([LOCAL_WEB]), {"nftables": []}) == {
        "nftables": [{"delete": {"table": {"family": "inet", "name": "portico"}}}]
    }


def test_diff_against_a_listing_keeps_affinity_pins_and_ignores_handles() -> None:
    doc = render([CLUSTER_API])
    listing: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}}]
    for c in doc["nftables"]:
        ((kind, obj),) = c["add"].items()
        obj = {**obj, "handle": 7}
        if kind == "set":
            obj = {
                **obj,
                "size": 65535,
                "elem": [{"elem": {"val": "198.18.1.1", "timeout": 600, "expires": 590}}],
            }
        listing.append({kind: obj})
    listing.append({"table": {"family": "ip", "name": "someone-else", "handle": 1}})
    assert diff_rules({"nftables": listing}, doc) == {"nftables": []}


def test_replace_table_is_one_transaction_from_scratch() -> None:
    doc = render([LOCAL_WEB])
    cmds = replace_table(doc)["nftables"]
    assert verbs({"nftables": cmds[:2]}) == ["add table", "delete table"]
    assert cmds[2:] == doc["nftables"]
    json.dumps(cmds)  # plain JSON


def test_golden_no_endpoints_rejects_as_local_traffic_when_the_node_ip_is_known() -> None:
    # Forwarded, the packet would first draw an ICMP redirect to an on-link client, which eats
    # the client's ICMP rate-limit token: the port-unreachable would never leave. So it is
    # DNATed to the node itself (marked) and rejected in filter-input, before any socket.
    empty = LBService(
        "shop", "gone", ("198.18.32.12", "fd00:18::a:12"), (ServicePort("", "UDP", 9999),)
    )
    assert (
        lines(render([empty], ips=("198.18.0.10", "fd00:18::a")))
        == """
add map inet portico reject-local4 { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map inet portico reject-local6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
add chain inet portico reject-dnat4
add chain inet portico reject-dnat6
add element inet portico noendpoints4 { 198.18.32.12 . udp . 9999 : goto reject-chain }
add element inet portico noendpoints6 { fd00:18::a:12 . udp . 9999 : goto reject-chain }
add element inet portico reject-local4 { 198.18.32.12 . udp . 9999 : goto reject-dnat4 }
add element inet portico reject-local6 { fd00:18::a:12 . udp . 9999 : goto reject-dnat6 }
add rule inet portico filter-input meta mark & 0x800000 != 0 goto reject-chain
add rule inet portico nat-prerouting ip daddr . meta l4proto . th dport vmap @reject-local4
add rule inet portico nat-prerouting ip6 daddr . meta l4proto . th dport vmap @reject-local6
add rule inet portico reject-dnat4 meta mark set meta mark | 0x800000 dnat ip to 198.18.0.10
add rule inet portico reject-dnat6 meta mark set meta mark | 0x800000 dnat ip6 to [fd00:18::a]
""".strip()
    )
    # the mark check comes first in filter-input, the VIP lookup first in nat-prerouting
    c = chains(render([empty], ips=("198.18.0.10",)))
    assert c["filter-input"][0] == "meta mark & 0x800000 != 0 goto reject-chain"
    assert c["nat-prerouting"] == [
        "ip daddr . meta l4proto . th dport vmap @reject-local4",
        "jump services",
    ]
    # a Local Service without local endpoints drops, it is not rejected locally
    local = LBService(**{**LOCAL_WEB.__dict__, "endpoints": LOCAL_WEB.endpoints[3:]})
    assert not elements(render([local], ips=("198.18.0.10",)), "reject-local4")


def test_unreachable_endpoints_are_left_out_by_the_other_nodes_only() -> None:
    a = Endpoint("198.19.1.2", "node-1", "zone-a")
    b = Endpoint("198.19.2.2", "node-2", "zone-b", unreachable=True)
    node1, node2 = NodeInfo("node-1", "zone-a"), NodeInfo("node-2", "zone-b")
    for policy in ("Cluster", "Local"):
        # Local: the short-circuit path (a pod's connection) renders it as Cluster.
        got = select_endpoints([a, b], "Cluster", node1).endpoints
        assert [e.address for e in got] == [a.address], policy
    assert [e.address for e in select_endpoints([a, b], "Cluster", node2).endpoints] == [
        a.address,
        b.address,
    ]
    assert [e.address for e in select_endpoints([a, b], "Local", node2).endpoints] == [b.address]

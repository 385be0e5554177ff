"""Flow pinning in the gateway's forwarding table (``fwdrules``), as data: pure, no I/O.

Why: the Maglev table decides the node of a *new* flow; when the set of nodes changes (a node
starts draining, a node is added), about 1/N of the slots move, and without state every
established flow of those slots would be sent to a node that has no conntrack entry for it.
So the gateway remembers, per flow, the node it went to, and sends the flow's later packets
there while that node may still carry established flows.

What is stored: one dynamic map per family and protocol, ``flows4-tcp`` ... ``flows6-sctp``,
``flow key : node id``. The value names the *node* (its id, below), never a Maglev slot, so a
rebuilt table moves no pinned flow. Keys:

* IPv4: ``ip saddr . th sport . ip daddr . th dport``, exact (the protocol is the map's);
* IPv6: ``jhash(ip6 saddr . ip6 daddr) . th sport . th dport``: nft 1.0.6 cannot generate a
  map ``update`` whose key is longer than 16 bytes (an assertion in its register allocation),
  so the two addresses are hashed to 31 bits; two flows share a key only with the same ports
  and a colliding hash (about 2e-3 expected pairs among 1 M flows on one port), and then the
  second follows the first's node.

A node id is a 32-bit number: an IPv4 node's address itself, an IPv6 node's a digest of its
address (a collision takes the next free number, in address order). ``nodes4``/``nodes6`` map
ids to addresses; the Maglev slot maps hold ids.

The data path of a Service port (chain ``svc-<id>``, ``fwdrules``), TCP::

    pinned, node in @est-<x>, no FIN/RST -> goto pin-refresh: ``update`` (expiry renewed)
    pinned, node in @est-<x>, FIN or RST -> goto pin-close: ``update``, CLOSING_TIMEOUT
        ... each helper then forwards to the node the mark names
    SYN without ACK     -> the hash decides; nothing is stored (a SYN flood neither fills the
                           map nor evicts anything: it costs one lookup a SYN)
    FIN or RST          -> the hash decides; nothing is stored (a connection that ends, or
                           the RST a client answers a flood's SYN-ACK with)
    otherwise           -> the hash decides, goto pin-add: ``add`` (the flow is pinned to the
                           node the hash chose; a full map refuses the add and only that
                           statement fails: the packet is forwarded unpinned)

A SYN is looked up too: a client that reuses a source port while its old pin lives (the pin of
a closed connection can outlive the client's TIME_WAIT) sends the SYN where its first ACK will
go, to the pinned node, rather than the SYN to the hash's node and the ACK to the pin's.

UDP and SCTP: the same without the SYN and FIN rules, with UDP_TIMEOUT. ``@est-<x>`` is the
set of node ids that may carry the port's established flows: its healthy nodes and its
draining ones (until their drain timeout); a dead node is in none, so its flows go to the hash
at the next packet, without the control plane touching the map. ``update`` never overwrites a
value: a pin to a node that left ``@est`` is not renewed (the miss path uses ``add``, which
does not renew either), so it expires TCP_TIMEOUT after the flow's last pinned packet.

Measured (``bench/gateway_flows.py``, 1 M pins per family): ~100 bytes of kernel memory a pin
(the default bound, 1,048,576 per map, is ~100 MiB per busy map); finding a dead node's pins
from the control plane instead would take a netlink dump of the map, 60-75 s at 1 M (the
kernel restarts its walk of the set at each dump message), hence the per-packet est check.

The ``update``/``add`` statements live in static helper chains (``pin-*``) because nft 1.0.6's
JSON has no map statement, neither to write nor to list (it lists the statement as nft text):
the helpers are written as nft text, once per table (re)build, and every other transaction is
JSON that never touches them. The flows maps are never flushed by a re-render or a full
replace: a gateway restart keeps every pin.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Json = dict[str, Any]

PIN_PROTOCOLS = ("tcp", "udp", "sctp")
FLOW_MAP = {(fam, proto): f"flows{fam}-{proto}" for fam in (4, 6) for proto in PIN_PROTOCOLS}
NODES_MAP = {4: "nodes4", 6: "nodes6"}  # node id : node address
# The ids of the nodes that are this gateway's own host (a gateway with hostNetwork on a node):
# they are in no ``nodes`` map, so their ``fwd`` misses and breaks the rule, and the rule
# after it hands the packet to the host's IP stack, where the node's own rules take the VIP.
LOCAL_SET = "local-nodes"
EST_SET_PREFIX = "est-"  # the node ids that may carry a port's established flows
HELPER_PREFIX = "pin-"
# Idle timeouts (seconds) of a pin: TCP and UDP as AWS NLB's idle timeouts (350 s, 120 s);
# TCP longer than the default drain timeout, so a draining connection idle for a while keeps
# its node. A FIN or RST from the client shortens it.
TCP_TIMEOUT = 350
UDP_TIMEOUT = 120
CLOSING_TIMEOUT = 10
FLOW_TIMEOUT = {"tcp": TCP_TIMEOUT, "udp": UDP_TIMEOUT, "sctp": UDP_TIMEOUT}
# Elements per map (the kernel refuses more: the ``add`` fails and the flow goes unpinned).
DEFAULT_FLOW_LIMIT = 1_048_576
# The IPv6 key's address hash: any fixed values, the same on every gateway.
V6_KEY_SEED = 0x0F10C6
V6_KEY_MOD = 2**31 - 1  # listed as given (2**32 - 1 lists as -1)
FLOW_KEY_TYPE = {
    4: ("ipv4_addr", "inet_service", "ipv4_addr", "inet_service"),
    6: ("mark", "inet_service", "inet_service"),
}
_IP = {4: "ip", 6: "ip6"}
MARK: Json = {"meta": {"key": "mark"}}


# ==============================================================================================
# node ids
# ==============================================================================================
def node_ids(addresses: Iterable[IP]) -> dict[IP, int]:
    """A stable 32-bit id per node address (see the module docstring); never 0."""
    out: dict[IP, int] = {}
    taken: set[int] = set()
    for a in sorted(set(addresses), key=lambda a: (a.version, int(a))):
        if a.version == 4:
            nid = int(a)
        else:
            nid = int.from_bytes(hashlib.sha256(a.packed).digest()[:4], "big")
        while nid == 0 or nid in taken:
            nid = (nid + 1) & 0xFFFFFFFF
        out[a] = nid
        taken.add(nid)
    return out


# ==============================================================================================
# expressions (in the form the kernel lists them back)
# ==============================================================================================
def _payload(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def flow_lookup(family: int, proto: str, l4: str) -> list[Json]:
    """Statements that set the mark to the flow's pinned node id (the rule breaks on a miss).
    ``l4``: "tcp" when the rule matched TCP flags before (nft then lists ports as tcp's), else
    "th"."""
    name = "@" + FLOW_MAP[(family, proto)]
    if family == 4:
        key: Json = {
            "concat": [
                _payload("ip", "saddr"),
                _payload(l4, "sport"),
                _payload("ip", "daddr"),
                _payload(l4, "dport"),
            ]
        }
        return [{"mangle": {"key": MARK, "value": {"map": {"key": key, "data": name}}}}]
    pair = {"concat": [_payload("ip6", "saddr"), _payload("ip6", "daddr")]}
    h = {"jhash": {"mod": V6_KEY_MOD, "seed": V6_KEY_SEED, "expr": pair}}
    key = {"concat": [MARK, _payload(l4, "sport"), _payload(l4, "dport")]}
    return [
        {"mangle": {"key": MARK, "value": h}},
        {"mangle": {"key": MARK, "value": {"map": {"key": key, "data": name}}}},
    ]


def est_match(est_set: str) -> Json:
    return {"match": {"op": "==", "left": MARK, "right": "@" + est_set}}


def deliver_locally(*conditions: Json) -> list[Json]:
    """The rule after a ``fwd``: reached only when the fwd's ``nodes`` lookup missed, i.e. the
    mark names this gateway's own node. ``fwd`` cannot send a packet to the host it runs on
    (the host never answers its own neighbour solicitation), so the packet is accepted into the
    host's IP stack instead, with the mark cleared: the node's NAT rules (Portico's agent, or
    kube-proxy, whose masquerade bit 0x4000 a node id could carry) must see a plain packet."""
    return [
        *conditions,
        {"match": {"op": "==", "left": MARK, "right": "@" + LOCAL_SET}},
        {"mangle": {"key": MARK, "value": 0}},
        {"accept": None},
    ]


def fwd_to_node(family: int) -> Json:
    to = {"map": {"key": MARK, "data": "@" + NODES_MAP[family]}}
    return {"fwd": {"dev": {"meta": {"key": "iif"}}, "family": _IP[family], "addr": to}}


def tcp_flags(op: str, flags: list[str]) -> Json:
    return {"match": {"op": op, "left": _payload("tcp", "flags"), "right": flags}}


SYN_ONLY: Json = {
    "match": {
        "op": "==",
        "left": {"&": [_payload("tcp", "flags"), ["syn", "ack"]]},
        "right": "syn",
    }
}
NOT_CLOSING = tcp_flags("!", ["fin", "rst"])
CLOSING = tcp_flags("in", ["fin", "rst"])


# ==============================================================================================
# helper chains: the map statements, as nft text
# ==============================================================================================
def _key_text(family: int) -> str:
    if family == 4:
        return "ip saddr . th sport . ip daddr . th dport"
    return (
        f"jhash ip6 saddr . ip6 daddr mod {V6_KEY_MOD} seed {V6_KEY_SEED:#x} . th sport . th dport"
    )


def helper(kind: str, family: int, proto: str) -> str:
    """The chain that pins (kind "add"), renews ("refresh") or shortens ("close") a flow."""
    return f"{HELPER_PREFIX}{kind}{family}-{proto}"


def helper_statement(kind: str, family: int, proto: str) -> str:
    """The chain's one statement, exactly as nft lists it."""
    name = FLOW_MAP[(family, proto)]
    op = "add" if kind == "add" else "update"
    timeout = f" timeout {CLOSING_TIMEOUT}s" if kind == "close" else ""
    return f"{op} @{name} {{ {_key_text(family)}{timeout} : meta mark }}"


LOCAL_TEXT = f"meta mark @{LOCAL_SET} meta mark set 0x00000000 accept"


def helpers() -> dict[str, tuple[int, str, str, str]]:
    """Every helper chain and its three rules as nft text: the map statement, then the ``fwd``
    to the node the mark names (the helpers are reached by ``goto``: a verdict ends a rule, so
    the forwarding cannot follow a jump in the rule that jumped), then the gateway's own node
    (``deliver_locally``; reached only when the fwd missed)."""
    out = {}
    for fam in (4, 6):
        fwd = f"fwd {_IP[fam]} to meta mark map @{NODES_MAP[fam]} device meta iif"
        for proto in PIN_PROTOCOLS:
            kinds = ("add", "refresh", "close") if proto == "tcp" else ("add", "refresh")
            for kind in kinds:
                stmt = helper_statement(kind, fam, proto)
                out[helper(kind, fam, proto)] = (fam, stmt, fwd, LOCAL_TEXT)
    return out


def helper_rules(chain: str) -> tuple[list[Any], ...]:
    """A helper chain's rules as the kernel lists them (nft lists the map statement as text)."""
    fam, stmt, _fwd, _local = helpers()[chain]
    return ([stmt], [fwd_to_node(fam)], deliver_locally())


def is_helper(chain: str) -> bool:
    return chain.startswith(HELPER_PREFIX)


def helpers_text(table_family: str, table: str) -> str:
    """One nft transaction that (re)writes every helper chain's rules."""
    lines = []
    for chain, (_fam, *rules) in helpers().items():
        lines.append(f"add chain {table_family} {table} {chain}")
        lines.append(f"flush chain {table_family} {table} {chain}")
        lines += [f"add rule {table_family} {table} {chain} {r}" for r in rules]
    return "\n".join(lines) + "\n"


def goto(chain: str) -> Json:
    return {"goto": {"target": chain}}

"""The gateway's forwarding table, as data: pure functions, no I/O.

``render_fwd(ports, devices, size)`` turns the gateway's forwarding decisions (per Service port:
its VIP, policy and Maglev slots already mapped to node addresses) into :class:`FwdRules`, the
whole of the one table the gateway owns, ``netdev portico-gw``. ``FwdRules.to_json_replace()``
builds it in one libnftables JSON transaction; ``fwddiff.diff_fwd(old, new)`` changes one into
the other touching only what differs.

Data path (direct server return at L2; every packet is looked at, there is no conntrack):

* per LAN device a base chain ``ingress-<dev>`` (netdev ingress, priority 0, policy accept)::

      ip daddr . meta l4proto . th dport vmap @svc4   # a VIP port: goto its chain
      ip daddr vmap @unknown4                         # any other packet to a VIP: goto refuse4
                                                      # (or vip-<id>, below)
      (the same for ip6 with svc6, unknown6)

  ARP, NDP and traffic to non-VIP addresses pass untouched.
* any other packet to a VIP is refused at once, from the gateway, rate-limited, so that a client
  asking for a port the Service does not have (any more) learns it instead of waiting for its
  timeout (a Service moved from port 80 to 81: 80 is refused)::

      chain refuse4 { ip frag-off & 0x1fff != 0 drop             # refuse6: frag frag-off != 0
                      meta l4proto { tcp, udp, sctp } jump refuse
                      drop }
      chain refuse { limit rate over 100/second burst 50 packets drop
                     meta l4proto tcp reject with tcp reset
                     reject with icmpx port-unreachable }          # ICMP / ICMPv6, by family

  The reject is sent from netdev ingress itself (nft_reject_netdev, which this kernel and nft
  1.0.6 have): the reply's source is the VIP, it leaves by the device the packet came in on, to
  the MAC it came from, and nothing of the packet goes to the gateway's IP stack (NAT mode's
  table never sees it). One limit, as the ``refuse`` chain is shared by both families and every
  device: 100 refusals a second, bursts of 50, per gateway; over it a packet is dropped, as
  before. The kernel itself never answers a reset, nor a packet whose checksum it cannot check.

  Still dropped, silently: ICMP to a VIP (echo included: the gateway cannot answer for the
  nodes, and an error about a node's reply would have to be hashed on its inner header, which
  nft cannot do) and any protocol but TCP, UDP and SCTP; non-first IP fragments (``th dport``
  does not load from them, so they miss the vmap even for a port the Service has, and a refusal
  would be false; first fragments are forwarded); a port without a healthy node (fail-closed,
  below); and a client outside the ``loadBalancerSourceRanges`` of every Service on the VIP,
  which learns nothing, not even which ports are missing: the element of a VIP whose every
  port has ranges goes to ``vip-<id>`` (``ip saddr != @admit-<id> drop; goto refuse4``), whose
  interval set holds the union of its ports' ranges of its family.
* per Service port a chain ``svc-<id>``::

      ip saddr != @src-<id> drop                      # only with sourceRanges
      counter name "forwarded-<VIP>"                  # what follows is forwarded (``vipstats``)
      <pinned flow, its node in @est-<x>: goto pin-refresh / pin-close>   # ``flowrules``
      tcp flags syn / syn,ack  meta mark set jhash ip saddr . th sport mod M seed 0x… \
          meta mark set meta mark map @slots-<x>  fwd ip to meta mark map @nodes4 device iif
      (the same for an unpinned FIN or RST)
      meta mark set jhash … meta mark set meta mark map @slots-<x>  goto pin-add
      (or "drop" when the port has no healthy node)

  The counter rule (one per VIP, ``vipstats``) stands where every packet that reaches it is
  forwarded: a port with healthy nodes forwards all it gets past the source ranges (a new
  flow by the hash, a pinned one to its node), a NAT mode port hands it all to the IP stack;
  a port with only draining nodes counts in a rule that matches pinned flows alone
  (``<pinned flow, its node in @est-<x>> counter name ...``), and a port with no node at all
  counts nothing. A named counter rather than one in the rule: it outlives the chain's rewrites.

  ClientIP affinity hashes ``ip saddr`` alone. Two deviations from the obvious form, both
  forced by nft 1.0.6's JSON parser: it cannot declare a ``typeof`` map and refuses an
  unqualified ``integer`` key, so the slot maps are ``type mark : mark`` and the hash goes
  through the packet mark (the packet leaves by ``fwd`` right after; nothing else sees the
  mark). And ``device meta iif`` (accepted by the kernel, whose fwd reads the device from a
  register) sends the packet back out of the LAN device it came in on, so the Service chains do
  not depend on the device and one set of them serves every ingress chain.
* slot maps ``slots-<family>-<x>`` hold ``i : node id`` for i < M, and ``nodes4``/``nodes6``
  ``node id : node address`` (``flowrules``: the flow pins name nodes by id, so a rebuilt slot
  map moves no pinned flow). Ports whose slot lists are equal (1,000 Cluster Services over the
  same healthy nodes) share one map, and ports whose established-flow nodes are equal one
  ``est-<family>-<x>`` set.

The hash seed is fixed: without ``seed``, nft picks a random one at each rule load, which would
move every flow on a reload and differ between gateways.

A change of healthy nodes updates the slot map in place: render with ``previous=`` the rules in
force and the new slot list keeps the map's name, so the diff is a ``delete element`` and an
``add element`` per slot that changed (Maglev moves about 1/N of them when one of N nodes leaves),
atomic for packets within the one transaction, and no chain is rewritten; the est sets are
renamed in place the same way. A slot list never seen before gets a map named after its
content.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .flowrules import (
    CLOSING,
    DEFAULT_FLOW_LIMIT,
    EST_SET_PREFIX,
    FLOW_KEY_TYPE,
    FLOW_MAP,
    FLOW_TIMEOUT,
    LOCAL_SET,
    NODES_MAP,
    NOT_CLOSING,
    SYN_ONLY,
    deliver_locally,
    est_match,
    flow_lookup,
    fwd_to_node,
    goto,
    helper,
    helper_rules,
    helpers,
    is_helper,
    node_ids,
)
from .fwdmemo import RenderMemo
from .vipstats import counter_name

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Json = dict[str, Any]

# -- names and numbers ------------------------------------------------------------------------
FAMILY = "netdev"
TABLE = "portico-gw"
INGRESS_PRIORITY = 0
# Any fixed value does; it must only never change (and be the same on every gateway).
FLOW_HASH_SEED = 0x5EED1B05
INGRESS_CHAIN_PREFIX = "ingress-"
SERVICE_CHAIN_PREFIX = "svc-"
SOURCE_SET_PREFIX = "src-"
SLOTS_MAP_PREFIX = "slots-"
DISPATCH_MAP = {4: "svc4", 6: "svc6"}  # vip . l4proto . dport : goto svc-<id>
UNKNOWN_MAP = {4: "unknown4", 6: "unknown6"}  # vip : goto refuse<4|6> or vip-<id>
REFUSE_CHAIN = "refuse"  # the rate limit and the reject, shared by both families
REFUSE_FAMILY_CHAIN = {4: "refuse4", 6: "refuse6"}
VIP_CHAIN_PREFIX = "vip-"  # a VIP whose every port has source ranges
ADMIT_SET_PREFIX = "admit-"  # ... and the union of those ranges
# Refusals (TCP resets, ICMP port unreachables) per second, and the burst, for the whole
# gateway; over the limit a packet is dropped.
REFUSE_RATE = 100
REFUSE_BURST = 50
REFUSED_PROTOCOLS = ("tcp", "udp", "sctp")  # in the kernel's listing order (by number)
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
IP_PROTO = {4: "ip", 6: "ip6"}
SLOT_KEY_TYPE = "mark"  # 32 bits, as jhash's result (see the module docstring)
SLOT_VALUE_TYPE = "mark"  # a node id (``flowrules``)
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEVICE_NAME_MAX = 15  # IFNAMSIZ - 1
ID_LEN = 12  # hex digits of sha256 in generated names


class FwdRulesError(ValueError):
    """Input that cannot be rendered (a caller's bug: slots of the wrong count or family)."""


# ==============================================================================================
# input and output
# ==============================================================================================
@dataclass(frozen=True)
class FwdPort:
    """One VIP port of a Service and where its flows go."""

    service: str  # "namespace/name"
    vip: IP
    protocol: str  # TCP, UDP or SCTP
    port: int
    affinity: bool  # ClientIP: hash the client address only
    source_ranges: tuple[IPNetwork, ...]  # empty: every client; other family's are ignored
    slots: tuple[IP, ...]  # the Maglev table as node addresses of the VIP's family; empty: none
    # NAT mode: hand the packet (once past the source ranges) to the host's IP stack, whose
    # NAT table (``natrules``) sends it to a nodePort; ``slots`` is then unused.
    to_stack: bool = False
    # Nodes that may carry the port's established (pinned) flows besides those in ``slots``:
    # its draining nodes (see ``flowrules``); a node in neither loses its pinned flows.
    established: tuple[IP, ...] = ()

    @property
    def family(self) -> int:
        return self.vip.version


@dataclass(frozen=True)
class Collection:
    """A named set (``value_type`` None) or map's definition."""

    key_type: str | tuple[str, ...]
    value_type: str | None = None
    flags: tuple[str, ...] = ()
    size: int | None = None  # the element limit (the flows maps')
    timeout: int | None = None  # seconds, the default of its elements (the flows maps')

    @property
    def dynamic(self) -> bool:
        """Filled from the packet path (the flows maps): never flushed, never compared."""
        return self.timeout is not None

    @property
    def kind(self) -> str:
        return "set" if self.value_type is None else "map"

    def json(self, name: str) -> Json:
        out: Json = {**WHERE, "name": name}
        out["type"] = list(self.key_type) if isinstance(self.key_type, tuple) else self.key_type
        if self.value_type is not None:
            out["map"] = self.value_type
        if self.flags:
            out["flags"] = list(self.flags)
        if self.size is not None:
            out["size"] = self.size
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True)
class BaseChain:
    device: str
    priority: int = INGRESS_PRIORITY
    hook: str = "ingress"
    type: str = "filter"
    policy: str = "accept"

    def json(self, name: str) -> Json:
        return {
            **WHERE,
            "name": name,
            "type": self.type,
            "hook": self.hook,
            "dev": self.device,
            "prio": self.priority,
            "policy": self.policy,
        }


@dataclass
class FwdRules:
    """What the table holds, in comparable form. Rules and elements are canonical JSON text
    (sorted keys), so that a render and the kernel's listing compare equal."""

    chains: dict[str, BaseChain | None] = field(default_factory=dict)  # None: a regular chain
    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    collections: dict[str, Collection] = field(default_factory=dict)
    elements: dict[str, dict[str, str | None]] = field(default_factory=dict)  # key -> value
    counters: set[str] = field(default_factory=set)  # named counters (``vipstats``)
    skipped: tuple[FwdPort, ...] = ()  # ports whose VIP . protocol . port another one holds

    def same_as(self, other: FwdRules) -> bool:
        return (
            self.chains == other.chains
            and self.rules == other.rules
            and self.collections == other.collections
            and self.elements == other.elements
            and self.counters == other.counters
        )

    def slot_maps(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Each slot map's family and node addresses, slot 0 first."""
        out = {}
        for name, c in self.collections.items():
            fam = _slot_map_family(name)
            if fam is None or c.value_type != SLOT_VALUE_TYPE:
                continue
            nodes = self.elements.get(NODES_MAP[fam], {})
            elems = self.elements.get(name, {})
            by_slot = sorted((int(k), _address_text(nodes.get(v or ""))) for k, v in elems.items())
            out[name] = (fam, tuple(a for _, a in by_slot))
        return out

    def counts(self) -> dict[str, int]:
        return {
            "chains": len(self.chains),
            "rules": sum(len(r) for r in self.rules.values()),
            "maps": sum(1 for c in self.collections.values() if c.kind == "map"),
            "sets": sum(1 for c in self.collections.values() if c.kind == "set"),
            "elements": sum(len(e) for e in self.elements.values()),
            "counters": len(self.counters),
        }

    def to_json_replace(self, current: FwdRules | None = None) -> Json:
        """One transaction that makes the table hold exactly this, whatever it held. Rules are
        flushed and rebuilt and sets emptied and refilled without deleting the base chains, so
        packets see the old table or the new one. ``current`` (the kernel's listing, when
        known) says what else to delete: objects no longer wanted, and sets or base chains whose
        definition changed (which ``add`` cannot change). Counters are added, never flushed
        (an ``add`` of an existing one keeps its values), and deleted when no longer wanted."""
        table = {"family": FAMILY, "name": TABLE}
        cmds: list[Json] = [{"add": {"table": table}}]
        stale_chains: list[str] = []
        stale_counters: list[str] = []
        if current is not None:
            # Every chain's rules but the pin helpers' (``flowrules``: nft text, kept as is).
            for name in current.chains:
                if current.rules.get(name) and not is_helper(name):
                    cmds.append({"flush": {"chain": {**WHERE, "name": name}}})
            # Rules are gone after the flush, so nothing refers to these any more but vmap
            # elements, which go with their map or with the flush of the kept maps below.
            for name, c in current.collections.items():
                if self.collections.get(name) != c:
                    cmds.append({"delete": {c.kind: {**WHERE, "name": name}}})
            stale_chains = [
                n for n, c in current.chains.items() if n not in self.chains or self.chains[n] != c
            ]
            stale_counters = sorted(current.counters - self.counters)
        for name, c in self.collections.items():
            cmds.append({"add": {c.kind: c.json(name)}})
            if not c.dynamic:  # the flows maps keep their pins
                cmds.append({"flush": {c.kind: {**WHERE, "name": name}}})
        cmds += [{"delete": {"chain": {**WHERE, "name": n}}} for n in stale_chains]
        # After the flush of every rule that counted into them.
        cmds += [{"delete": {"counter": {**WHERE, "name": n}}} for n in stale_counters]
        cmds += [{"add": {"counter": {**WHERE, "name": n}}} for n in sorted(self.counters)]
        cmds += [{"add": {"chain": chain_json(n, c)}} for n, c in self.chains.items()]
        for name, elems in self.elements.items():
            if elems:
                cmds.append(element_cmd("add", name, self.collections[name], elems))
        for chain, rules in self.rules.items():
            if not is_helper(chain):  # written as nft text after (``helpers_text``)
                cmds += [rule_cmd(chain, r) for r in rules]
        return {"nftables": cmds}


WHERE = {"family": FAMILY, "table": TABLE}
_FAMILY_OF_ADDR = {v: k for k, v in ADDR_TYPE.items()}


def delete_table_json() -> Json:
    """Removes the table if it is there (``add`` first, so that ``delete`` cannot fail)."""
    t = {"family": FAMILY, "name": TABLE}
    return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}


def canon(value: Any) -> str:
    # Fast paths for slot numbers and addresses, which are most of a large table's elements
    # (json.dumps costs microseconds each); both give exactly what json.dumps would.
    if type(value) is int:
        return str(value)
    if type(value) is str and _PLAIN.fullmatch(value):
        return f'"{value}"'
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_PLAIN = re.compile(r"[0-9A-Za-z.:/_-]*")


def _address_text(canon: str | None) -> str:
    """An address element value back from its canonical JSON (a quoted plain string)."""
    if canon and canon[0] == '"' and _PLAIN.fullmatch(canon, 1, len(canon) - 1):
        return canon[1:-1]
    return str(json.loads(canon or '""'))


def chain_json(name: str, base: BaseChain | None) -> Json:
    return base.json(name) if base is not None else {**WHERE, "name": name}


def rule_cmd(chain: str, rule: str) -> Json:
    return {"add": {"rule": {**WHERE, "chain": chain, "expr": json.loads(rule)}}}


def element_cmd(op: str, name: str, c: Collection, elems: Mapping[str, str | None]) -> Json:
    items: list[Any] = []
    for k in sorted(elems):
        v = elems[k]
        if op == "delete" or c.kind == "set" or v is None:
            items.append(json.loads(k))
        else:
            items.append([json.loads(k), json.loads(v)])
    return {op: {"element": {**WHERE, "name": name, "elem": items}}}


# ==============================================================================================
# names
# ==============================================================================================
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LEN]


def port_id(port: FwdPort) -> str:
    """Stable per Service, VIP (hence family), protocol and port. The VIP is part of it so that
    two VIPs of one family of a Service never collide."""
    return _digest(f"{port.service}|{port.vip}|{port.protocol.lower()}|{port.port}")


def service_chain(port: FwdPort) -> str:
    return SERVICE_CHAIN_PREFIX + port_id(port)


def source_set(port: FwdPort) -> str:
    return SOURCE_SET_PREFIX + port_id(port)


def ingress_chain(device: str) -> str:
    return INGRESS_CHAIN_PREFIX + device


def vip_id(vip: IP) -> str:
    return _digest(f"vip|{vip}")


def vip_chain(vip: IP) -> str:
    """The chain of a VIP's unknown ports when every port of it has source ranges."""
    return VIP_CHAIN_PREFIX + vip_id(vip)


def admit_set(vip: IP) -> str:
    return ADMIT_SET_PREFIX + vip_id(vip)


def _content_name(family: int, slots: tuple[str, ...], attempt: int) -> str:
    salt = f"#{attempt}" if attempt else ""
    return f"{SLOTS_MAP_PREFIX}{family}-" + _digest(f"v{family}|{','.join(slots)}{salt}")


def _slot_map_family(name: str) -> int | None:
    """A slot map's family, from its name (``slots-4-...``); None for any other name."""
    if not name.startswith(SLOTS_MAP_PREFIX):
        return None
    fam = name[len(SLOTS_MAP_PREFIX) : len(SLOTS_MAP_PREFIX) + 2]
    return {"4-": 4, "6-": 6}.get(fam)


def _ref_of(prefix: str, rules: Iterable[str]) -> str | None:
    """The first collection named ``prefix...`` that ``rules`` refer to."""
    ref = re.compile(r'"@(' + re.escape(prefix) + r'[^"]+)"')
    for r in rules:
        m = ref.search(r)
        if m:
            return m.group(1)
    return None


SlotList = tuple[int, tuple[str, ...]]  # family, node addresses (or ids, for est sets)


def _slot_map_names(
    wanted: Mapping[SlotList, list[str]],
    previous: FwdRules | None,
    known: Mapping[str, SlotList] | None = None,
) -> dict[SlotList, str]:
    """``known``: ``previous.slot_maps()`` when the caller has it (``RenderMemo``)."""
    prev = known
    if prev is None:
        prev = previous.slot_maps() if previous is not None else {}
    return _inplace_names(wanted, prev, previous, SLOTS_MAP_PREFIX, _content_name, same_size=True)


def _inplace_names(
    wanted: Mapping[SlotList, list[str]],
    prev: Mapping[str, SlotList],
    previous: FwdRules | None,
    prefix: str,
    fresh: Callable[[int, tuple[str, ...], int], str],
    same_size: bool,
) -> dict[SlotList, str]:
    """A name per content (``wanted``: content -> the chains that use it) for the slot maps
    and est sets. A content that a previous collection (``prev``: name -> content) holds keeps
    that name; a new content takes over the previous collection its chains used before when
    that one is not otherwise kept (so the change is in place: only the elements that differ,
    no chain rewritten); otherwise it gets a fresh name from its content."""
    by_content = {content: name for name, content in prev.items()}
    names: dict[SlotList, str] = {}
    for content in wanted:
        if content in by_content:
            names[content] = by_content[content]
    taken = set(names.values())
    # Most used first: the list with the most chains behind it is the group that changed.
    rest = sorted((c for c in wanted if c not in names), key=lambda c: (-len(wanted[c]), c))
    for content in rest:
        used_before: Counter[str] = Counter()
        if previous is not None:
            for chain in wanted[content]:
                m = _ref_of(prefix, previous.rules.get(chain, ()))
                if m is not None:
                    used_before[m] += 1
        for name, _n in sorted(used_before.items(), key=lambda kv: (-kv[1], kv[0])):
            fam, slots = prev.get(name, (0, ()))
            if (
                name not in taken
                and fam == content[0]
                and (not same_size or len(slots) == len(content[1]))
            ):
                names[content] = name
                break
        else:
            attempt = 0
            while (name := fresh(*content, attempt)) in taken:
                attempt += 1
            names[content] = name
        taken.add(names[content])
    return names


def _est_name(family: int, ids: tuple[str, ...], attempt: int) -> str:
    salt = f"#{attempt}" if attempt else ""
    return f"{EST_SET_PREFIX}{family}-" + _digest(f"v{family}|{','.join(ids)}{salt}")


def _est_sets(rules: FwdRules) -> dict[str, SlotList]:
    """Each est set's family (from its name) and node ids, sorted."""
    out = {}
    for name in rules.collections:
        if (
            name.startswith(EST_SET_PREFIX)
            and name[len(EST_SET_PREFIX) + 1 : len(EST_SET_PREFIX) + 2] == "-"
        ):
            fam = int(name[len(EST_SET_PREFIX)])
            out[name] = (fam, tuple(sorted(rules.elements.get(name, {}), key=int)))
    return out


# ==============================================================================================
# expressions, in the exact form the kernel lists them back
# ==============================================================================================
def _payload(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


_MARK: Json = {"meta": {"key": "mark"}}
_DROP: Json = {"drop": None}


def _dispatch_rule(family: int) -> list[Json]:
    key = {
        "concat": [
            _payload(IP_PROTO[family], "daddr"),
            {"meta": {"key": "l4proto"}},
            _payload("th", "dport"),
        ]
    }
    return [{"vmap": {"key": key, "data": "@" + DISPATCH_MAP[family]}}]


def _unknown_rule(family: int) -> list[Json]:
    daddr = _payload(IP_PROTO[family], "daddr")
    return [{"vmap": {"key": daddr, "data": "@" + UNKNOWN_MAP[family]}}]


def _goto(chain: str) -> Json:
    return {"goto": {"target": chain}}


def _refuse_family_rules(family: int) -> list[list[Json]]:
    """A VIP's packet that is not for one of its ports: a non-first fragment is dropped, TCP,
    UDP and SCTP are refused (``refuse``), anything else (ICMP) is dropped."""
    if family == 4:
        frag: Json = {"&": [_payload("ip", "frag-off"), 0x1FFF]}  # the offset, not the flags
    else:
        frag = {"exthdr": {"name": "frag", "field": "frag-off"}}  # absent: the rule stops
    l4proto = {"meta": {"key": "l4proto"}}
    return [
        [{"match": {"op": "!=", "left": frag, "right": 0}}, _DROP],
        [
            {"match": {"op": "==", "left": l4proto, "right": {"set": list(REFUSED_PROTOCOLS)}}},
            {"jump": {"target": REFUSE_CHAIN}},
        ],
        [_DROP],
    ]


def _refuse_rules() -> list[list[Json]]:
    limit = {"rate": REFUSE_RATE, "burst": REFUSE_BURST, "per": "second", "inv": True}
    tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    return [
        [{"limit": limit}, _DROP],
        [tcp, {"reject": {"type": "tcp reset"}}],
        [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}],
    ]


def _admit_rule(family: int, admit: str) -> list[Json]:
    saddr = _payload(IP_PROTO[family], "saddr")
    return [{"match": {"op": "!=", "left": saddr, "right": "@" + admit}}, _DROP]


def _source_rule(port: FwdPort) -> list[Json]:
    saddr = _payload(IP_PROTO[port.family], "saddr")
    return [{"match": {"op": "!=", "left": saddr, "right": "@" + source_set(port)}}, _DROP]


def _hash_stmts(port: FwdPort, size: int, slots_map: str, l4: str) -> list[Json]:
    """The Maglev choice: the mark set to the node id of the flow's slot. ``l4``: "tcp" in a
    rule that matched TCP flags first (nft then lists the ports as tcp's)."""
    saddr = _payload(IP_PROTO[port.family], "saddr")
    flow = saddr if port.affinity else {"concat": [saddr, _payload(l4, "sport")]}
    jhash = {"jhash": {"mod": size, "seed": FLOW_HASH_SEED, "expr": flow}}
    to = {"map": {"key": _MARK, "data": "@" + slots_map}}
    return [{"mangle": {"key": _MARK, "value": jhash}}, {"mangle": {"key": _MARK, "value": to}}]


def _pinned_rules(
    port: FwdPort, size: int, slots_map: str | None, est: str, local: bool = False
) -> list[list[Json]]:
    """A port's forwarding with flow pinning (``flowrules``); no ``slots_map``: no node takes
    new flows (they are dropped), established ones still go to their node. ``local``: this
    gateway runs on a node (``deliver_locally`` after each inline ``fwd``)."""
    fam, proto = port.family, port.protocol.lower()
    rules: list[list[Json]] = []
    if proto == "tcp":
        lookup = flow_lookup(fam, proto, "tcp")
        rules.append([NOT_CLOSING, *lookup, est_match(est), goto(helper("refresh", fam, proto))])
        rules.append([CLOSING, *lookup, est_match(est), goto(helper("close", fam, proto))])
        if slots_map:
            # Not pinned, and nothing to pin: a SYN (a connection that may never be), a FIN or
            # RST (one that ends; a flood's SYN-ACKs draw the RSTs of the spoofed client).
            new = [*_hash_stmts(port, size, slots_map, "tcp"), fwd_to_node(fam)]
            rules.append([SYN_ONLY, *new])
            if local:  # the same condition: the mark is the one this SYN was just given
                rules.append(deliver_locally(SYN_ONLY))
            rules.append([CLOSING, *new])
            if local:
                rules.append(deliver_locally(CLOSING))
    else:
        lookup = flow_lookup(fam, proto, "th")
        rules.append([*lookup, est_match(est), goto(helper("refresh", fam, proto))])
    if slots_map:
        rules.append([*_hash_stmts(port, size, slots_map, "th"), goto(helper("add", fam, proto))])
    else:
        rules.append([_DROP])
    return rules


def _range_element(net: IPNetwork) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


# ==============================================================================================
# the renderer
# ==============================================================================================
def _check(port: FwdPort, size: int) -> None:
    where = f"{port.service} {port.vip} {port.protocol}/{port.port}"
    if port.protocol not in PROTOCOLS:
        raise FwdRulesError(f"{where}: protocol {port.protocol!r} (want TCP, UDP or SCTP)")
    if not 0 < port.port < 65536:
        raise FwdRulesError(f"{where}: port out of range")
    if port.slots and not port.to_stack and len(port.slots) != size:
        raise FwdRulesError(f"{where}: {len(port.slots)} slots, the table has {size}")


class _SlotTexts:
    """Each slot list as text, made once per tuple: ports over the same nodes usually share
    one tuple object, and turning M addresses into text per port dominated the render."""

    def __init__(self, memo: RenderMemo) -> None:
        self._by_id = memo.slot_texts  # kept from render to render (``fwdmemo``)

    def __call__(self, port: FwdPort) -> SlotList:
        found = self._by_id.get(id(port.slots))
        if found is not None and found[0] is port.slots:
            content: SlotList = found[1]
            if content[0] == port.family:
                return content
        if any(a.version != port.family for a in port.slots):
            raise FwdRulesError(
                f"{port.service} {port.vip}: a slot holds an address of the other family"
            )
        content = (port.family, tuple(str(a) for a in port.slots))
        # The entry holds the tuple: its id is not reused while the entry lives.
        self._by_id.put(id(port.slots), (port.slots, content))
        return content


class _SlotNodes:
    """Each slot list's distinct nodes, found once per tuple: a slot list is thousands of
    entries over a handful of nodes, and going through every port's slots made a render of
    100 Services take 300 ms (the new Service waited for it)."""

    def __init__(self, memo: RenderMemo) -> None:
        self._by_id = memo.slot_nodes

    def __call__(self, port: FwdPort) -> tuple[IP, ...]:
        found = self._by_id.get(id(port.slots))
        if found is not None and found[0] is port.slots:
            return found[1]
        nodes = tuple(dict.fromkeys(port.slots))
        # The entry holds the tuple: its id is not reused while the entry lives.
        self._by_id.put(id(port.slots), (port.slots, nodes))
        return nodes


def _port_chain(p: FwdPort, memo: RenderMemo) -> str:
    """``service_chain(p)``, its digest made once per port while the port stays."""
    key = (p.service, p.vip, p.protocol, p.port)
    pid = memo.port_ids.get(key)
    if pid is None:
        pid = memo.port_ids.put(key, port_id(p))
    return SERVICE_CHAIN_PREFIX + pid


def _slot_elements(
    content: SlotList, id_text: Mapping[str, str], memo: RenderMemo
) -> dict[str, str | None]:
    """A slot map's elements (slot : node id) for a slot list's text ``content``."""
    nodes = tuple((a, id_text[a]) for a in dict.fromkeys(content[1]))
    key = (id(content), nodes)
    found = memo.slot_elements.get(key)
    if found is not None and found[0] is content:
        return found[1]
    elems: dict[str, str | None] = {canon(i): id_text[a] for i, a in enumerate(content[1])}
    memo.slot_elements.put(key, (content, elems))
    return elems


def _port_order(p: FwdPort) -> tuple[str, int, int, str, int]:
    return (p.service, p.family, int(p.vip), p.protocol, p.port)


def render_fwd(
    ports: Iterable[FwdPort],
    devices: Sequence[str],
    size: int,
    previous: FwdRules | None = None,
    flow_limit: int = DEFAULT_FLOW_LIMIT,
    memo: RenderMemo | None = None,
    local_nodes: frozenset[IP] = frozenset(),
) -> FwdRules:
    """The whole table for ``ports`` on LAN ``devices`` with Maglev tables of ``size`` slots.
    ``memo``: the same one each time, to render only what changed since its last render
    (``fwdmemo``; the result is the same without).

    ``local_nodes``: this gateway host's own addresses. When one is a node's (hostNetwork on a
    node), a flow given to that node is accepted into the host's IP stack instead of forwarded
    (``flowrules.deliver_locally``); otherwise the Service chains are as without them.

    ``previous`` (the rules in force) only chooses slot map names, so that a changed slot list
    is an in-place change of the map it replaces. Should two ports claim one
    ``VIP . protocol . port`` (the operator rules it out), the first in (service, VIP,
    protocol, port) order keeps it and the other is listed in ``skipped``."""
    if size < 1 or size >= 2**32:
        raise FwdRulesError(f"table size {size} out of range")
    out = FwdRules()
    for fam in (4, 6):
        out.collections[DISPATCH_MAP[fam]] = Collection(
            (ADDR_TYPE[fam], "inet_proto", "inet_service"), "verdict"
        )
        out.collections[UNKNOWN_MAP[fam]] = Collection(ADDR_TYPE[fam], "verdict")
        out.elements[DISPATCH_MAP[fam]] = {}
        out.elements[UNKNOWN_MAP[fam]] = {}
    for dev in devices:
        if not dev or len(dev) > DEVICE_NAME_MAX or '"' in dev:
            raise FwdRulesError(f"bad device name {dev!r}")
        ingress = [canon(r(fam)) for fam in (4, 6) for r in (_dispatch_rule, _unknown_rule)]
        out.chains[ingress_chain(dev)] = BaseChain(dev)
        out.rules[ingress_chain(dev)] = tuple(ingress)
    for (fam, proto), name in FLOW_MAP.items():
        out.collections[name] = Collection(
            FLOW_KEY_TYPE[fam], "mark", ("timeout",), flow_limit, FLOW_TIMEOUT[proto]
        )
        out.elements[name] = {}
    for chain in helpers():
        out.chains[chain] = None
        out.rules[chain] = tuple(canon(r) for r in helper_rules(chain))
    out.chains[REFUSE_CHAIN] = None
    out.rules[REFUSE_CHAIN] = tuple(canon(r) for r in _refuse_rules())
    for fam in (4, 6):
        out.chains[REFUSE_FAMILY_CHAIN[fam]] = None
        out.rules[REFUSE_FAMILY_CHAIN[fam]] = tuple(canon(r) for r in _refuse_family_rules(fam))

    chosen: list[FwdPort] = []
    skipped: list[FwdPort] = []
    claimed: set[tuple[IP, str, int]] = set()
    for p in sorted(ports, key=_port_order):
        _check(p, size)
        key = (p.vip, p.protocol, p.port)
        if key in claimed:
            skipped.append(p)
            continue
        claimed.add(key)
        chosen.append(p)
    out.skipped = tuple(skipped)

    memo = memo if memo is not None else RenderMemo()
    slot_text = _SlotTexts(memo)
    chain_of = {id(p): _port_chain(p, memo) for p in chosen}
    # Grouped by tuple first: hashing 4,093 slot texts per port cost more than the rest.
    by_tuple: dict[int, tuple[SlotList, list[str]]] = {}
    for p in chosen:
        if p.slots and not p.to_stack:
            group = by_tuple.get(id(p.slots))
            if group is None:
                group = by_tuple[id(p.slots)] = (slot_text(p), [])
            group[1].append(chain_of[id(p)])
    wanted: dict[SlotList, list[str]] = {}
    for content, chains in by_tuple.values():
        wanted.setdefault(content, []).extend(chains)
    map_names = _slot_map_names(wanted, previous, memo.slot_maps_of(previous))
    # Node ids (``flowrules``): of every node a port may forward to, new flows or pinned ones.
    pinning = [p for p in chosen if not p.to_stack and (p.slots or p.established)]
    slot_nodes = _SlotNodes(memo)
    ids = node_ids(a for p in pinning for a in (*slot_nodes(p), *p.established))
    id_text = {str(a): canon(n) for a, n in ids.items()}
    for fam in (4, 6):
        out.collections[NODES_MAP[fam]] = Collection(SLOT_KEY_TYPE, ADDR_TYPE[fam])
        out.elements[NODES_MAP[fam]] = {
            canon(n): canon(str(a))
            for a, n in ids.items()
            if a.version == fam and a not in local_nodes
        }
    # Always there (the pin helpers name it); it holds an id only on a gateway on a node.
    out.collections[LOCAL_SET] = Collection(SLOT_KEY_TYPE)
    out.elements[LOCAL_SET] = {canon(n): None for a, n in ids.items() if a in local_nodes}
    local = bool(out.elements[LOCAL_SET])  # the Service chains' extra rules: only then
    for content, name in map_names.items():
        out.collections[name] = Collection(SLOT_KEY_TYPE, SLOT_VALUE_TYPE)
        out.elements[name] = _slot_elements(content, id_text, memo)
    est_of: dict[str, SlotList] = {}  # service chain -> its est content
    for p in pinning:
        nids = sorted({ids[a] for a in (*slot_nodes(p), *p.established) if a.version == p.family})
        if nids:
            est_of[chain_of[id(p)]] = (p.family, tuple(canon(n) for n in nids))
    est_wanted: dict[SlotList, list[str]] = {}
    for chain, content in est_of.items():
        est_wanted.setdefault(content, []).append(chain)
    prev_est = _est_sets(previous) if previous is not None else {}
    est_by_content = _inplace_names(
        est_wanted, prev_est, previous, EST_SET_PREFIX, _est_name, same_size=False
    )
    for (_fam, members), name in est_by_content.items():
        out.collections[name] = Collection(SLOT_KEY_TYPE)
        out.elements[name] = {m: None for m in members}
    est_names = {chain: est_by_content[content] for chain, content in est_of.items()}

    map_of_tuple = {i: map_names[content] for i, (content, _) in by_tuple.items()}
    for p in chosen:
        chain = chain_of[id(p)]
        if p.source_ranges:
            src = source_set(p)
            out.collections[src] = Collection(ADDR_TYPE[p.family], flags=("interval",))
            out.elements[src] = _source_elements(p, memo)
        slots_map = map_of_tuple[id(p.slots)] if p.slots and not p.to_stack else None
        est = est_names.get(chain)
        # Everything the port's rules and dispatch element are made of.
        made_of: tuple[Any, ...] = (chain, p.vip, p.protocol, p.port, p.affinity)
        made_of += (bool(p.source_ranges), p.to_stack, slots_map, est, size, local)
        made = memo.port_rules.get(made_of)
        if made is None:
            made = memo.port_rules.put(made_of, _port_rules(p, chain, size, slots_map, est, local))
        out.chains[chain] = None
        out.rules[chain], dispatch_key, dispatch_value = made
        out.elements[DISPATCH_MAP[p.family]][dispatch_key] = dispatch_value
        # Every VIP in the table has its counter, whether its nodes are healthy or not: a
        # health flap must not make it anew (``vipstats``).
        out.counters.add(counter_name(p.vip))
    _render_unknown(out, chosen)
    memo.end(out, {name: content for content, name in map_names.items()})
    return out


def _source_elements(p: FwdPort, memo: RenderMemo) -> dict[str, str | None]:
    key = (p.family, p.source_ranges)
    found = memo.sources.get(key)
    if found is None:
        same = [n for n in p.source_ranges if n.version == p.family]
        # An interval set refuses overlapping elements: collapse them first. With no range
        # of this family the set stays empty and every client of this family is dropped.
        merged = ipaddress.collapse_addresses(same)  # type: ignore[type-var,arg-type]
        found = memo.sources.put(key, {canon(_range_element(n)): None for n in merged})
    return found


def _port_rules(
    p: FwdPort, chain: str, size: int, slots_map: str | None, est: str | None, local: bool = False
) -> tuple[tuple[str, ...], str, str]:
    """A port's chain's rules, and its dispatch element's key and value."""
    rules: list[list[Json]] = []
    if p.source_ranges:
        rules.append(_source_rule(p))
    count: Json = {"counter": counter_name(p.vip)}
    if p.to_stack:
        rules.append([count, {"accept": None}])
    elif est is not None:
        if slots_map:
            rules.append([count])  # every packet past here is forwarded
        else:  # draining nodes only: the pinned flows are forwarded, the others dropped
            pinned = [*flow_lookup(p.family, p.protocol.lower(), "th"), est_match(est)]
            rules.append([*pinned, count])
        rules.extend(_pinned_rules(p, size, slots_map, est, local))
    else:
        # Fail closed: a node that failed its health check would blackhole or reset the
        # flow anyway, and forwarding to it would hide the outage. Whether some unhealthy
        # node is better than none is the caller's decision (it passes the slots).
        rules.append([_DROP])
    dispatch_key = {"concat": [str(p.vip), p.protocol.lower(), p.port]}
    return (
        tuple(canon(r) for r in rules),
        canon(dispatch_key),
        canon({"goto": {"target": chain}}),
    )


def _render_unknown(out: FwdRules, chosen: Sequence[FwdPort]) -> None:
    """Each VIP's entry for its other packets: ``refuse4``/``refuse6``, or when every port of the
    VIP has source ranges, a chain of its own that first drops clients outside all of them (a
    client the firewall keeps out learns nothing, not even which ports do not exist)."""
    ranges: dict[IP, list[IPNetwork] | None] = {}  # None: some port admits everyone
    for p in chosen:
        if not p.source_ranges:
            ranges[p.vip] = None
        elif (have := ranges.setdefault(p.vip, [])) is not None:
            have.extend(n for n in p.source_ranges if n.version == p.family)
    for vip, nets in ranges.items():
        fam = vip.version
        target = REFUSE_FAMILY_CHAIN[fam]
        if nets is not None:
            chain, adm = vip_chain(vip), admit_set(vip)
            merged = ipaddress.collapse_addresses(nets)  # type: ignore[type-var,arg-type]
            out.collections[adm] = Collection(ADDR_TYPE[fam], flags=("interval",))
            out.elements[adm] = {canon(_range_element(n)): None for n in merged}
            out.chains[chain] = None
            out.rules[chain] = (canon(_admit_rule(fam, adm)), canon([_goto(target)]))
            target = chain
        out.elements[UNKNOWN_MAP[fam]][canon(str(vip))] = canon(_goto(target))

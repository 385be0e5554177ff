"""The building blocks of a render of Portico's table (pure): the names of per-Service
objects, nft expressions in the exact form the kernel lists them back (so a listing compares
equal), and ``Table``, the builder that collects chains, rules, maps, elements and sets and
writes them out as one libnftables JSON document.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from portico_common.model import Endpoint, LBService, ServicePort

from . import nftnames as N

Json = dict[str, Any]


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


def internal_service_chain(svc: LBService, port: ServicePort, family: int) -> str:
    return object_name(N.INTERNAL_SERVICE_CHAIN_PREFIX, _port_label(svc, port, family))


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
def payload(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def jump(target: str) -> Json:
    return {"jump": {"target": target}}


def goto(target: str) -> Json:
    return {"goto": {"target": target}}


DROP: Json = {"drop": None}
CT_NEW = match({"ct": {"key": "state"}}, "new", "in")


def dispatch_key(family: int) -> Json:
    return {
        "concat": [
            payload(N.IP_PROTO[family], "daddr"),
            meta("l4proto"),
            payload("th", "dport"),
        ]
    }


def nodeport_match(family: int) -> list[Json]:
    loopback = {"prefix": {"addr": "127.0.0.0", "len": 8}} if family == 4 else "::1"
    return [
        match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        match(payload(N.IP_PROTO[family], "daddr"), loopback, "!="),
    ]


def nodeport_key() -> Json:
    return {"concat": [meta("l4proto"), payload("th", "dport")]}


def addr_or_prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def set_or_single(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def vip_key(vip: str, port: ServicePort) -> Json:
    return {"concat": [vip, port.protocol.lower(), port.port]}


def nodeport_elem_key(port: ServicePort) -> Json:
    return {"concat": [port.protocol.lower(), port.node_port]}


# ==============================================================================================
# the builder
# ==============================================================================================
@dataclass
class Table:
    chains: dict[str, Json] = field(default_factory=dict)
    rules: dict[str, list[list[Json]]] = field(default_factory=dict)
    maps: dict[str, Json] = field(default_factory=dict)
    # map -> canonical key -> canonical value: text, as the index holds it (the index shares
    # the strings), not JSON objects: ~100 bytes an element rather than ~700
    elements: dict[str, dict[str, str]] = field(default_factory=dict)
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
        self.elements[mapname][canon(key)] = canon_value(value)

    def doc(self) -> Json:
        t = {"family": N.FAMILY, "name": N.TABLE}
        where = {"family": N.FAMILY, "table": N.TABLE}
        cmds: list[Json] = [{"add": {"table": t}}]
        cmds += [{"add": {"set": {**where, **s}}} for s in self.sets.values()]
        cmds += [{"add": {"map": {**where, **m}}} for m in self.maps.values()]
        cmds += [{"add": {"chain": {**where, **c}}} for c in self.chains.values()]
        for name, elems in self.elements.items():
            if elems:
                items = [[json.loads(k), json.loads(v)] for k, v in elems.items()]
                cmds.append({"add": {"element": {**where, "name": name, "elem": items}}})
        for chain, rules in self.rules.items():
            for expr in rules:
                cmds.append({"add": {"rule": {**where, "chain": chain, "expr": expr}}})
        return {"nftables": cmds}


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def canon_value(v: Any) -> str:
    """An element's value in canonical form, interned: values repeat (an endpoint address, a
    port, a count, a verdict), so a table and its index hold each once (an interned string is
    freed when nothing holds it)."""
    return sys.intern(canon(v))

"""NAT mode (``portico.dev/forwarding-mode: nat``), for nodes that are not on the gateway's L2
segment: the gateway DNATs each flow to ``nodeIP:nodePort`` of a node chosen by the same Maglev
slots and flow hash as direct server return, and masquerades it, so the reply comes back
through the gateway. The client's address is lost (the Service's ``ipMode`` is ``Proxy``).

The netdev table hands these ports to the host's IP stack (``FwdPort.to_stack``); this module
renders the table that the stack's NAT hooks consult, ``inet portico-gw-nat``, as nft text:
libnftables 1.0.6 parses a DNAT to a concatenated ``address . port`` map from text but its JSON
form is not documented. Pure; the whole table is one string, and ``NatTable`` replaces it in
one transaction when it changes (delete and re-create: established flows keep their conntrack
bindings, and NAT Services are few).

    table inet portico-gw-nat {
      map nat4 { type ipv4_addr . inet_proto . inet_service : verdict; }
      chain prerouting { type nat hook prerouting priority -100; ...
        ip daddr . meta l4proto . th dport vmap @nat4 }
      chain nat-<id> { ct mark set MARK; meta mark set jhash ip saddr . th sport mod M seed S
                       meta l4proto tcp dnat ip to meta mark map @natslots-<x> }
      chain postrouting { type nat hook postrouting priority 100; ct mark MARK masquerade }
    }

Requires ``net.ipv4.ip_forward=1`` (and IPv6 forwarding for IPv6 VIPs) on the gateway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .fwdrules import FLOW_HASH_SEED
from .model import IP

FAMILY = "inet"
TABLE = "portico-gw-nat"
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100
# The conntrack mark of flows this table DNATed: postrouting masquerades exactly those.
CT_MARK = 0x50470001
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}


@dataclass(frozen=True)
class NatPort:
    service: str
    vip: IP
    protocol: str  # TCP, UDP or SCTP
    port: int
    affinity: bool
    targets: tuple[tuple[IP, int], ...]  # the Maglev slots as (node address, nodePort)

    @property
    def family(self) -> int:
        return self.vip.version


def _id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _addr(ip: IP) -> str:
    return str(ip)


def render_nat(ports: Iterable[NatPort], size: int) -> str:
    """The whole NAT table as nft text (an empty table when there is no NAT port)."""
    maps: dict[tuple[int, tuple[tuple[IP, int], ...]], str] = {}
    chains: list[str] = []
    dispatch: dict[int, list[str]] = {4: [], 6: []}
    for p in sorted(ports, key=lambda p: (p.service, p.family, int(p.vip), p.protocol, p.port)):
        if not p.targets:
            continue  # no healthy node: the netdev table drops these (fail-closed)
        if len(p.targets) != size:
            raise ValueError(f"{p.service} {p.vip}: {len(p.targets)} slots, the table has {size}")
        key = (p.family, p.targets)
        if key not in maps:
            maps[key] = f"natslots-{_id(*key)}"
        ip = _IP[p.family]
        flow = f"{ip} saddr" if p.affinity else f"{ip} saddr . th sport"
        chain = f"nat-{_id(p.service, p.vip, p.protocol, p.port)}"
        chains.append(
            f"  chain {chain} {{\n"
            f"    ct mark set {CT_MARK:#x}\n"
            f"    meta mark set jhash {flow} mod {size} seed {FLOW_HASH_SEED:#x}\n"
            f"    meta l4proto {p.protocol.lower()} dnat {ip} to meta mark map @{maps[key]}\n"
            "  }\n"
        )
        dispatch[p.family].append(
            f"{_addr(p.vip)} . {p.protocol.lower()} . {p.port} : goto {chain}"
        )
    out = [f"table {FAMILY} {TABLE} {{\n"]
    for fam in (4, 6):
        elements = f" elements = {{ {', '.join(dispatch[fam])} }};" if dispatch[fam] else ""
        out.append(
            f"  map nat{fam} {{ type {_ADDR_TYPE[fam]} . inet_proto . inet_service : verdict;"
            f"{elements} }}\n"
        )
    for (fam, targets), name in maps.items():
        elems = ", ".join(f"{i} : {_addr(a)} . {port}" for i, (a, port) in enumerate(targets))
        out.append(
            f"  map {name} {{ type mark : {_ADDR_TYPE[fam]} . inet_service;"
            f" elements = {{ {elems} }}; }}\n"
        )
    out.append(
        "  chain prerouting {\n"
        f"    type nat hook prerouting priority {PRIO_DSTNAT}; policy accept;\n"
        "    ip daddr . meta l4proto . th dport vmap @nat4\n"
        "    ip6 daddr . meta l4proto . th dport vmap @nat6\n"
        "  }\n"
    )
    out.extend(chains)
    out.append(
        "  chain postrouting {\n"
        f"    type nat hook postrouting priority {PRIO_SRCNAT}; policy accept;\n"
        f"    ct mark {CT_MARK:#x} masquerade\n"
        "  }\n"
    )
    out.append("}\n")
    return "".join(out)


def replace_script(table: str) -> str:
    """One transaction that puts ``table`` in place of whatever the table held."""
    return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n{table}"

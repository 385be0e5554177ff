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
      chain prerouting { type nat hook prerouting priority -102; ...
        iifname { "eth0" } ip daddr . meta l4proto . th dport vmap @nat4 }
      chain nat-<id> { meta mark set jhash ip saddr . th sport mod M seed S
                       [meta mark @natlocal-<x> meta mark set 0 return]
                       ct mark set MARK
                       meta l4proto tcp dnat ip to meta mark map @natslots-<x> }
      chain postrouting { type nat hook postrouting priority 100; ct mark MARK masquerade }
    }

Requires ``net.ipv4.ip_forward=1`` (and IPv6 forwarding for IPv6 VIPs) on the gateway.

A gateway on a cluster node (hostNetwork; ``localaddr``) is one of the nodes its slots name.
A DNAT to its own ``nodeIP:nodePort`` would be delivered to the host's own port, where nothing
listens (the node's rules never see it: a connection is NATed once). So the slots of its own
node (``natlocal-<x>``) are left un-NATed, and the node's own rules (Portico's agent) take the
VIP as they take a forwarded packet in DSR mode; the client's address is kept for those flows.
For that, this table's DNAT runs before the node's (the agent's is at -101, kube-proxy's at
-100): at -100, the node's rules took every NAT-mode flow of the host's LAN, whatever node
the gateway chose (an ETP Local Service reached the gateway node's pods alone). Only packets
from the LAN devices are this table's: a pod on the gateway's node reaching the VIP is its
node's, as on every other node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .fwdrules import FLOW_HASH_SEED
from .model import IP

FAMILY = "inet"
TABLE = "portico-gw-nat"
# Before the node agent's DNAT (-101) and kube-proxy's (-100) when the gateway is on a node.
PRIO_DSTNAT = -102
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


def render_nat(
    ports: Iterable[NatPort],
    size: int,
    interfaces: Iterable[str],
    local_nodes: frozenset[IP] = frozenset(),
) -> str:
    """The whole NAT table as nft text (an empty table when there is no NAT port).
    ``interfaces``: the gateway's LAN devices; ``local_nodes``: the host's own addresses."""
    maps: dict[tuple[int, tuple[tuple[IP, int], ...]], str] = {}
    local: dict[str, list[int]] = {}  # natslots map -> its slots that name this host
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
            own = [i for i, (a, _) in enumerate(p.targets) if a in local_nodes]
            if own:
                local[maps[key]] = own
        slots = maps[key]
        ip = _IP[p.family]
        flow = f"{ip} saddr" if p.affinity else f"{ip} saddr . th sport"
        chain = f"nat-{_id(p.service, p.vip, p.protocol, p.port)}"
        # This host's slots: no NAT here, the node's own rules take the VIP (module docstring);
        # the mark cleared, as for a flow the netdev table delivers to the host.
        mine = (
            f"    meta mark @{_local_set(slots)} meta mark set 0 return\n" if slots in local else ""
        )
        chains.append(
            f"  chain {chain} {{\n"
            f"    meta mark set jhash {flow} mod {size} seed {FLOW_HASH_SEED:#x}\n"
            f"{mine}"
            f"    ct mark set {CT_MARK:#x}\n"
            f"    meta l4proto {p.protocol.lower()} dnat {ip} to meta mark map @{slots}\n"
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
    for name, own in local.items():
        elems = ", ".join(map(str, own))
        out.append(f"  set {_local_set(name)} {{ type mark; elements = {{ {elems} }}; }}\n")
    lan = ", ".join(f'"{dev}"' for dev in sorted(interfaces))
    out.append(
        "  chain prerouting {\n"
        f"    type nat hook prerouting priority {PRIO_DSTNAT}; policy accept;\n"
        f"    iifname {{ {lan} }} ip daddr . meta l4proto . th dport vmap @nat4\n"
        f"    iifname {{ {lan} }} ip6 daddr . meta l4proto . th dport vmap @nat6\n"
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


def _local_set(slots_map: str) -> str:
    return "natlocal-" + slots_map.removeprefix("natslots-")


def replace_script(table: str) -> str:
    """One transaction that puts ``table`` in place of whatever the table held."""
    return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n{table}"

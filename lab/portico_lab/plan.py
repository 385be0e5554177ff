"""The lab's address plan: every name and address the lab uses, computed from a few numbers.

Pure and deterministic, so that the network, the Kubernetes objects and the tests agree without
talking to each other. Everything lives in 198.18.0.0/15 (IPv4) and fd00::/8 (IPv6).

A machine can hold up to ``MAX_SLOTS`` labs at once; slot ``s`` owns

    LAN (on-link for every host)   198.18.{64s}.0/18       fd00:18:0:{s}::/64
      host (root namespace)        198.18.{64s}.1          ::1
      gateway k = 1..8             198.18.{64s}.{1+k}      ::{1+k}
      node i = 1..MAX_NODES        198.18.{64s}.{9+i}      ::{9+i}
      client c = 1..               198.18.{64s+1}.{c}      ::1:{c}
      VIP range for pools          198.18.{64s+32}.0/19    fd00:18:0:{s}::a:0/112
    pods of node i                 198.19.{64s+i}.0/24     fd00:19:{s}:{i}::/64
    Service cluster IPs (virtual)  198.19.{64s+32}.0/19    fd00:1a:0:{s}::/108
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_SLOTS = 4
MAX_NODES = 31
MAX_GATEWAYS = 8
MAX_CLIENTS = 250
MAX_PODS_PER_NODE = 250

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


def _v4(*octets: int) -> IPv4:
    return ipaddress.IPv4Address(".".join(str(o) for o in octets))


@dataclass(frozen=True)
class Host:
    """One network namespace on the LAN: a gateway, a node, a client or the root namespace."""

    name: str  # logical name: "node-1", "gw-1", "client-1", "host"
    netns: str | None  # None for the root namespace
    lan_link: str  # name of its veth end inside the LAN namespace
    ipv4: IPv4
    ipv6: IPv6


@dataclass(frozen=True)
class Pod:
    name: str  # Kubernetes Pod name, also used in the netns name
    node: str
    index: int
    netns: str
    node_link: str  # its veth end inside the node's namespace
    ipv4: IPv4
    ipv6: IPv6


@dataclass(frozen=True)
class AddressPlan:
    slot: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.slot < MAX_SLOTS:
            raise ValueError(f"lab slot must be in 0..{MAX_SLOTS - 1}, not {self.slot}")

    # -- names -------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"ptc{self.slot}"

    @property
    def lan_netns(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def host_link(self) -> str:
        """The root namespace's veth into the LAN; its existence is the slot's lock."""
        return f"{self.prefix}-host"

    # -- networks ------------------------------------------------------------------------------
    @property
    def lan_v4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.18.{64 * self.slot}.0/18")

    @property
    def lan_v6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:18:0:{self.slot:x}::/64")

    @property
    def vip_range_v4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.18.{64 * self.slot + 32}.0/19")

    @property
    def vip_range_v6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:18:0:{self.slot:x}::a:0/112")

    @property
    def service_cidr_v4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.19.{64 * self.slot + 32}.0/19")

    @property
    def service_cidr_v6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:1a:0:{self.slot:x}::/108")

    def pod_cidr_v4(self, node_index: int) -> ipaddress.IPv4Network:
        _check(node_index, MAX_NODES, "node")
        return ipaddress.IPv4Network(f"198.19.{64 * self.slot + node_index}.0/24")

    def pod_cidr_v6(self, node_index: int) -> ipaddress.IPv6Network:
        _check(node_index, MAX_NODES, "node")
        return ipaddress.IPv6Network(f"fd00:19:{self.slot:x}:{node_index:x}::/64")

    # -- hosts ---------------------------------------------------------------------------------
    def _lan_host(self, name: str, netns: str | None, link: str, offset: int) -> Host:
        v4 = self.lan_v4.network_address + offset
        v6 = self.lan_v6.network_address + offset
        return Host(name, netns, link, v4, v6)

    @property
    def host(self) -> Host:
        return self._lan_host("host", None, "host", 1)

    def gateway(self, k: int) -> Host:
        _check(k, MAX_GATEWAYS, "gateway")
        return self._lan_host(f"gw-{k}", f"{self.prefix}-gw-{k}", f"gw{k}", 1 + k)

    def node(self, i: int) -> Host:
        _check(i, MAX_NODES, "node")
        return self._lan_host(f"node-{i}", f"{self.prefix}-node-{i}", f"n{i}", 9 + i)

    def client(self, c: int) -> Host:
        _check(c, MAX_CLIENTS, "client")
        v4 = self.lan_v4.network_address + 256 + c
        v6 = self.lan_v6.network_address + 0x10000 + c
        return Host(f"client-{c}", f"{self.prefix}-client-{c}", f"c{c}", v4, v6)

    def node_gateway_v4(self, i: int) -> IPv4:
        """The node's address on its pod bridge: the pods' default gateway."""
        return self.pod_cidr_v4(i).network_address + 1

    def node_gateway_v6(self, i: int) -> IPv6:
        return self.pod_cidr_v6(i).network_address + 1

    def pod(self, node_index: int, j: int) -> Pod:
        _check(j, MAX_PODS_PER_NODE, "pod")
        name = f"echo-{node_index}-{j}"
        return Pod(
            name=name,
            node=f"node-{node_index}",
            index=j,
            netns=f"{self.prefix}-{name}",
            node_link=f"p{j}",
            ipv4=self.pod_cidr_v4(node_index).network_address + 1 + j,
            ipv6=self.pod_cidr_v6(node_index).network_address + 1 + j,
        )

    # -- control plane ---------------------------------------------------------------------------
    @property
    def apiserver_port(self) -> int:
        return 6443 + self.slot

    @property
    def etcd_client_port(self) -> int:
        return 23790 + 2 * self.slot

    @property
    def etcd_peer_port(self) -> int:
        return 23791 + 2 * self.slot


def zone_of(node_index: int, zones: int) -> str:
    """Nodes are spread round-robin over zones named zone-a, zone-b, ..."""
    if zones < 1 or zones > 26:
        raise ValueError("zones must be in 1..26")
    return "zone-" + chr(ord("a") + (node_index - 1) % zones)


def node_index(node_name: str) -> int:
    """'node-3' -> 3."""
    prefix, _, number = node_name.rpartition("-")
    if prefix != "node" or not number.isdigit():
        raise ValueError(f"not a lab node name: {node_name!r}")
    return int(number)


def _check(value: int, maximum: int, what: str) -> None:
    if not 1 <= value <= maximum:
        raise ValueError(f"{what} index must be in 1..{maximum}, not {value}")

"""The gateway host's own addresses on its LAN devices.

A gateway with hostNetwork on a cluster node (the chart's gateway, the kind walkthrough) is
itself one of the nodes it forwards to. Its own node is special twice: netdev ``fwd`` cannot
send a packet to the host it runs on (``fwdrules``: such flows are accepted into the host's
stack instead), and the host never answers its own ARP or NDP probe (the node would look
unreachable; ``gateway`` does not probe it). Read at start and again at each
``--verify-interval``: an address added or removed later takes effect within it.

NAT mode reaches nodes by their address wherever it is, not over the LAN, so there the host's
addresses on every device count (``natrules``: a node whose address is on another device of
this host is this host all the same).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyroute2 import IPRoute

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class OwnAddresses:
    lan: frozenset[IP]  # on the gateway's LAN devices: DSR's own node, the nodes not probed
    host: frozenset[IP]  # on every device: NAT mode's own node


def own_addresses(devices: Iterable[str]) -> OwnAddresses:
    """The host's IPv4 and IPv6 addresses, on ``devices`` (one that does not exist: none) and
    on every device, from one netlink dump. In a thread of its own: pyroute2's synchronous
    IPRoute runs an event loop of its own, which it cannot do in a thread whose loop runs (the
    gateway's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_read, tuple(devices)).result()


def _read(devices: tuple[str, ...]) -> OwnAddresses:
    with IPRoute() as ipr:
        lan = {i for dev in devices for i in ipr.link_lookup(ifname=dev)}
        found = [
            (m["index"], ipaddress.ip_address(addr.split("%")[0]))
            for m in ipr.get_addr()
            if (addr := m.get("IFA_ADDRESS"))
        ]
    return OwnAddresses(
        frozenset(a for index, a in found if index in lan), frozenset(a for _, a in found)
    )

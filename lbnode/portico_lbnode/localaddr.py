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

from pyroute2 import IPRoute

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def local_addresses(devices: Iterable[str] | None) -> frozenset[IP]:
    """Every IPv4 and IPv6 address on ``devices`` (a device that does not exist: none; None:
    every device of the host). In a thread of its own: pyroute2's synchronous IPRoute runs an
    event loop of its own, which it cannot do in a thread whose loop runs (the gateway's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_read, None if devices is None else tuple(devices)).result()


def _read(devices: tuple[str, ...] | None) -> frozenset[IP]:
    with IPRoute() as ipr:
        if devices is None:
            messages = list(ipr.get_addr())
        else:
            indexes = [i for dev in devices for i in ipr.link_lookup(ifname=dev)]
            messages = [m for i in indexes for m in ipr.get_addr(index=i)]
    return frozenset(
        ipaddress.ip_address(addr.split("%")[0]) for m in messages if (addr := m.get("IFA_ADDRESS"))
    )

"""The gateway host's own addresses on its LAN devices.

A gateway with hostNetwork on a cluster node (the chart's gateway, the kind walkthrough) is
itself one of the nodes it forwards to. Its own node is special twice: netdev ``fwd`` cannot
send a packet to the host it runs on (``fwdrules``: such flows are accepted into the host's
stack instead), and the host never answers its own ARP or NDP probe (the node would look
unreachable; ``gateway`` does not probe it). Read at start and again at each
``--verify-interval``: an address added or removed later takes effect within it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def local_addresses(devices: Iterable[str]) -> frozenset[IP]:
    """Every IPv4 and IPv6 address on ``devices`` (a device that does not exist: none). In a
    thread of its own: pyroute2's synchronous IPRoute runs an event loop of its own, which
    it cannot do in a thread whose loop runs (the gateway's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_read, tuple(devices)).result()


def _read(devices: tuple[str, ...]) -> frozenset[IP]:
    out: set[IP] = set()
    with IPRoute() as ipr:
        for dev in devices:
            for index in ipr.link_lookup(ifname=dev):
                for msg in ipr.get_addr(index=index):
                    addr = msg.get("IFA_ADDRESS")
                    if addr:
                        out.add(ipaddress.ip_address(addr.split("%")[0]))
    return frozenset(out)

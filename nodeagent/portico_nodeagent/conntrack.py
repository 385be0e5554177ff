"""Deletes stale conntrack entries through netlink (ctnetlink, pyroute2), never by spawning a
``conntrack`` process per entry."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from .stale import StaleFlow

log = logging.getLogger("portico.nodeagent.conntrack")
PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": socket.IPPROTO_SCTP}


def _same_ip(a: object, b: str) -> bool:
    try:
        return ipaddress.ip_address(str(a)) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _is_flow(entry: Any, flow: StaleFlow) -> bool:
    """Whether a conntrack entry is ``flow``'s: to VIP:port, answered by the endpoint."""
    return (
        entry.tuple_orig.proto == PROTOCOLS[flow.protocol]
        and _same_ip(entry.tuple_orig.daddr, flow.vip)
        and entry.tuple_orig.dport == flow.port
        and _same_ip(entry.tuple_reply.saddr, flow.endpoint)
    )


async def delete_flows(flows: Iterable[StaleFlow]) -> int:
    """Deletes the entries of each flow: original destination VIP:port, reply source the
    endpoint. Returns how many entries went."""
    from pyroute2 import AsyncConntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    flows = list(flows)
    if not flows:
        return 0
    deleted = 0
    # One socket per address family: a ctnetlink request carries its family (nfgen_family),
    # and pyroute2's default is AF_INET; an IPv6 filter on an AF_INET socket is refused
    # (EINVAL).
    sockets: dict[int, Any] = {}
    v6_entries: list[Any] | None = None
    try:
        for flow in flows:
            af = socket.AF_INET6 if ipaddress.ip_address(flow.vip).version == 6 else socket.AF_INET
            ct = sockets.get(af)
            if ct is None:
                ct = sockets[af] = AsyncConntrack(nfgen_family=af)
            proto = PROTOCOLS[flow.protocol]
            try:
                if af == socket.AF_INET:
                    orig = NFCTAttrTuple(family=af, daddr=flow.vip, proto=proto, dport=flow.port)
                    reply = NFCTAttrTuple(family=af, saddr=flow.endpoint, proto=proto)
                    entries = [
                        e async for e in await ct.dump_entries(tuple_orig=orig, tuple_reply=reply)
                    ]
                else:
                    # pyroute2 0.9.7's filtered dumps find no IPv6 entry (its filter attributes
                    # are IPv4-shaped): list the family's entries, match them here.
                    if v6_entries is None:
                        v6_entries = [e async for e in await ct.dump_entries()]
                    entries = [e for e in v6_entries if _is_flow(e, flow)]
            except (OSError, NetlinkError) as e:
                # One flow the kernel cannot filter for must not cost the others (or the agent).
                log.warning("conntrack dump for %s: %s", flow, e)
                continue
            for entry in entries:
                try:
                    await ct.delete(entry)
                    deleted += 1
                except (OSError, NetlinkError) as e:  # gone meanwhile (ENOENT) is fine
                    log.debug("conntrack delete %s: %s", entry, e)
    finally:
        for ct in sockets.values():
            ct.close()
    return deleted

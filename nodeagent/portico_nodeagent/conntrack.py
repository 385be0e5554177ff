"""Deletes stale conntrack entries through netlink (ctnetlink, pyroute2), never by spawning a
``conntrack`` process per entry."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

from .stale import StaleFlow

log = logging.getLogger("portico.nodeagent.conntrack")
PROTOCOLS = {"UDP": socket.IPPROTO_UDP, "SCTP": socket.IPPROTO_SCTP}


async def delete_flows(flows: Iterable[StaleFlow]) -> int:
    """Deletes the entries of each flow: original destination VIP:port, reply source the
    endpoint. Returns how many entries went."""
    from pyroute2 import AsyncConntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    flows = list(flows)
    if not flows:
        return 0
    deleted = 0
    ct = AsyncConntrack()
    try:
        for flow in flows:
            af = socket.AF_INET6 if ipaddress.ip_address(flow.vip).version == 6 else socket.AF_INET
            proto = PROTOCOLS[flow.protocol]
            orig = NFCTAttrTuple(family=af, daddr=flow.vip, proto=proto, dport=flow.port)
            reply = NFCTAttrTuple(family=af, saddr=flow.endpoint, proto=proto)
            entries = [e async for e in await ct.dump_entries(tuple_orig=orig, tuple_reply=reply)]
            for entry in entries:
                try:
                    await ct.delete(entry)
                    deleted += 1
                except OSError as e:  # gone meanwhile (ENOENT) is fine
                    log.debug("conntrack delete %s: %s", entry, e)
    finally:
        ct.close()
    return deleted

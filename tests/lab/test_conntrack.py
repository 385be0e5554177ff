"""The agent's conntrack deletion against the kernel's table, in a namespace of its own: a
DNATed UDP flow of each family is deleted, and nothing else is. (pyroute2 defaults its
ctnetlink family to IPv4: IPv6 flows were never found, and a filtered IPv6 dump failed with
EINVAL, which stopped the agent.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

_RULES = """table inet t {
  chain out {
    type nat hook output priority -100;
    ip daddr 198.18.220.1 udp dport 80 dnat to 198.18.221.2:8080
    ip6 daddr fd00:220::1 udp dport 80 dnat to [fd00:221::2]:8080
  }
}
"""

_SCRIPT = r"""
import asyncio, json, socket
from portico_nodeagent.conntrack import delete_flows
from portico_nodeagent.stale import StaleFlow
for fam, vip in ((socket.AF_INET, "198.18.220.1"), (socket.AF_INET6, "fd00:220::1")):
    socket.socket(fam, socket.SOCK_DGRAM).sendto(b"x", (vip, 80))
v4 = StaleFlow("UDP", "198.18.220.1", 80, "198.18.221.2")
v6 = StaleFlow("UDP", "fd00:220::1", 80, "fd00:221::2")
others = [StaleFlow("UDP", "198.18.220.1", 81, "198.18.221.2"),
          StaleFlow("UDP", "fd00:220::1", 80, "fd00:221::3")]
out = {"others": asyncio.run(delete_flows(others))}
out["both"] = asyncio.run(delete_flows([v4, v6]))
out["again"] = asyncio.run(delete_flows([v4, v6]))
print(json.dumps(out))
"""


def test_udp_flows_of_both_families_are_deleted_and_only_they() -> None:
    ns = f"ptcT-ct-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["addr", "add", "198.18.220.1/32", "dev", "lo"],
            ["addr", "add", "198.18.221.2/32", "dev", "lo"],
            ["addr", "add", "fd00:220::1/128", "dev", "lo"],
            ["addr", "add", "fd00:221::2/128", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=_RULES, text=True, check=True
        )
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1]) == {
            "others": 0,
            "both": 2,
            "again": 0,
        }
    finally:
        subprocess.run(["ip", "netns", "del", ns])

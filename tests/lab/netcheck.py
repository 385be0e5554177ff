"""Tiny clients run inside lab namespaces (with the venv's Python) by the lab tests."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from portico_lab.lab import Lab

_CLIENT = r"""
import json, socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if proto == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"hello", (host, port)); data = s.recvfrom(65535)[0]
    local = s.getsockname()
else:
    s = socket.create_connection((host, port), timeout=2)
    s.sendall(b"GET /probe HTTP/1.0\r\n\r\n"); data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    data = data.split(b"\r\n\r\n", 1)[1]
    local = s.getsockname()
print(json.dumps({"answer": json.loads(data), "local_ip": local[0], "local_port": local[1]}))
"""


def request(
    lab: Lab, where: str, host: str, port: int = 8080, proto: str = "http"
) -> dict[str, Any]:
    """Sends one request from ``where``'s namespace; returns the echo answer and the local end."""
    res = lab.exec(where, [sys.executable, "-S", "-c", _CLIENT, proto, host, str(port)], timeout=10)
    if res.returncode != 0:
        raise ConnectionError(f"{where} -> {host}:{port}/{proto}: {res.stderr.strip()[-300:]}")
    return json.loads(res.stdout)


@contextmanager
def routed(lab: Lab, client: str, addr: str, node: str) -> Iterator[None]:
    """Routes ``addr`` from ``client`` to ``node``, as the gateway would deliver it (the packet
    unchanged, to the node)."""
    host = lab.host(node)
    six = ":" in addr
    via = str(host.ipv6 if six else host.ipv4)
    fam = ["-6"] if six else []
    prefix = f"{addr}/{128 if six else 32}"
    lab.exec(client, ["ip", *fam, "route", "replace", prefix, "via", via], check=True)
    try:
        yield
    finally:
        lab.exec(client, ["ip", *fam, "route", "del", prefix])

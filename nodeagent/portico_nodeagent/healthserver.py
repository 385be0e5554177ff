"""The agent's HTTP listeners: one per ``healthCheckNodePort`` (and family), as kube-proxy
serves them, and the node-level ones: the agent's own port (``:10262``), with Portico's
aggregate view beside kube-proxy's ``/healthz``, and kube-proxy's ``:10256`` answered the same
way while kube-proxy does not hold it. The answers are built by ``health`` (pure); this is only
sockets."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from portico_common.model import LBService

from . import health

log = logging.getLogger("portico.nodeagent.health")
REQUEST_LIMIT = 16 * 1024
REQUEST_TIMEOUT = 5.0
AGGREGATE_PATH = "/portico/v1/services"


@dataclass
class HealthState:
    """What the answers are made of; the agent updates it after every apply."""

    node: str = ""
    services: Mapping[int, LBService] = None  # type: ignore[assignment]  # port -> Service
    rules_current: bool = False
    last_applied_ns: int | None = None
    families: tuple[int, ...] = (4, 6)
    deleting: bool = False
    taints: tuple[str, ...] = ()
    # Every Service whose rules are in force (Cluster ones too), and a counter of the agent's
    # rounds: the gateway learns from the aggregate that a node carries a new Service, and
    # waits for the next round with a long poll (``?after=<generation>``).
    applied: frozenset[str] = frozenset()
    generation: int = 0

    def __post_init__(self) -> None:
        if self.services is None:
            self.services = {}


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return None
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(line) < 2:
        return None
    return line[0], line[1]


Answer = Callable[[str, str], bytes | Awaitable[bytes]]


async def _serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    answer: Answer,
) -> None:
    try:
        req = await _read_request(reader)
        if req is not None:
            out = answer(*req)
            writer.write(await out if inspect.isawaitable(out) else out)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _socket(family: int, port: int) -> socket.socket:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == 6 else "0.0.0.0", port))
    s.setblocking(False)
    return s


class HealthServers:
    def __init__(self, state: HealthState, node_port: int, kube_proxy_port: int = 0) -> None:
        """``node_port``: the agent's own node-level port; ``kube_proxy_port``: kube-proxy's,
        answered alike where it is free (0: not served)."""
        self.state = state
        self.node_port = node_port
        # Node-level ports, the agent's own first; each answers /healthz and the aggregate.
        self.node_ports = tuple(dict.fromkeys(p for p in (node_port, kube_proxy_port) if p))
        self._servers: dict[tuple[int, int], asyncio.Server] = {}  # (port, family) -> server
        # (port, family) -> why we could not listen. Per family: kube-proxy may hold a port's
        # IPv4 side only, and serving its IPv6 side must not hide that.
        self._held: dict[tuple[int, int], str] = {}
        self._changed = asyncio.Event()  # set (and replaced) at each new generation

    def changed(self) -> None:
        """The agent finished a round (``state.generation`` moved): held long polls answer."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- answers -----------------------------------------------------------------------------
    def service_answer(self, port: int, family: int) -> Callable[[str, str], bytes]:
        def answer(method: str, _path: str) -> bytes:
            svc = self.state.services.get(port)
            if svc is None:  # gone between accept and answer: as if nothing listened
                return health.http_response(404, b"")
            counted = health.counted_family(
                family, health.service_families(svc.vips, svc.endpoints)
            )
            out = health.service_response(
                svc.namespace,
                svc.name,
                svc.endpoints,
                self.state.node,
                counted,
                self.state.rules_current,
            )
            return out.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if method == "HEAD" else out

        return answer

    def node_answer(self, method: str, path: str) -> bytes | Awaitable[bytes]:
        poll = health.long_poll(path) if path.startswith(AGGREGATE_PATH + "?") else None
        if poll is not None and poll[0] == self.state.generation:
            return self._after_change(method, path, poll[1])
        return self._node_answer_now(method, path)

    async def _after_change(self, method: str, path: str, wait: float) -> bytes:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), wait)
        return self._node_answer_now(method, path)

    def _node_answer_now(self, method: str, path: str) -> bytes:
        now = time.time_ns()
        if path.split("?", 1)[0] == AGGREGATE_PATH:
            body = json.dumps(self.aggregate(), separators=(",", ":")).encode()
            tag = health.validator(body)
            etag = {"ETag": f'"{tag}"'}
            if health.unless(path) == tag:
                # The gateway holds this very answer: it re-applies it instead of parsing it.
                return health.http_response(304, b"", etag, head=True)
            return health.http_response(200, body, etag, head=method == "HEAD")
        last = self.state.last_applied_ns
        families = {
            f: health.FamilyState(last or 0, self.state.rules_current) for f in self.state.families
        }
        out = health.node_healthz(
            families, now, deleting=self.state.deleting, taints=self.state.taints
        )
        return out.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if method == "HEAD" else out

    def aggregate(self) -> dict[str, object]:
        """Every Local Service's local ready endpoints on this node and the rules' freshness,
        so that a gateway checks a node once per interval, not once per Service; every other
        Service in force is listed with health check port 0 (``allServices``), and the
        ``generation`` is what a long poll waits to move past."""
        services: dict[str, object] = {}
        for port, svc in sorted(self.state.services.items()):
            # Per family, what that family's healthCheckNodePort listener answers.
            families = health.service_families(svc.vips, svc.endpoints)
            counts = {
                f"IPv{f}": health.local_ready_endpoints(
                    svc.endpoints, self.state.node, health.counted_family(f, families)
                )
                for f in self.state.families
            }
            services[svc.key] = {"healthCheckNodePort": port, "localEndpoints": counts}
        for key in sorted(self.state.applied - services.keys()):
            services[key] = {"healthCheckNodePort": 0, "localEndpoints": {}}
        return {
            "generation": self.state.generation,
            "allServices": True,
            "node": self.state.node,
            "rulesCurrent": self.state.rules_current,
            "nodeEligible": health.node_eligible(self.state.deleting, self.state.taints),
            "lastApplied": health.go_time(self.state.last_applied_ns),
            "services": services,
        }

    # -- listeners ---------------------------------------------------------------------------
    @property
    def conflicts(self) -> dict[int, str]:
        """Port -> why this agent cannot serve it (some family of it), for the status."""
        out: dict[int, list[str]] = {}
        for (port, family), why in sorted(self._held.items()):
            out.setdefault(port, []).append(f"IPv{family}: {why}")
        return {port: "; ".join(whys) for port, whys in out.items()}

    async def start_node(self) -> None:
        """The node-level ports, on each family not served yet (kube-proxy may have held one at
        start and let it go since: ``sync`` tries again)."""
        for port in self.node_ports:
            for family in self.state.families:
                if (port, family) not in self._servers:
                    await self._listen(port, family, self.node_answer)

    async def sync(self) -> None:
        """Listens on exactly the ports of the current Local Services: a port whose Service
        moved to Cluster or went away stops at once (connection refused, not 503)."""
        wanted = {(p, f) for p in self.state.services for f in self.state.families}
        for key in list(self._servers):
            if key[0] not in self.node_ports and key not in wanted:
                server = self._servers.pop(key)
                server.close()
        for port, family in list(self._held):
            if port not in self.state.services and port not in self.node_ports:
                del self._held[(port, family)]
        for port, family in sorted(wanted - set(self._servers)):
            await self._listen(port, family, self.service_answer(port, family))
        await self.start_node()

    async def _listen(self, port: int, family: int, answer: Answer) -> None:
        try:
            sock = _socket(family, port)
        except OSError as e:
            # Another program (kube-proxy, where it runs) holds it: we serve nothing there.
            if self._held.get((port, family)) != str(e):
                log.warning("cannot listen on port %d (IPv%d): %s", port, family, e)
            self._held[(port, family)] = str(e)
            return
        self._held.pop((port, family), None)
        self._servers[(port, family)] = await asyncio.start_server(
            lambda r, w: _serve(r, w, answer), sock=sock, limit=REQUEST_LIMIT
        )

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

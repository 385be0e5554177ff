"""The gateway's health prober: HTTP probes of every backend node, turned into one
``TargetHealth`` per (node, Service) by ``healthstate``.

Per node, one probe per interval covers every Service when the node offers the node agent's
aggregate endpoint (``GET :10262/portico/v1/services``, the agent's own port). Otherwise (404
there, or the port refused: a node with only kube-proxy, or an agent from before it had that
port) the node is probed per Service: ``:<healthCheckNodePort>/healthz`` for each Local Service
and kube-proxy's ``:10256/healthz`` once for all its Cluster Services; the aggregate
endpoint is tried again every ``aggregate_recheck`` seconds. Each node has its own loop, so the
probes of one tick are coalesced and a hung node delays only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

import httpx
from portico_common.ports import AGENT_HEALTH_PORT
from prometheus_client import CollectorRegistry, Counter, Histogram

from .healthstate import (
    Probe,
    TargetHealth,
    classify_http,
    cluster_healthy_from_aggregate,
    not_applied,
    observe,
    parse_aggregate,
    service_healthy_from_aggregate,
    worth_reporting,
)
from .model import GatewayService

log = logging.getLogger("portico.lbnode.prober")

AGGREGATE_PATH = "/portico/v1/services"
HEALTHZ_PATH = "/healthz"


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 1.0
    timeout: float = 1.0  # whole request, connect to last byte
    rise: int = 2
    fall: int = 2
    concurrency: int = 64  # requests in flight, all nodes together
    jitter: float = 0.1  # each gap between a node's probes is interval * (1 +- jitter)
    node_port: int = AGENT_HEALTH_PORT  # the node agent's port: its aggregate view
    # Per-Service mode: the port of the node-level /healthz for Cluster Services; the program
    # sets kube-proxy's. None: node_port (a node whose one port answers both).
    node_healthz_port: int | None = None
    aggregate_recheck: float = 30.0  # how often a per-Service node is asked for the aggregate
    keepalive_per_node: int = 64  # one per port probed on a node is enough


@dataclass(frozen=True)
class NodeTargets:
    address: str  # the node's InternalIP the probes go to: IPv4 preferred
    services: Mapping[str, int]  # "namespace/name" -> healthCheckNodePort, 0 for Cluster

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def targets_from_services(services: Iterable[GatewayService]) -> dict[str, NodeTargets]:
    """What to probe for these Services: each backend node by its IPv4 address (IPv6 when it has
    none), with the Services it backs. Nodes without an address cannot be probed: left out."""
    addresses: dict[str, str] = {}
    wanted: dict[str, dict[str, int]] = {}
    for svc in services:
        for b in svc.backends:
            ip = b.ipv4 or b.ipv6
            if ip is None:
                continue
            addresses.setdefault(b.node, str(ip))
            wanted.setdefault(b.node, {})[svc.key] = svc.health_check_node_port
    return {n: NodeTargets(addresses[n], wanted[n]) for n in sorted(wanted)}


class ProbeKind(StrEnum):
    AGGREGATE = "aggregate"  # the node agent's listing of every Service
    SERVICE = "service"  # a Local Service's healthCheckNodePort
    NODE = "node"  # the node-level /healthz, for Cluster Services
    LONG_POLL = "long-poll"  # the aggregate, held by the agent until its next round


class ProberMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.probes = Counter(
            "portico_gateway_probes_total",
            "Health probes by kind (aggregate, service, node) and result",
            ["kind", "result"],
            registry=r,
        )
        self.seconds = Histogram(
            "portico_gateway_probe_seconds",
            "Time from sending a health probe to its answer (or error)",
            ["kind"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer, or why there was none (``status`` 0)."""

    status: int
    body: bytes = b""
    error: str = ""
    refused: bool = False
    etag: str = ""  # the agent's validator of an aggregate answer, without quotes


class _Mode(Enum):
    UNKNOWN = "unknown"  # not asked yet: try the aggregate first
    AGGREGATE = "aggregate"
    PER_SERVICE = "per-service"


@dataclass
class _Node:
    targets: NodeTargets
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    mode: _Mode = _Mode.UNKNOWN
    recheck_at: float = 0.0  # loop time when a per-Service node is asked for the aggregate
    task: asyncio.Task[None] | None = None
    # The last aggregate answer and the targets it was judged for, when judging it left every
    # target where that answer puts it: the same answer again changes nothing and is skipped.
    settled_body: bytes | None = None
    settled_targets: NodeTargets | None = None
    # The agent's generation of the last answer, when that answer did not list some Service
    # probed on the node yet: the next probe is a long poll for its next round, at once.
    poll_after: int | None = None
    settled_poll: int | None = None  # ... as the settled answer set it
    # Counts the changes of the node's targets (``set_targets``), which may forget some of its
    # health results: an answer settled before one must be judged again, since targets equal
    # in value may be back without results. Cheaper than looking every result up per probe.
    forgotten: int = 0
    settled_forgotten: int = -1
    # The validator of the last aggregate answer that parsed, and that answer's body: the next
    # aggregate probe sends it (``?unless=``) and a 304 means "the same body again".
    validator: str = ""
    validated_body: bytes | None = None


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore wraps the OSError
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or (
            isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _PoolPerNode(httpx.AsyncBaseTransport):
    """A connection pool per node address under the one client. httpcore's pool scans all its
    connections for every request, so one pool for every node made each round quadratic in
    the number of nodes (bench/gateway_probes.py: 35 probes/s with 400 connections)."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        # Plain HTTP only: a context without a CA bundle, made once, not once per node.
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pools.get(request.url.host)
        if pool is None:
            pool = httpx.AsyncHTTPTransport(verify=self._ssl, trust_env=False, limits=self._limits)
            self._pools[request.url.host] = pool
        return await pool.handle_async_request(request)

    def forget(self, host: str) -> None:
        pool = self._pools.pop(host.strip("[]"), None)
        if pool is not None:
            task = asyncio.get_running_loop().create_task(pool.aclose())
            self._closing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(p.aclose() for p in pools), *self._closing, return_exceptions=True)


OnChange = Callable[[str, str, TargetHealth], None]


class Prober:
    """Probes the targets given by ``set_targets`` while ``run`` runs; ``health`` reads results
    and ``on_change`` hears of flips (and of the first result of each target)."""

    def __init__(
        self,
        settings: ProbeSettings | None = None,
        on_change: OnChange | None = None,
        *,
        metrics: ProberMetrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or ProbeSettings()
        self.on_change = on_change
        self.metrics = metrics or ProberMetrics()
        self._clock = clock
        self._rng = rng or random.Random()
        self._nodes: dict[str, _Node] = {}
        self._health: dict[tuple[str, str], TargetHealth] = {}
        self._client: httpx.AsyncClient | None = None
        self._pools: _PoolPerNode | None = None
        self._limit = asyncio.Semaphore(self.settings.concurrency)
        self._progress = asyncio.Event()  # set on every result, for first_round
        self._running = False

    # -- what callers see ------------------------------------------------------------------
    def health(self, node: str, service_key: str) -> TargetHealth | None:
        return self._health.get((node, service_key))

    def healthy(self, node: str, service_key: str) -> bool:
        h = self._health.get((node, service_key))
        return h is not None and h.healthy

    def set_targets(self, targets: Mapping[str, NodeTargets]) -> None:
        """The whole wanted set. A new node, a new Service on a node, or a node's new address is
        probed at once; what is no longer wanted is forgotten (its health too)."""
        for name in list(self._nodes):
            if name not in targets:
                self._drop_node(name)
        for name, want in targets.items():
            node = self._nodes.get(name)
            if node is None:
                self._nodes[name] = node = _Node(want)
                node.wake.set()
                self._start(name, node)
                continue
            old = node.targets
            node.targets = want
            if want != old:  # results may be forgotten below: no settled answer is skipped
                node.forgotten += 1
            for key in old.services:
                if key not in want.services or want.services[key] != old.services[key]:
                    self._health.pop((name, key), None)
            if want.address != old.address:
                node.mode = _Mode.UNKNOWN
                node.validator, node.validated_body = "", None
                self._release_address(old.address)
                for key in want.services:
                    self._health.pop((name, key), None)
            if want.address != old.address or any(
                old.services.get(k) != p for k, p in want.services.items()
            ):
                node.wake.set()

    async def first_round(self, timeout: float) -> bool:
        """Waits, at most ``timeout`` seconds, until every wanted target has had a result, so a
        restarted gateway programs its first table from answers; True when all had one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._progress.clear()
            if all(
                (name, key) in self._health
                for name, node in self._nodes.items()
                for key in node.targets.services
            ):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    async def close(self) -> None:
        """Closes the connections, should ``run`` not have (it does when cancelled)."""
        if self._pools is not None:
            await self._pools.aclose()

    async def run(self) -> None:
        """Probes until cancelled."""
        s = self.settings
        limits = httpx.Limits(
            max_connections=None,  # the semaphore bounds what is in flight
            max_keepalive_connections=s.keepalive_per_node,
            keepalive_expiry=max(5.0, 3 * s.interval),
        )
        self._pools = pools = _PoolPerNode(limits)
        async with httpx.AsyncClient(transport=pools, trust_env=False, timeout=s.timeout) as c:
            self._client = c
            self._running = True
            for name, node in self._nodes.items():
                self._start(name, node)
            try:
                await asyncio.Event().wait()
            finally:
                self._running = False
                tasks = [n.task for n in self._nodes.values() if n.task is not None]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for n in self._nodes.values():
                    n.task = None
                self._client = None
                self._pools = None

    # -- node loops ----------------------------------------------------------------------------
    def _start(self, name: str, node: _Node) -> None:
        if self._running and node.task is None:
            node.task = asyncio.get_running_loop().create_task(
                self._node_loop(name, node), name=f"probe {name}"
            )

    def _drop_node(self, name: str) -> None:
        node = self._nodes.pop(name)
        if node.task is not None:
            node.task.cancel()
        for key in node.targets.services:
            self._health.pop((name, key), None)
        self._release_address(node.targets.address)

    def _release_address(self, address: str) -> None:
        """Closes the connections to an address no node is probed at any more."""
        if self._pools is not None and all(
            n.targets.address != address for n in self._nodes.values()
        ):
            self._pools.forget(address)

    async def _node_loop(self, name: str, node: _Node) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        due = loop.time()  # a new node is probed at once
        # The first gap is random in [0, interval): nodes added together spread over the tick.
        gap = self._rng.uniform(0, s.interval)
        while True:
            delay = due - loop.time()
            if node.poll_after is not None and delay > 0 and not node.wake.is_set():
                # A Service the node has not programmed yet: ask again at once, the answer held
                # by the agent until its next round (within the request's timeout), instead of
                # waiting for the interval. The interval's own probe stays when it was due.
                await self._probe_node(name, node, wait=min(delay, s.timeout / 2))
                continue
            if delay > 0 and not node.wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(node.wake.wait(), delay)
            node.wake.clear()  # a wake during the probe below is kept for the next round
            started = loop.time()
            try:
                await self._probe_node(name, node)
            except Exception:  # a bug here must not stop this node's probes for good
                log.exception("probing node %s failed", name)
            # From the probe's start, not its end: a slow answer does not stretch the interval.
            due = started + gap
            gap = s.interval * (1 + self._rng.uniform(-s.jitter, s.jitter))

    async def _probe_node(self, name: str, node: _Node, wait: float = 0.0) -> None:
        """``wait`` > 0: a long poll of the aggregate, after ``node.poll_after``."""
        s = self.settings
        targets = node.targets
        now = asyncio.get_running_loop().time()
        # Any other outcome than the same answer again unsettles the node.
        last_body, last_targets = node.settled_body, node.settled_targets
        node.settled_body = node.settled_targets = None
        forgotten = node.forgotten  # as the probe leaves
        params = []
        if wait > 0 and node.poll_after is not None:
            params += [f"after={node.poll_after}", f"wait={int(wait * 1000)}"]
        sent = node.validator if node.validated_body is not None else ""
        if sent:
            params.append(f"unless={sent}")
        path = AGGREGATE_PATH + ("?" + "&".join(params) if params else "")
        node.poll_after = None
        if node.mode != _Mode.PER_SERVICE or now >= node.recheck_at:
            kind = ProbeKind.LONG_POLL if wait > 0 else ProbeKind.AGGREGATE
            answer = await self._get(targets.address, s.node_port, path, kind)
            if answer.status == 304:
                if not sent or node.validated_body is None or answer.etag not in ("", sent):
                    # Not modified from nothing we hold: no health can be read from it.
                    node.validator, node.validated_body = "", None
                    probe = Probe(
                        False,
                        True,
                        f"node port {s.node_port}: 304 without an answer held",
                        self._clock(),
                    )
                    for key in targets.services:
                        self._record(name, targets, key, probe)
                    return
                # The agent's answer is the one held: a fresh result from it, without a parse.
                answer = _Answer(200, node.validated_body, etag=sent)
            if answer.status == 200:
                if (
                    answer.body == last_body
                    and targets == last_targets
                    and node.targets == targets
                    and node.forgotten == node.settled_forgotten == forgotten
                ):
                    # A node answers the same every second while nothing changes: with 1,000
                    # Services that is 1,000 judgements (and a parse) per node per second saved.
                    node.settled_body, node.settled_targets = last_body, last_targets
                    node.poll_after = node.settled_poll
                    if answer.etag != node.validator:  # the same body, a new agent's label
                        node.validator = answer.etag
                        node.validated_body = answer.body if answer.etag else None
                    return
                try:
                    parsed = parse_aggregate(answer.body)
                except ValueError as e:
                    node.validator, node.validated_body = "", None
                    log.warning("node %s: bad aggregate answer, probing per Service: %s", name, e)
                else:
                    node.mode = _Mode.AGGREGATE
                    # An agent without validators (older) sends none: it is asked in full.
                    node.validator = answer.etag
                    node.validated_body = answer.body if answer.etag else None
                    if not_applied(parsed, targets.services) and node.targets == targets:
                        node.poll_after = parsed.generation
                    node.settled_poll = node.poll_after
                    settled = True
                    family = targets.family  # parses the address: once, not per Service
                    for key, port in targets.services.items():
                        if port:
                            ok, msg = service_healthy_from_aggregate(parsed, key, family)
                        else:
                            ok, msg = cluster_healthy_from_aggregate(parsed, key)
                        self._record(name, targets, key, Probe(ok, True, msg, self._clock()))
                        h = self._health.get((name, key))
                        settled = settled and h is not None and h.healthy == ok
                    node.settled_body = answer.body if settled else None
                    node.settled_targets = targets if settled else None
                    node.settled_forgotten = forgotten
                    return
            elif not answer.refused and answer.status == 0:
                # No answer at all (timeout, unreachable): the node, not its mode, is in doubt.
                probe = Probe(
                    False, False, f"node port {s.node_port}: {answer.error}", self._clock()
                )
                for key in targets.services:
                    self._record(name, targets, key, probe)
                return
            if node.mode != _Mode.PER_SERVICE:
                log.info(
                    "node %s: no aggregate endpoint (%s), probing per Service",
                    name,
                    answer.error or f"HTTP {answer.status}",
                )
            node.mode = _Mode.PER_SERVICE
            node.recheck_at = now + s.aggregate_recheck
        await self._probe_per_service(name, targets)

    async def _probe_per_service(self, name: str, targets: NodeTargets) -> None:
        ports = sorted(set(targets.services.values()))

        async def one(port: int) -> tuple[int, _Answer]:
            kind = ProbeKind.SERVICE if port else ProbeKind.NODE
            return port, await self._get(
                targets.address, port or self._node_healthz_port, HEALTHZ_PATH, kind
            )

        answers = dict(await asyncio.gather(*(one(p) for p in ports)))
        for key, port in targets.services.items():
            self._record(name, targets, key, self._probe_of(answers[port], port))

    @property
    def _node_healthz_port(self) -> int:
        s = self.settings
        return s.node_port if s.node_healthz_port is None else s.node_healthz_port

    def _probe_of(self, answer: _Answer, port: int) -> Probe:
        where = f"port {port or self._node_healthz_port}"
        if answer.status == 0:
            return Probe(False, False, f"{where}: {answer.error}", self._clock())
        ok, msg = classify_http(answer.status, answer.body)
        return Probe(ok, True, f"{where}: {msg}", self._clock())

    def _record(self, name: str, targets: NodeTargets, key: str, probe: Probe) -> None:
        node = self._nodes.get(name)
        # The targets may have changed while the probe was out: its result is for what it probed.
        if node is None or node.targets.address != targets.address:
            return
        if node.targets.services.get(key) != targets.services.get(key):
            return
        s = self.settings
        old = self._health.get((name, key))
        new = observe(old, probe, s.rise, s.fall)
        self._health[(name, key)] = new
        self._progress.set()
        if self.on_change is not None and worth_reporting(old, new):
            try:
                self.on_change(name, key, new)
            except Exception:
                log.exception("on_change for %s %s failed", name, key)

    # -- HTTP ------------------------------------------------------------------------------------
    async def _get(self, address: str, port: int, path: str, kind: ProbeKind) -> _Answer:
        assert self._client is not None
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{port}{path}"
        async with self._limit:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.settings.timeout):
                    r = await self._get_once_more_if_stale(url)
                etag = r.headers.get("etag", "").strip('"') if r.status_code in (200, 304) else ""
                answer = _Answer(r.status_code, r.content, etag=etag)
                result = _RESULTS.get(r.status_code, "http_other")
            except (TimeoutError, httpx.TimeoutException):
                answer, result = _Answer(0, error="timeout"), "timeout"
            except httpx.TransportError as e:
                refused = _refused(e)
                error = "connection refused" if refused else f"{type(e).__name__}: {e}"
                answer, result = _Answer(0, error=error, refused=refused), "connect_error"
            self.metrics.seconds.labels(kind.value).observe(time.perf_counter() - started)
        self.metrics.probes.labels(kind.value, result).inc()
        return answer

    async def _get_once_more_if_stale(self, url: str) -> httpx.Response:
        """The node agent closes each connection after its answer; should a kept-alive one be
        found closed only on use, the request is sent again on a new one, not counted a failure."""
        assert self._client is not None
        try:
            return await self._client.get(url)
        except httpx.RemoteProtocolError:
            return await self._client.get(url)


_RESULTS = {200: "ok", 304: "not_modified", 404: "http_404", 503: "http_503"}

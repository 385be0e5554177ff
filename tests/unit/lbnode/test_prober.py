"""The prober against real HTTP servers on 127.0.0.1 (ephemeral ports): a node agent's aggregate
endpoint, a kube-proxy-like node (404 there, per-Service /healthz ports), a node that hangs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from portico_common.model import Endpoint, LBService, ServicePort
from portico_lbnode.healthstate import TargetHealth
from portico_lbnode.prober import (
    AGGREGATE_PATH,
    NodeTargets,
    Prober,
    ProbeSettings,
    targets_from_services,
)
from portico_nodeagent.healthserver import HealthServers, HealthState

HANG = "hang"
Route = tuple[int, bytes] | str


class FakeNode:
    """HTTP/1.1 with keep-alive on 127.0.0.1, answering from ``routes`` (404 by default) and
    counting what it received and what it answered."""

    def __init__(self) -> None:
        self.routes: dict[tuple[int, str], Route] = {}
        self.received: Counter[tuple[int, str]] = Counter()
        self.answered: Counter[tuple[int, str, int]] = Counter()
        self.release = asyncio.Event()
        self.drop_reused = False  # close a kept-alive connection on its next request, unanswered
        self.delay = 0.0  # seconds before each answer
        self._servers: list[asyncio.Server] = []

    async def listen(self) -> int:
        holder: list[int] = []

        async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._serve(holder[0], r, w)

        server = await asyncio.start_server(conn, "127.0.0.1", 0)
        holder.append(server.sockets[0].getsockname()[1])
        self._servers.append(server)
        return holder[0]

    def route(self, port: int, path: str, status: int, doc: Any = None) -> None:
        body = b"" if doc is None else json.dumps(doc).encode()
        self.routes[(port, path)] = (status, body)

    async def _serve(self, port: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            for i in range(100_000):
                head = await r.readuntil(b"\r\n\r\n")
                if i and self.drop_reused:
                    return  # as a server whose keep-alive timeout ran out just then
                path = head.split(b" ", 2)[1].decode()
                self.received[(port, path)] += 1
                route = self.routes.get((port, path), (404, b""))
                if route == HANG:
                    await asyncio.wait_for(self.release.wait(), 10)
                    return
                assert not isinstance(route, str)
                status, body = route
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.answered[(port, path, status)] += 1  # before the client can see it
                w.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        self.release.set()
        for s in self._servers:
            s.close()


def arun(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def wait_until(pred: Callable[[], Any], what: str, timeout: float = 5.0) -> float:
    """Seconds until ``pred`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def running(prober: Prober) -> AsyncIterator[None]:
    task = asyncio.create_task(prober.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def aggregate(services: dict[str, int], rules_current: bool = True) -> dict[str, Any]:
    return {
        "node": "n1",
        "rulesCurrent": rules_current,
        "lastApplied": "2026-12-02T11:26:12Z",
        "services": {
            k: {"healthCheckNodePort": 30000 + i, "localEndpoints": {"IPv4": n, "IPv6": 0}}
            for i, (k, n) in enumerate(services.items())
        },
    }


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool, str]] = []

    def __call__(self, node: str, key: str, h: TargetHealth) -> None:
        self.seen.append((node, key, h.healthy, h.message))

    def of(self, key: str) -> list[bool]:
        return [healthy for _, k, healthy, _ in self.seen if k == key]


def known(prober: Prober, node: str, *keys: str) -> bool:
    return all(prober.health(node, k) is not None for k in keys)


# ---------------------------------------------------------------------------------------------
def test_aggregate_mode_one_request_per_node_per_interval() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        svc_port = await node.listen()  # must never be asked in aggregate mode
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1, "ns/b": 0, "ns/d": 2}))
        node.route(svc_port, "/healthz", 200)
        s = ProbeSettings(interval=0.1, timeout=0.5, node_port=np_)
        prober = Prober(s)
        want = {"ns/a": svc_port, "ns/b": 31001, "ns/c": 0, "ns/d": 31002, "ns/gone": 31003}
        try:
            prober.set_targets({"n1": NodeTargets("127.0.0.1", want)})
            async with running(prober):
                await wait_until(lambda: known(prober, "n1", *want), "first results")
                # One probe answered for all (a second tick may have begun on a slow machine).
                assert node.received[(np_, AGGREGATE_PATH)] <= 2, "one probe for all"
                assert prober.healthy("n1", "ns/a") and prober.healthy("n1", "ns/d")
                assert prober.healthy("n1", "ns/c")  # Cluster: the rules are current
                assert not prober.healthy("n1", "ns/b")  # 0 local endpoints
                gone = prober.health("n1", "ns/gone")
                assert gone is not None and not gone.healthy and "not listed" in gone.message
                t = await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 8, "8 probes")
                # 7 more requests, 7 gaps; the first gap is random in [0, 0.1)
                assert t >= 6 * 0.1 * 0.9 * 0.95, f"more than one request per interval: {t}"
                assert node.received[(svc_port, "/healthz")] == 0
                assert sum(node.received.values()) == node.received[(np_, AGGREGATE_PATH)]
        finally:
            node.close()

    arun(main())


def test_aggregate_stale_rules_take_every_service_out_at_once() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}))
        changes = Changes()
        prober = Prober(ProbeSettings(interval=0.05, timeout=0.5, fall=5, node_port=np_), changes)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/c": 0})})
        try:
            async with running(prober):
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "healthy")
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 4, "a few probes")
                node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}, rules_current=False))
                stale = (np_, AGGREGATE_PATH, 200)
                base = node.answered[stale]
                flips: list[int] = []
                prober.on_change = lambda n, k, h: flips.append(node.answered[stale] - base)
                await wait_until(lambda: not prober.healthy("n1", "ns/c"), "out")
                assert flips == [1, 1], "both out on the first stale answer, despite fall=5"
                assert changes.of("ns/a") == [True] and changes.of("ns/c") == [True]
        finally:
            node.close()

    arun(main())


def test_503_flips_at_once_and_recovery_needs_rise_and_on_change_only_on_flips() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()  # kube-proxy-like: 404 on the aggregate path
        port_a = await node.listen()
        node.route(np_, "/healthz", 200)
        node.route(port_a, "/healthz", 200, {"localEndpoints": 1})
        changes = Changes()
        s = ProbeSettings(interval=0.05, timeout=0.5, rise=3, fall=4, node_port=np_)
        prober = Prober(s, changes)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": port_a})})
        try:
            async with running(prober):
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "healthy")
                await wait_until(lambda: node.received[(port_a, "/healthz")] >= 5, "5 probes")
                assert changes.of("ns/a") == [True], "steady results are no news"
                node.route(port_a, "/healthz", 503, {"localEndpoints": 0})
                await wait_until(lambda: not prober.healthy("n1", "ns/a"), "out")
                assert node.answered[(port_a, "/healthz", 503)] == 1, "one 503 takes it out"
                h = prober.health("n1", "ns/a")
                assert h is not None and "503, 0 local endpoints" in h.message
                n = node.answered[(port_a, "/healthz", 503)]
                await wait_until(lambda: node.answered[(port_a, "/healthz", 503)] >= n + 3, "503s")
                assert changes.of("ns/a") == [True, False]
                node.route(port_a, "/healthz", 200, {"localEndpoints": 1})
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "back")
                assert node.answered[(port_a, "/healthz", 200)] - 5 >= 0
                oks_after = prober.health("n1", "ns/a")
                assert oks_after is not None and oks_after.oks == 3, "recovery takes rise oks"
                assert changes.of("ns/a") == [True, False, True]
        finally:
            node.close()

    arun(main())


def test_a_hang_counts_toward_fall() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        port_a = await node.listen()
        node.route(port_a, "/healthz", 200)
        changes = Changes()
        s = ProbeSettings(interval=0.05, timeout=0.15, fall=3, node_port=np_)
        prober = Prober(s, changes)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": port_a})})
        try:
            async with running(prober):
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "healthy")
                node.routes[(port_a, "/healthz")] = HANG
                hung_before = node.received[(port_a, "/healthz")]
                start = time.monotonic()
                await wait_until(lambda: not prober.healthy("n1", "ns/a"), "out after hangs")
                took = time.monotonic() - start
                # Three timeouts at least (a fourth may be out when the flip is seen); never
                # fewer: the time below says so too.
                assert node.received[(port_a, "/healthz")] - hung_before >= 3
                assert took >= 3 * 0.15 * 0.9, f"out after {took:.3f}s: before 3 timeouts"
                h = prober.health("n1", "ns/a")
                assert h is not None and h.message == f"port {port_a}: timeout"
                assert changes.of("ns/a") == [True, False]
                got = prober.metrics.registry.get_sample_value(
                    "portico_gateway_probes_total", {"kind": "service", "result": "timeout"}
                )
                assert got is not None and got >= 3
        finally:
            node.close()

    arun(main())


def test_a_hanging_node_port_in_aggregate_mode_counts_toward_fall_for_all() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}))
        s = ProbeSettings(interval=0.05, timeout=0.1, fall=2, node_port=np_)
        prober = Prober(s)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/c": 0})})
        try:
            async with running(prober):
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "healthy")
                node.routes[(np_, AGGREGATE_PATH)] = HANG
                before = node.received[(np_, AGGREGATE_PATH)]
                await wait_until(lambda: not prober.healthy("n1", "ns/c"), "out")
                # Two timeouts took it out (a third may have left as the second ended).
                assert 2 <= node.received[(np_, AGGREGATE_PATH)] - before <= 3
                assert not prober.healthy("n1", "ns/a")
                # a timeout is doubt about the node, not news that it lost the aggregate endpoint
                assert node.received[(np_, "/healthz")] == 0
        finally:
            node.close()

    arun(main())


def test_falls_back_per_service_on_404_and_rechecks_the_aggregate() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        port_a, port_b = await node.listen(), await node.listen()
        node.route(np_, "/healthz", 200)
        node.route(port_a, "/healthz", 200, {"localEndpoints": 1})
        node.route(port_b, "/healthz", 503, {"localEndpoints": 0})
        s = ProbeSettings(interval=0.05, timeout=0.5, node_port=np_, aggregate_recheck=0.4)
        prober = Prober(s)
        want = {"ns/a": port_a, "ns/b": port_b, "ns/c": 0, "ns/c2": 0}
        prober.set_targets({"n1": NodeTargets("127.0.0.1", want)})
        try:
            async with running(prober):
                await wait_until(lambda: known(prober, "n1", *want), "first results")
                assert node.received[(np_, AGGREGATE_PATH)] <= 2, "fallback in the same tick"
                assert prober.healthy("n1", "ns/a") and not prober.healthy("n1", "ns/b")
                assert prober.healthy("n1", "ns/c") and prober.healthy("n1", "ns/c2")
                await wait_until(lambda: node.received[(port_a, "/healthz")] >= 16, "probes")
                agg = node.received[(np_, AGGREGATE_PATH)]
                node_hz = node.received[(np_, "/healthz")]
                assert 1 <= agg <= 4, f"the 404 is remembered, rechecked now and then: {agg}"
                # Cluster Services share the node probe: one per tick, as many as each port's
                assert abs(node_hz - node.received[(port_a, "/healthz")]) <= 1
                # The node agent comes up: the next recheck moves the node to aggregate mode.
                node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1, "ns/b": 1}))
                await wait_until(lambda: prober.healthy("n1", "ns/b"), "aggregate mode", 3)
                per_service = node.received[(port_a, "/healthz")]
                n = node.received[(np_, AGGREGATE_PATH)]
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= n + 5, "aggr")
                assert node.received[(port_a, "/healthz")] == per_service
        finally:
            node.close()

    arun(main())


def test_slow_answers_do_not_stretch_the_interval() -> None:
    async def main() -> None:
        node = FakeNode()
        node.delay = 0.09
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}))
        prober = Prober(ProbeSettings(interval=0.1, timeout=0.5, node_port=np_))
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000})})
        try:
            async with running(prober):
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 1, "first")
                t = await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 8, "8")
                # 7 gaps of 0.1 s +- 10 % (the first in [0, 0.1)) from each probe's start;
                # from each answer instead they would take 7 * 0.19 s.
                assert t < 1.1, f"{t:.2f}s for 7 more probes"
        finally:
            node.close()

    arun(main())


def test_a_kept_alive_connection_closed_on_reuse_is_no_failure() -> None:
    async def main() -> None:
        node = FakeNode()
        node.drop_reused = True
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}))
        changes = Changes()
        prober = Prober(ProbeSettings(interval=0.02, timeout=0.5, fall=1, node_port=np_), changes)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000})})
        try:
            async with running(prober):
                await wait_until(lambda: node.answered[(np_, AGGREGATE_PATH, 200)] >= 10, "10")
                assert changes.of("ns/a") == [True], "fall=1: any failed probe would show"
        finally:
            node.close()

    arun(main())


def test_falls_back_per_service_when_the_node_port_is_refused() -> None:
    async def main() -> None:
        node = FakeNode()
        port_a = await node.listen()
        node.route(port_a, "/healthz", 200)
        s = ProbeSettings(interval=0.05, timeout=0.5, node_port=closed_port())
        prober = Prober(s)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": port_a, "ns/c": 0})})
        try:
            async with running(prober):
                await wait_until(lambda: known(prober, "n1", "ns/a", "ns/c"), "results")
                assert prober.healthy("n1", "ns/a")
                c = prober.health("n1", "ns/c")  # its node probe goes to the refused port
                assert c is not None and not c.healthy and "connection refused" in c.message
        finally:
            node.close()

    arun(main())


def test_new_services_and_nodes_are_probed_at_once_and_removed_ones_forgotten() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1, "ns/b": 1}))
        prober = Prober(ProbeSettings(interval=5.0, timeout=0.5, node_port=np_))
        try:
            async with running(prober):
                await asyncio.sleep(0)
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000})})
                t = await wait_until(lambda: known(prober, "n1", "ns/a"), "a", 2.0)
                assert t < 0.5
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] == 1, "1 probe")
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/b": 31001})})
                t = await wait_until(lambda: known(prober, "n1", "ns/b"), "b", 2.0)
                assert t < 0.5, "a new Service on a known node waits for no tick"
                assert prober.healthy("n1", "ns/b")
                # the same targets again: nothing new, no extra probe
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/b": 31001})})
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/b": 31001})})
                await asyncio.sleep(0.1)
                assert node.received[(np_, AGGREGATE_PATH)] == 2
                assert prober.health("n1", "ns/a") is None
                prober.set_targets({})
                assert prober.health("n1", "ns/b") is None
        finally:
            node.close()

    arun(main())


def test_first_round_waits_for_every_target_bounded() -> None:
    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        port_a, port_h = await node.listen(), await node.listen()
        node.route(port_a, "/healthz", 200)
        node.routes[(port_h, "/healthz")] = HANG
        prober = Prober(ProbeSettings(interval=5.0, timeout=1.0, node_port=np_))
        try:
            async with running(prober):
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": port_a})})
                assert await prober.first_round(2.0)
                assert prober.healthy("n1", "ns/a")
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/h": port_h})})
                start = time.monotonic()
                assert not await prober.first_round(0.2), "a hung node's result is not there"
                assert 0.15 < time.monotonic() - start < 0.9
                assert await prober.first_round(3.0), "its timeout is a result"
                assert not prober.healthy("n1", "ns/h")
        finally:
            node.close()

    arun(main())


def test_against_the_real_node_agent_health_server() -> None:
    """The node agent's own listener (it closes each connection after its answer)."""

    async def main() -> None:
        eps = (Endpoint("198.18.0.10", "n1"), Endpoint("198.18.0.11", "n2"))
        web = LBService(
            "ns", "web", ("198.19.0.1",), (ServicePort("http", "TCP", 80),), eps, "Local"
        )
        state = HealthState(
            node="n1",
            services={31234: web},
            rules_current=True,
            families=(4,),
            applied=frozenset({"ns/web", "ns/cluster"}),
        )
        np_ = closed_port()  # the agent takes no 0 for "any port"
        servers = HealthServers(state, node_port=np_)
        await servers.start_node()
        try:
            prober = Prober(ProbeSettings(interval=0.03, timeout=0.5, fall=1, node_port=np_))
            want = {"ns/web": 31234, "ns/other": 31235, "ns/cluster": 0}
            prober.set_targets({"n1": NodeTargets("127.0.0.1", want)})
            async with running(prober):
                await wait_until(lambda: known(prober, "n1", *want), "results")
                assert prober.healthy("n1", "ns/web") and prober.healthy("n1", "ns/cluster")
                assert not prober.healthy("n1", "ns/other")
                reg = prober.metrics.registry

                def answers(result: str) -> float:
                    """Aggregate probes (long polls too: ns/other is not listed) by result."""
                    return sum(
                        reg.get_sample_value(
                            "portico_gateway_probes_total", {"kind": kind, "result": result}
                        )
                        or 0.0
                        for kind in ("aggregate", "long-poll")
                    )

                await wait_until(lambda: answers("not_modified") >= 10, "10 probes")
                # Only the first answer came in full; the rest were "not modified", re-applied.
                assert answers("ok") == 1
                # fall=1: a single failed probe on a closed kept-alive connection would show
                assert prober.healthy("n1", "ns/web")
                state.rules_current = False
                await wait_until(lambda: not prober.healthy("n1", "ns/cluster"), "stale")
                assert not prober.healthy("n1", "ns/web")
                assert answers("ok") == 2  # the change came in full
                state.rules_current = True
                await wait_until(lambda: prober.healthy("n1", "ns/web"), "current again")
        finally:
            servers.close()

    arun(main())


def test_a_service_the_agent_has_not_applied_is_served_once_it_has_by_a_long_poll() -> None:
    """A new Cluster Service on a node whose agent lists every Service in force: not healthy
    while the agent does not list it; the next probe is a long poll held by the agent, which
    answers as soon as its round applied the Service (long before the 5 s interval)."""

    async def main() -> None:
        state = HealthState(node="n1", rules_current=True, families=(4,), applied=frozenset())
        np_ = closed_port()
        servers = HealthServers(state, node_port=np_)
        await servers.start_node()
        try:
            prober = Prober(ProbeSettings(interval=5.0, timeout=1.0, node_port=np_))
            prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/new": 0})})
            async with running(prober):
                await wait_until(lambda: known(prober, "n1", "ns/new"), "a first answer")
                h = prober.health("n1", "ns/new")
                assert h is not None and not h.healthy
                assert h.message == "node agent: service not programmed yet"
                # An unrelated round: the held poll answers, the Service is still not there.
                state.generation += 1
                servers.changed()
                await asyncio.sleep(0.05)
                assert not prober.healthy("n1", "ns/new")
                state.applied = frozenset({"ns/new"})
                state.generation += 1
                servers.changed()
                took = await wait_until(lambda: prober.healthy("n1", "ns/new"), "served", 2.0)
                assert took < 0.5
                polls = prober.metrics.registry.get_sample_value(
                    "portico_gateway_probes_total", {"kind": "long-poll", "result": "ok"}
                )
                assert polls is not None and polls >= 2
        finally:
            servers.close()

    arun(main())


def test_targets_from_services_prefers_ipv4() -> None:
    from portico_lbnode.model import service_from_cr

    def cr(name: str, local: bool, backends: list[dict[str, Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {"vips": ["198.19.0.1"], "backends": backends}
        if local:
            spec |= {"externalTrafficPolicy": "Local", "healthCheckNodePort": 31000}
        return {"metadata": {"namespace": "ns", "name": name}, "spec": spec}

    n1 = {"node": "n1", "internalIPs": ["fd00::1", "198.18.0.1"]}
    n2 = {"node": "n2", "internalIPs": ["fd00::2"]}
    n3 = {"node": "n3"}
    got = targets_from_services(
        [service_from_cr(cr("l", True, [n1, n2, n3])), service_from_cr(cr("c", False, [n1]))]
    )
    assert got == {
        "n1": NodeTargets("198.18.0.1", {"ns/l": 31000, "ns/c": 0}),
        "n2": NodeTargets("fd00::2", {"ns/l": 31000}),
    }
    assert got["n2"].family == 6


def test_the_same_aggregate_answer_after_a_hang_still_brings_the_node_back() -> None:
    """Unchanged answers are skipped while the node is settled; a hang in between unsettles
    it, so the very same answer afterwards is judged again (rise) rather than skipped."""

    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1}))
        good = node.routes[(np_, AGGREGATE_PATH)]
        s = ProbeSettings(interval=0.05, timeout=0.1, rise=2, fall=2, node_port=np_)
        flips: list[bool] = []
        prober = Prober(s, on_change=lambda n, k, h: flips.append(h.healthy))
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000})})
        try:
            async with running(prober):
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "healthy")
                seen = node.received[(np_, AGGREGATE_PATH)]
                await wait_until(
                    lambda: node.received[(np_, AGGREGATE_PATH)] >= seen + 3, "more probes"
                )
                assert flips == [True], "an unchanged answer is no news"
                node.routes[(np_, AGGREGATE_PATH)] = HANG
                await wait_until(lambda: not prober.healthy("n1", "ns/a"), "out")
                node.routes[(np_, AGGREGATE_PATH)] = good
                await wait_until(lambda: prober.healthy("n1", "ns/a"), "back with the same answer")
                assert flips == [True, False, True]
        finally:
            node.close()

    asyncio.run(main())


def test_not_modified_with_no_answer_held_is_no_health() -> None:
    """A 304 to a probe that sent no validator (a confused agent, or one answering another
    gateway's validator) tells nothing: every target fails, reachable, and the next probe asks
    for the answer in full again."""

    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 304)
        s = ProbeSettings(interval=0.03, timeout=0.5, rise=1, fall=1, node_port=np_)
        prober = Prober(s)
        prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/c": 0})})
        try:
            async with running(prober):
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 3, "probes")
                for key in ("ns/a", "ns/c"):
                    h = prober.health("n1", key)
                    assert h is not None and not h.healthy and h.answered
                    assert "304 without an answer held" in h.message
        finally:
            node.close()

    asyncio.run(main())


def test_a_service_dropped_and_back_is_judged_again_from_the_same_answer() -> None:
    """A settled node skips an unchanged answer; a Service dropped (its result forgotten) and
    back before the next probe leaves the targets equal in value to the settled ones, and the
    same answer must still give it a result."""

    async def main() -> None:
        node = FakeNode()
        np_ = await node.listen()
        node.route(np_, AGGREGATE_PATH, 200, aggregate({"ns/a": 1, "ns/b": 1}))
        prober = Prober(ProbeSettings(interval=5.0, timeout=0.5, node_port=np_))
        both = NodeTargets("127.0.0.1", {"ns/a": 31000, "ns/b": 31001})
        try:
            async with running(prober):
                prober.set_targets({"n1": both})
                await wait_until(lambda: prober.healthy("n1", "ns/b"), "b healthy", 2.0)
                prober.set_targets({"n1": NodeTargets("127.0.0.1", {"ns/a": 31000})})
                assert prober.health("n1", "ns/b") is None
                prober.set_targets({"n1": both})
                await wait_until(lambda: node.received[(np_, AGGREGATE_PATH)] >= 2, "a probe")
                await wait_until(lambda: prober.healthy("n1", "ns/b"), "b judged again", 2.0)
        finally:
            node.close()

    arun(main())

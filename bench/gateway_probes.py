"""Health probes per second of the gateway's prober on one core, and what that serves at a 1 s
interval: in aggregate mode (one probe per node, whatever its Services; answered "not modified"
while unchanged, and in full every time in the ``agg-full`` row, as an agent without
validators does) and in per-Service mode (one probe per node per Local Service).

The prober (this process) is pinned to CPU 0, the HTTP servers (one child process, a plain
asyncio protocol answering from precomputed bytes, keep-alive) to CPU 1 when there is one. Each
node is its own loopback address (127.1.x.y), so the prober keeps one connection per node and
port as it would on a real segment. No root needed.

    .venv/bin/python bench/gateway_probes.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

from portico_lbnode.prober import AGGREGATE_PATH, NodeTargets, Prober, ProbeSettings

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
ETAG = b"0123456789abcdef0123456789abcdef"  # the aggregate's validator, as the agent labels it


def _ok(body: bytes, etag: bytes = b"") -> bytes:
    tag = b'ETag: "%s"\r\n' % etag if etag else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + tag
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def node_address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def service_key(j: int) -> str:
    return f"bench/svc-{j}"


def aggregate_body(services: int) -> bytes:
    doc = {
        "node": "n",
        "rulesCurrent": True,
        "lastApplied": "2026-12-02T11:26:12Z",
        "services": {
            service_key(j): {
                "healthCheckNodePort": 30000 + j,
                "localEndpoints": {"IPv4": 1, "IPv6": 0},
            }
            for j in range(services)
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# the servers (child process)
# ---------------------------------------------------------------------------------------------
class _Http(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes]) -> None:
        # Full request targets first (``...?unless=<validator>``: the 304), then bare paths.
        self.answers = answers
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        assert self.transport is not None
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            target = self.buf[:end].split(b" ", 2)[1]
            self.buf = self.buf[end + 4 :]
            answer = self.answers.get(target) or self.answers.get(target.split(b"?", 1)[0])
            self.transport.write(answer or NOT_FOUND)


def _listen(addr: str, port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def _serve(
    nodes: int, service_ports: int, aggregate_services: int, not_modified: bool, ready: Connection
) -> None:
    """Per node address: the node port (aggregate when ``aggregate_services`` > 0, else 404
    there as kube-proxy answers) and ``service_ports`` per-Service /healthz ports.
    ``not_modified``: the aggregate carries a validator and a probe sending it gets a 304, as
    the node agent answers while nothing changed; else the full body every time (an older
    agent)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    healthz = {b"/healthz": _ok(b'{"localEndpoints":1}')}
    node_answers = dict(healthz)
    if aggregate_services:
        path = AGGREGATE_PATH.encode()
        body = aggregate_body(aggregate_services)
        node_answers[path] = _ok(body, ETAG if not_modified else b"")
        if not_modified:
            node_answers[path + b"?unless=" + ETAG] = (
                b'HTTP/1.1 304 Not Modified\r\nETag: "%s"\r\nContent-Length: 0\r\n\r\n' % ETAG
            )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports: list[int] = []
        sockets: list[tuple[socket.socket, dict[bytes, bytes]]] = []
        for k in range(1 + service_ports):  # the first port of each address is the node port
            first = _listen(node_address(0), 0)
            port = first.getsockname()[1]
            ports.append(port)
            answers = node_answers if k == 0 else healthz
            sockets.append((first, answers))
            sockets += [(_listen(node_address(i), port), answers) for i in range(1, nodes)]
        for sock, answers in sockets:
            await loop.create_server(lambda a=answers: _Http(a), sock=sock)  # type: ignore[misc]
        ready.send(ports)
        await loop.run_in_executor(None, ready.recv)  # until the parent says stop

    asyncio.run(main())


@contextlib.contextmanager
def servers(
    nodes: int, service_ports: int, aggregate_services: int, not_modified: bool
) -> Iterator[list[int]]:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    args = (nodes, service_ports, aggregate_services, not_modified, child)
    proc = ctx.Process(target=_serve, args=args)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the servers did not start")
        yield parent.recv()
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# ---------------------------------------------------------------------------------------------
# the prober (this process)
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    probes_per_s: float  # wall clock
    probes_per_cpu_s: float  # per second of this process's CPU time
    cpu: float  # this process's CPU use, fraction of one core
    errors: int  # probes that were not a 200
    first_all_s: float  # from set_targets until every target had a result
    results_per_s: float  # (node, Service) health results per second


def probe_counts(prober: Prober) -> tuple[float, float]:
    ok = bad = 0.0
    for metric in prober.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "portico_gateway_probes_total":
                if sample.labels["result"] in ("ok", "not_modified"):
                    ok += sample.value
                else:
                    bad += sample.value
    return ok, bad


async def drive(
    targets: dict[str, NodeTargets],
    settings: ProbeSettings,
    warmup: float,
    window: float,
    results_per_probe: int,
) -> Run:
    prober = Prober(settings, rng=random.Random(1))
    keys = [(n, k) for n, t in targets.items() for k in t.services]
    task = asyncio.create_task(prober.run())
    try:
        await asyncio.sleep(0.2)  # the client is made before the clock starts
        start = time.monotonic()
        prober.set_targets(targets)
        deadline = start + 20
        while any(prober.health(n, k) is None for n, k in keys):
            if time.monotonic() > deadline:
                raise RuntimeError("not every target got a result in 20 s")
            await asyncio.sleep(0.005)
        first_all = time.monotonic() - start
        await asyncio.sleep(warmup)
        ok0, bad0 = probe_counts(prober)
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = time.process_time(), time.monotonic()
        ok1, bad1 = probe_counts(prober)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    wall, cpu = t1 - t0, cpu1 - cpu0
    probes = ok1 + bad1 - ok0 - bad0
    return Run(
        probes_per_s=probes / wall,
        probes_per_cpu_s=probes / cpu if cpu else 0.0,
        cpu=cpu / wall,
        errors=int(bad1 - bad0),
        first_all_s=first_all,
        results_per_s=probes / wall * results_per_probe,
    )


def per_service_targets(nodes: int, ports: list[int], services: int) -> dict[str, NodeTargets]:
    """``services`` Local Services per node, spread over the per-Service ports."""
    svc_ports = ports[1:]
    return {
        f"n{i}": NodeTargets(
            node_address(i),
            {service_key(j): svc_ports[j % len(svc_ports)] for j in range(services)},
        )
        for i in range(nodes)
    }


def aggregate_targets(nodes: int, services: int) -> dict[str, NodeTargets]:
    return {
        f"n{i}": NodeTargets(node_address(i), {service_key(j): 30000 + j for j in range(services)})
        for i in range(nodes)
    }


def measure(
    nodes: int,
    services: int,
    aggregate: bool,
    interval: float,
    warmup: float,
    window: float,
    not_modified: bool = True,
) -> Run:
    service_ports = 0 if aggregate else services
    with servers(nodes, service_ports, services if aggregate else 0, not_modified) as ports:
        settings = ProbeSettings(
            interval=interval,
            timeout=2.0,
            node_port=ports[0],
            aggregate_recheck=3600,
            keepalive_per_node=1 + service_ports,
        )
        targets = (
            aggregate_targets(nodes, services)
            if aggregate
            else per_service_targets(nodes, ports, services)
        )
        per_probe = services if aggregate else 1
        return asyncio.run(drive(targets, settings, warmup, window, per_probe))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring window of each run")
    args = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    started = time.monotonic()
    w = args.seconds
    print(f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; prober on CPU 0")

    # 1. probes/s flat out: a tiny interval keeps every node's loop busy.
    print("\nthroughput (interval 1 ms: back to back, concurrency 64)")
    print(
        f"{'mode':<12}{'nodes':>6}{'svc/node':>9}{'probes/s':>10}{'/CPU-s':>9}{'cpu':>6}"
        f"{'results/s':>11}{'errors':>7}"
    )
    flat: dict[tuple[bool, int], Run] = {}
    for aggregate, nodes, services, not_modified in [
        (False, 50, 8, True),
        (True, 200, 10, True),
        (True, 200, 100, True),
        (True, 100, 1000, False),  # an agent without validators: the full body every time
        (True, 100, 1000, True),
    ]:
        r = measure(nodes, services, aggregate, 0.001, 0.5, w, not_modified)
        if not_modified:
            flat[(aggregate, services)] = r
        mode = ("aggregate" if not_modified else "agg-full") if aggregate else "per-service"
        print(
            f"{mode:<12}{nodes:>6}{services:>9}{r.probes_per_s:>10.0f}{r.probes_per_cpu_s:>9.0f}"
            f"{r.cpu:>6.2f}{r.results_per_s:>11.0f}{r.errors:>7}"
        )

    # 2. what one core serves at a 1 s interval, keeping 20 % of it spare; then run it.
    print("\nserved at a 1 s interval (capacity = 0.8 x the probes/s above), checked by a run")
    print(
        f"{'mode':<12}{'nodes':>6}{'svc/node':>9}{'nodes x svc':>12}{'wanted/s':>10}"
        f"{'probed/s':>10}{'kept up':>8}{'cpu':>6}{'first all':>10}{'errors':>7}"
    )
    per_svc_cap = 0.8 * flat[(False, 8)].probes_per_s
    ps_nodes = 50
    ps_services = max(1, int(per_svc_cap // ps_nodes))
    agg_cap = 0.8 * flat[(True, 100)].probes_per_s
    agg_nodes = max(1, min(4000, int(agg_cap)))
    for aggregate, nodes, services in [(False, ps_nodes, ps_services), (True, agg_nodes, 100)]:
        wanted = nodes * (1 if aggregate else services)
        r = measure(nodes, services, aggregate, 1.0, 1.5, max(w, 3.0))
        mode = "aggregate" if aggregate else "per-service"
        print(
            f"{mode:<12}{nodes:>6}{services:>9}{nodes * services:>12}{wanted:>10}"
            f"{r.probes_per_s:>10.0f}{r.probes_per_s / wanted:>8.0%}{r.cpu:>6.2f}"
            f"{r.first_all_s:>9.2f}s{r.errors:>7}"
        )
    print(
        f"\naggregate mode: one probe per node whatever its Services; per-Service mode: nodes x "
        f"Local Services <= {per_svc_cap:.0f} probes/s; agg-full: every answer in full, as an "
        f"agent without validators sends it (else 'not modified' while unchanged). "
        f"Took {time.monotonic() - started:.0f}s."
    )


if __name__ == "__main__":
    main()

"""The Lease elector against an in-memory API with real (short) timings: client-go's
semantics — one leader at a time, a leader stops acting by its renew deadline when the API is
too slow, a lapsed term always ends before a new one, a release hands over at once."""

from __future__ import annotations

import asyncio
import random
import time

from portico_operator.leader import LeaderElector

from .fake_kube import FakeClient, FakeKube

LEASE, DEADLINE, RETRY = 0.8, 0.5, 0.1


class Replica:
    def __init__(self, kube: FakeKube, name: str, latency: float = 0.001) -> None:
        self.client = FakeClient(kube, random.Random(name), max_latency=latency)
        self.changes: list[tuple[float, bool]] = []
        self.elector = LeaderElector(
            self.client,  # type: ignore[arg-type]
            "ns",
            "lease",
            name,
            lease_seconds=LEASE,
            renew_deadline=DEADLINE,
            retry_seconds=RETRY,
            on_change=lambda leading: self.changes.append((time.monotonic(), leading)),
        )
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def wait(pred, timeout: float = 3.0) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "timed out"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def test_one_leader_then_release_hands_over_at_once() -> None:
    async def go() -> None:
        kube = FakeKube()
        a = Replica(kube, "a")
        await wait(lambda: a.elector.valid())
        b = Replica(kube, "b")
        await asyncio.sleep(LEASE * 2)  # b never takes a Lease that is renewed
        assert a.elector.valid() and not b.elector.is_leader
        await a.stop()
        await a.elector.release()
        took = await wait(lambda: b.elector.valid())
        assert took < RETRY + 0.1, took  # woken by its watch, not by the lease expiring
        assert not a.elector.valid() and a.changes[-1][1] is False
        await b.stop()

    asyncio.run(go())


def test_killed_leader_is_replaced_after_the_lease_expires() -> None:
    async def go() -> None:
        kube = FakeKube()
        a = Replica(kube, "a")
        await wait(lambda: a.elector.valid())
        b = Replica(kube, "b")
        await asyncio.sleep(0.05)
        await a.stop()  # no release: killed
        took = await wait(lambda: b.elector.valid(), timeout=LEASE + 1)
        assert LEASE - RETRY * 2 < took < LEASE + RETRY * 3, took
        await b.stop()

    asyncio.run(go())


def test_a_slow_api_makes_the_leader_stop_by_its_deadline() -> None:
    async def go() -> None:
        kube = FakeKube()
        a = Replica(kube, "a")
        await wait(lambda: a.elector.valid())
        a.client.max_latency = 5.0  # every request now hangs far past the renew deadline
        a.client.rng = type("Slow", (), {"random": staticmethod(lambda: 1.0)})()
        t0 = time.monotonic()
        await wait(lambda: not a.elector.valid(), timeout=DEADLINE + 0.5)
        # valid() turns False at the deadline itself, the term ends in the loop right after
        assert time.monotonic() - t0 <= DEADLINE + 0.05
        await wait(lambda: a.changes[-1][1] is False, timeout=0.5)
        await a.stop()

    asyncio.run(go())


def test_a_lapsed_term_ends_even_if_the_lease_is_renewed_later() -> None:
    """A frozen leader that resumes and renews its own Lease starts a new term (the operator
    rebuilds its view), never continues the old one."""

    async def go() -> None:
        kube = FakeKube()
        a = Replica(kube, "a")
        await wait(lambda: a.elector.valid())
        a.client.max_latency = DEADLINE * 1.5
        a.client.rng = type("Slow", (), {"random": staticmethod(lambda: 1.0)})()
        await wait(lambda: a.changes[-1][1] is False, timeout=DEADLINE + 1)
        a.client.max_latency = 0.001
        await wait(lambda: a.changes[-1][1] is True, timeout=2)
        assert [c for _, c in a.changes] == [True, False, True]
        await a.stop()

    asyncio.run(go())

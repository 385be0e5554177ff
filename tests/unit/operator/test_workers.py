"""The workers' loop and its retry policy, with a reconcile that fails on purpose (no API)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

import pytest
from portico_common.kube import ApiError
from portico_operator.errors import NotLeading
from portico_operator.workers import CONFLICT_RETRY_SECONDS, retry_after, run_worker
from portico_operator.workqueue import WorkQueue


def test_retry_after() -> None:
    # conflicts twice at once, then backing off like every other error
    assert [retry_after(n, 409) for n in (1, 2, 3)] == [CONFLICT_RETRY_SECONDS] * 2 + [1]
    assert [retry_after(n, 500) for n in range(1, 9)] == [0.2, 0.5, 1, 2, 5, 10, 30, 30]
    assert retry_after(1, None) == 0.2


class Gauge:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, v: float) -> None:
        self.values.append(v)

    def observe(self, v: float) -> None:
        self.values.append(v)


class Counts(dict[str, int]):
    """``workers.Failures`` over a dict keyed "kind:key"."""

    def failed(self, kind: str, key: str) -> int:
        n = self[f"{kind}:{key}"] = self.get(f"{kind}:{key}", 0) + 1
        return n

    def succeeded(self, kind: str, key: str) -> None:
        self.pop(f"{kind}:{key}", None)


@dataclass
class Run:
    calls: list[float] = field(default_factory=list)  # when reconcile was called
    stepped_down: list[bool] = field(default_factory=list)
    failures: Counts = field(default_factory=Counts)


async def _run(outcomes: list[BaseException | None], leading: bool = True) -> Run:
    run = Run()
    calls, stepped_down, failures = run.calls, run.stepped_down, run.failures
    queue = WorkQueue()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    async def reconcile(key: str) -> None:
        calls.append(loop.time())
        outcome = outcomes[len(calls) - 1] if len(calls) <= len(outcomes) else None
        if len(calls) >= len(outcomes):
            done.set()
        if outcome is not None:
            raise outcome

    task = asyncio.create_task(
        run_worker(
            queue,
            reconcile,
            "service",
            leading=lambda: leading,
            step_down=lambda: stepped_down.append(True),
            failures=failures,
            depth=Gauge(),
            seconds=Gauge(),
        )
    )
    queue.add("ns/a")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 5 if leading else 0.3)
    await asyncio.sleep(0.05)
    task.cancel()
    return run


def test_conflicts_are_retried_at_once_and_success_clears_the_count() -> None:
    conflict = ApiError(409, '{"reason": "Conflict"}')
    r = asyncio.run(_run([conflict, conflict, None]))
    assert len(r.calls) == 3
    gaps = [b - a for a, b in itertools.pairwise(r.calls)]
    assert all(g < 0.19 for g in gaps)  # 50 ms each, not the 0.2 / 0.5 s backoff
    assert r.failures == {}


def test_an_expired_lease_steps_down_and_a_standby_does_nothing() -> None:
    r = asyncio.run(_run([NotLeading("patch")]))
    assert r.stepped_down == [True]
    assert r.failures == {}  # not a failure of the key: the next term starts afresh
    idle = asyncio.run(_run([None], leading=False))
    assert idle.calls == []


@pytest.mark.parametrize("error", [ApiError(500, "boom"), RuntimeError("bug")])
def test_other_errors_count_and_back_off(error: BaseException) -> None:
    r = asyncio.run(_run([error]))
    assert r.failures == {"service:ns/a": 1}

"""The NodeRules writer's token bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_operator.writebudget import WriteBudget


def test_a_burst_goes_at_once_then_one_per_interval() -> None:
    b = WriteBudget(0.05, 2)
    assert b.spend(10.0) == 0.0  # a new Service's entry
    assert b.spend(10.005) == pytest.approx(0.045)  # its endpoints: at once, then a wait
    assert b.spend(10.05) == pytest.approx(0.05)  # rollout churn: one per interval
    assert b.spend(10.1) == pytest.approx(0.05)
    assert b.spend(11.0) == 0.0  # after a quiet second, a burst again
    assert b.spend(11.0) == pytest.approx(0.05)


def test_full_after_a_quiet_spell_only() -> None:
    b = WriteBudget(0.05, 2)
    assert b.full(0.0)
    b.spend(1.0)
    assert not b.full(1.01)
    assert b.full(1.05)  # one interval later the spent write is back


def test_without_a_burst_every_write_waits_the_interval() -> None:
    b = WriteBudget(0.05, 1)
    assert b.spend(0.0) == pytest.approx(0.05)
    assert b.spend(5.0) == pytest.approx(0.05)


@given(st.lists(st.floats(0.0, 0.2), min_size=1, max_size=60))
def test_writes_that_wait_as_told_never_exceed_burst_plus_rate(gaps: list[float]) -> None:
    """Whatever the changes' timing, a writer that waits as told writes at most
    burst + elapsed / interval times."""
    b, now = WriteBudget(0.05, 2), 100.0
    start = now
    for writes, gap in enumerate(gaps, 1):
        now += gap
        now += b.spend(now)
        assert writes <= 2 + (now - start) / 0.05 + 1e-9

"""The gateway writes a status only once the pass that programs its change has ended."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_lbnode.statusqueue import StatusQueue


def test_a_change_is_written_after_its_pass_not_before() -> None:
    q = StatusQueue()
    q.mark(["ns/a"])
    assert q.take() == [] and not q.writable("ns/a")
    q.begin_pass()
    assert q.take() == [] and not q.writable("ns/a")  # the pass under way has not programmed it
    q.end_pass()
    assert q.writable("ns/a")
    assert q.take() == ["ns/a"]
    assert q.take() == []  # once


def test_a_ready_key_changed_again_waits_for_the_next_pass() -> None:
    # The gap the lab caught: node-3 marked out by a probe while an earlier change of the same
    # Service waited for its writer; the write would have said "node-3 out" with node-3 still in
    # the table, and a client connecting at once reached node-3.
    q = StatusQueue()
    q.mark(["ns/a", "ns/b"])
    q.begin_pass()
    q.end_pass()
    q.mark(["ns/a"])  # the new health, not yet programmed
    assert not q.writable("ns/a")
    assert q.take() == ["ns/b"]
    q.begin_pass()
    assert q.take() == []
    q.end_pass()
    assert q.take() == ["ns/a"]


def test_a_change_during_a_pass_waits_for_the_pass_after() -> None:
    q = StatusQueue()
    q.mark(["ns/a"])
    q.begin_pass()
    q.mark(["ns/a"])  # came while the pass ran: that pass did not see it
    q.end_pass()
    assert q.take() == [] and not q.writable("ns/a")
    q.begin_pass()
    q.end_pass()
    assert q.take() == ["ns/a"]


def test_statuses_a_pass_flipped_are_written_with_it() -> None:
    q = StatusQueue()
    q.begin_pass()
    q.end_pass(["ns/announced"])
    assert q.take() == ["ns/announced"]


def test_a_failed_pass_keeps_its_keys_for_the_retry() -> None:
    q = StatusQueue()
    q.mark(["ns/a"])
    q.begin_pass()
    q.pass_failed()
    assert q.take() == [] and not q.writable("ns/a")
    q.begin_pass()
    q.end_pass()
    assert q.take() == ["ns/a"]


def test_a_failed_write_is_retried_unless_a_change_came_since() -> None:
    q = StatusQueue()
    q.mark(["ns/a", "ns/b"])
    q.begin_pass()
    q.end_pass()
    assert q.take() == ["ns/a", "ns/b"]
    q.retry("ns/a")
    q.mark(["ns/b"])
    q.retry("ns/b")  # its pass brings it back
    assert q.take() == ["ns/a"]
    q.begin_pass()
    q.end_pass()
    assert q.take() == ["ns/b"]


def test_a_dropped_key_is_never_written() -> None:
    q = StatusQueue()
    q.mark(["ns/a"])
    q.begin_pass()
    q.drop("ns/a")
    q.end_pass()
    assert q.take() == []
    q.mark(["ns/b"])
    q.begin_pass()
    q.end_pass()
    q.drop("ns/b")
    assert q.take() == []


def test_keys_a_round_could_not_reach_come_first_in_the_next() -> None:
    """Changes faster than a round of writes (a neighbour verdict flapping marks every
    Service while 1,000 statuses go out 8 at a time): each round writes a few before every
    key is marked again and the rest are skipped. The skipped ones come first next time, so
    every key is written within a few rounds (in sorted order, the same last ones never were)."""
    keys = [f"ns/{i:02}" for i in range(20)]
    q = StatusQueue()
    q.mark(keys)
    written: set[str] = set()
    for _ in range(5):
        q.begin_pass()
        q.end_pass()
        for key in q.take()[:4]:  # what a round reaches before the next change
            q.written(key)
            written.add(key)
        q.mark(keys)
    assert written == set(keys)


def test_a_key_ready_again_while_its_write_ran_is_taken_again() -> None:
    q = StatusQueue()
    q.mark(["ns/a"])
    q.begin_pass()
    q.end_pass()
    assert q.take() == ["ns/a"]
    q.begin_pass()
    q.end_pass(["ns/a"])  # its announcement flipped while the write ran
    q.written("ns/a")
    assert q.take() == ["ns/a"]


_STEPS = st.lists(
    st.sampled_from(
        [
            ("mark", "ns/a"),
            ("mark", "ns/b"),
            ("begin", None),
            ("end", None),
            ("fail", None),
            ("take", None),
        ]
    ),
    max_size=40,
)


@settings(max_examples=500)
@given(_STEPS)
def test_nothing_is_written_with_an_unprogrammed_change_and_nothing_is_lost(
    steps: list[tuple[str, str | None]],
) -> None:
    """A model of the gateway: ``programmed`` is what the last ended pass put in the kernel,
    ``view`` the newest change. Every key taken has ``view == programmed``, and after a quiet
    pass every changed key has been taken."""
    q = StatusQueue()
    view: dict[str, int] = {}
    programmed: dict[str, int] = {}
    in_pass: dict[str, int] | None = None
    written: dict[str, int] = {}

    def take() -> None:
        for k in q.take():
            assert view.get(k, 0) == programmed.get(k, 0), (k, view, programmed)
            written[k] = view.get(k, 0)
            q.written(k)

    for op, key in steps:
        if op == "mark" and key is not None:
            view[key] = view.get(key, 0) + 1
            q.mark([key])
        elif op == "begin" and in_pass is None:
            q.begin_pass()
            in_pass = dict(view)
        elif op == "end" and in_pass is not None:
            programmed = in_pass
            q.end_pass()
            in_pass = None
        elif op == "fail" and in_pass is not None:
            q.pass_failed()
            in_pass = None
        elif op == "take":
            take()
    if in_pass is not None:
        programmed = in_pass
        q.end_pass()
    q.begin_pass()
    programmed = dict(view)
    q.end_pass()
    take()
    assert all(written.get(k) == v for k, v in view.items()), (written, view)

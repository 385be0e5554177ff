"""What a leadership term remembers of each Service (operator/portico_operator/term.py): one
record per Service, forgotten in one step, and the workers' failure counts kept in it."""

from __future__ import annotations

from portico_operator import decisions
from portico_operator.ipam import Allocator
from portico_operator.term import ServiceState, Term
from portico_operator.workers import Failures


def test_forgetting_a_service_forgets_everything_the_leader_remembered_of_it() -> None:
    term = Term(Allocator())
    st = term.state("ns/a")
    st.outcome = decisions.failed("DSR", "PoolExhausted", "no address left")
    st.reported = "PoolExhausted:no address left"
    st.node_ports_reported = True
    st.received = 1.0
    term.failed("service", "ns/a")
    assert term.outcome("ns/a") is not None and term.state("ns/a") is st
    term.forget("ns/a")
    assert term.outcome("ns/a") is None
    assert term.state("ns/a") == ServiceState()  # a new Service, as far as the term knows
    assert term.failed("service", "ns/a") == 1


def test_failures_count_per_worker_and_success_leaves_nothing_behind() -> None:
    term: Failures = Term(Allocator())
    assert [term.failed("service", "ns/a") for _ in range(3)] == [1, 2, 3]
    assert term.failed("publish", "ns/a") == 1
    term.succeeded("service", "ns/a")
    assert term.failed("service", "ns/a") == 1  # counted afresh
    assert isinstance(term, Term)
    term.succeeded("service", "ns/a")
    term.succeeded("publish", "ns/a")
    assert "ns/a" not in term.states  # a Service forgotten while it failed leaves no record
    term.state("ns/b").outcome = decisions.failed("DSR", "r", "m")
    term.failed("publish", "ns/b")
    term.succeeded("publish", "ns/b")
    assert term.outcome("ns/b") is not None  # a record with more in it stays
    term.succeeded("service", "ns/gone")  # nothing to clear: nothing made
    assert "ns/gone" not in term.states


def test_a_term_starts_with_its_own_queues_and_withdrawals() -> None:
    alloc = Allocator()
    one, two = Term(alloc), Term(alloc)
    assert one.withdrawals.alloc is alloc
    assert one.queue is not two.queue and one.publish is not two.publish
    assert one.dirty_pools  # a new term writes the pools' status once

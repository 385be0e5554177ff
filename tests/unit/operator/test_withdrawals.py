"""The withdrawal bookkeeping, without an API or an event loop
(operator/portico_operator/withdrawals.py): an address a Service gave up stays out of its pool
until no CR carries it, a publish in flight finishes the withdrawals it may overwrite, and every
release names the Services waiting for an address."""

from __future__ import annotations

import ipaddress

import pytest
from portico_operator.ipam import AllocationError, Allocator, Claim
from portico_operator.pools import parse_pool
from portico_operator.withdrawals import NOTHING, Released, Withdrawals

X, Y = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")


def setup(*addresses: str) -> tuple[Allocator, Withdrawals]:
    alloc = Allocator()
    alloc.set_pools([parse_pool("p", {"addresses": list(addresses or ["10.0.0.1/32"])})])
    return alloc, Withdrawals(alloc)


def test_a_withdrawn_address_stays_out_of_the_pool_until_finished() -> None:
    alloc, w = setup()
    assert alloc.assign(Claim("ns/a")).ips == (X,)
    assert w.withdraw("ns/a") == (X,)
    assert alloc.holds("ns/a") == () and w.holding("ns/a")
    with pytest.raises(AllocationError):
        alloc.assign(Claim("ns/b"))  # the CR of ns/a may still announce it
    w.unmet("ns/b")
    released = w.finish("ns/a")
    assert released == Released(gone=(X,), freed=(X,), retry=("ns/b",))
    assert not w.holding("ns/a")
    assert alloc.assign(Claim("ns/b")).ips == (X,)
    assert w.finish("ns/a") == NOTHING and not NOTHING  # nothing left: nothing to report


def test_what_the_cr_still_announces_stays_held() -> None:
    alloc, w = setup("10.0.0.1-10.0.0.2")
    alloc.assign(Claim("ns/a"))
    alloc.assign(Claim("ns/a", requested=(Y,)))  # moved: X is given up, Y held
    assert alloc.withdrawing("ns/a") == (X,)
    assert w.published("ns/a", (X, Y)) == NOTHING  # the CR still carries X
    assert w.holding("ns/a")
    released = w.published("ns/a", (Y,))
    assert released.gone == (X,) and released.freed == (X,)
    assert alloc.holds("ns/a") == (Y,) and not w.holding("ns/a")


def test_of_two_given_up_only_the_one_no_longer_announced_is_released() -> None:
    alloc, w = setup("10.0.0.1-10.0.0.3")
    z = ipaddress.ip_address("10.0.0.3")
    alloc.assign(Claim("ns/a"))
    alloc.assign(Claim("ns/a", requested=(Y,)))
    alloc.assign(Claim("ns/a", requested=(z,)))  # X and Y given up; the CR was at Y
    assert set(alloc.withdrawing("ns/a")) == {X, Y}
    released = w.published("ns/a", (Y,))
    assert released.gone == (X,) and released.freed == (X,)
    assert alloc.withdrawing("ns/a") == (Y,)
    with pytest.raises(AllocationError):
        alloc.assign(Claim("ns/b", requested=(Y,)))  # still announced: not free


def test_a_release_retries_the_waiting_services_in_the_order_they_began_to_wait() -> None:
    alloc, w = setup()
    alloc.assign(Claim("ns/a"))
    for key in ("ns/c", "ns/b", "ns/c"):
        w.unmet(key)
    assert w.waiting() == ["ns/c", "ns/b"]
    w.withdraw("ns/a")
    assert w.finish("ns/a").retry == ("ns/c", "ns/b")
    w.met("ns/c")  # it got its address
    w.withdraw("ns/b")  # deleted while it waited
    assert w.waiting() == []


def test_nothing_released_retries_nobody() -> None:
    alloc, w = setup()
    w.unmet("ns/b")
    assert w.finish("ns/a") == NOTHING  # never held anything
    alloc.assign(Claim("ns/a"))
    assert w.finish("ns/a") == NOTHING  # holds it, gave nothing up
    assert alloc.holds("ns/a") == (X,)


def test_an_unmet_request_gives_up_what_it_held_and_waits() -> None:
    alloc, w = setup()
    alloc.assign(Claim("ns/a"))
    w.unmet("ns/a")
    assert alloc.holds("ns/a") == () and alloc.withdrawing("ns/a") == (X,)
    assert w.waiting() == ["ns/a"]
    # Its CR is rewritten without the address: it is free, and ns/a itself is retried.
    assert w.published("ns/a") == Released((X,), (X,), ("ns/a",))


def test_a_shared_address_goes_back_to_the_pool_with_its_last_holder() -> None:
    alloc, w = setup()
    alloc.assign(Claim("ns/a", sharing_key="k", ports=frozenset({("TCP", 80)})))
    alloc.assign(Claim("ns/b", sharing_key="k", ports=frozenset({("TCP", 443)})))
    w.unmet("ns/c")
    w.withdraw("ns/a")
    released = w.finish("ns/a")
    # ns/b still holds it: nothing is freed, yet ns/c is retried (ns/a's ports are gone).
    assert released.gone == (X,) and released.freed == () and released.retry == ("ns/c",)
    assert released  # still news: the pools' status is written again
    assert alloc.holds("ns/b") == (X,)


def test_a_publish_in_flight_finishes_the_withdrawal_itself() -> None:
    alloc, w = setup()
    alloc.assign(Claim("ns/a"))
    w.withdraw("ns/a")
    assert w.finish_unless_publishing("ns/a", publishing=True) == NOTHING
    assert w.deferred("ns/a") and w.holding("ns/a")  # the publish may still write X
    assert w.finish("ns/a").gone == (X,)  # the CR went (deleted by hand): it ends anyway
    assert w.deferred("ns/a")  # ... and the publish still owes its end: a no-op now
    assert w.published("ns/a") == NOTHING and not w.deferred("ns/a")


def test_a_deferred_withdrawal_ends_when_the_publish_does() -> None:
    alloc, w = setup()
    alloc.assign(Claim("ns/a"))
    w.withdraw("ns/a")
    w.finish_unless_publishing("ns/a", publishing=True)
    assert w.published("ns/a").freed == (X,)
    assert not w.deferred("ns/a") and not w.holding("ns/a")
    # Without a publish in flight, the withdrawal ends at once.
    alloc.assign(Claim("ns/b"))
    w.withdraw("ns/b")
    assert w.finish_unless_publishing("ns/b", publishing=False).freed == (X,)
    assert not w.deferred("ns/b")

"""What the operator decides for one Service, as pure functions of what it knows: which step a
reconcile takes, what a Service keeps when part of its input is bad, which forwarding mode is in
force, and the outcome each step records for stage two (the CR). ``allocating`` (stage one)
only reads the caches, calls these and writes what they say. No I/O, no clock: tested in
``tests/unit/operator/test_decisions.py`` without an API.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .service import ServiceView


class Outcome(NamedTuple):
    """The last allocation result of a Service, for stage two (the CR)."""

    vips: tuple[Any, ...]
    pool: str | None
    mode: str
    allocated: bool
    reason: str
    message: str
    input_error: str | None = None


class Step(enum.Enum):
    FORGET = "forget"  # the Service is gone: release what it held once its CR is gone
    WITHDRAW = "withdraw"  # deleting, or no longer ours: clear what we wrote, then release
    ALLOCATE = "allocate"  # check its input, then assign (or keep) its addresses


def reconcile_step(view: ServiceView | None, load_balancer_class: str) -> Step:
    if view is None:
        return Step.FORGET
    if not view.served_by(load_balancer_class) or view.deleting:
        return Step.WITHDRAW
    return Step.ALLOCATE


def allocation_message(vips: Sequence[Any], pools: Sequence[str], warnings: Iterable[str]) -> str:
    message = f"{', '.join(map(str, vips))} from VIPPool {', '.join(pools)}"
    notes = list(warnings)
    if notes:
        message += "; " + "; ".join(notes)
    return message


def allocated(vips: Sequence[Any], pools: Sequence[str], mode: str, message: str) -> Outcome:
    return Outcome(tuple(vips), pools[0] if pools else None, mode, True, "Allocated", message)


def kept_on_bad_input(
    shown: Sequence[Any],
    held: Iterable[Any],
    last: Outcome | None,
    mode_in_force: str,
    error: str,
    pool_of: Any,
) -> Outcome | None:
    """A Service whose input went bad keeps the addresses its status shows and that it still
    holds, and its last valid configuration; None when it has none to keep (it waits, as any
    unmet request). A pick whose status write never landed is not the Service's."""
    held_set = set(held)
    vips = tuple(ip for ip in shown if ip in held_set)
    if not vips:
        return None
    mode = last.mode if last is not None else mode_in_force
    message = (
        last.message if last is not None and last.allocated else f"{', '.join(map(str, vips))} kept"
    )
    pool = last.pool if last is not None else pool_of(vips[0])
    return Outcome(vips, pool, mode, True, "Allocated", message, error)


def failed(mode: str, reason: str, message: str, input_error: str | None = None) -> Outcome:
    return Outcome((), None, mode, False, reason, message, input_error)


def mode_in_force(lb_spec: Mapping[str, Any] | None, ingress: Iterable[Mapping[str, Any]]) -> str:
    """The forwarding mode the data plane runs now: the CR's, or else what the ingress says
    (``ipMode: Proxy`` on every entry is NAT). A bad annotation must not switch it."""
    mode = (lb_spec or {}).get("forwardingMode")
    if mode in ("DSR", "NAT"):
        return str(mode)
    modes = {e.get("ipMode") for e in ingress}
    return "NAT" if modes == {"Proxy"} else "DSR"


def withdrawal_status(
    conditions: Sequence[Mapping[str, Any]], ours: Iterable[str]
) -> dict[str, Any]:
    """The Service status that withdraws us: no ingress, and only the conditions others wrote."""
    mine = set(ours)
    return {
        "loadBalancer": {"ingress": []},
        "conditions": [c for c in conditions if c.get("type") not in mine],
    }


def reason_changed(last: str | None, reason: str, message: str) -> bool:
    """Whether an Event is due: once per distinct reason and message, not per retry."""
    return last != f"{reason}:{message}"

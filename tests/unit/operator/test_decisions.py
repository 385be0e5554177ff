"""The operator's per-Service decisions, without an API (operator/portico_operator/decisions.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from portico_operator import decisions as D
from portico_operator.service import parse_service

CLASS = "portico.dev/lb"
A, B, C = (ipaddress.ip_address(f"198.18.32.{i}") for i in (1, 2, 3))


def service(**kw: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "shop", "uid": "u1"}
    meta.update(kw.pop("meta", {}))
    return {
        "metadata": meta,
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], **kw},
        "status": {},
    }


def test_reconcile_steps() -> None:
    assert D.reconcile_step(None, CLASS) is D.Step.FORGET
    assert D.reconcile_step(parse_service(service()), CLASS) is D.Step.ALLOCATE
    gone = parse_service(service(meta={"deletionTimestamp": "2026-12-03T08:00:00Z"}))
    assert D.reconcile_step(gone, CLASS) is D.Step.WITHDRAW
    assert D.reconcile_step(parse_service(service(type="ClusterIP")), CLASS) is D.Step.WITHDRAW
    other = parse_service(service(loadBalancerClass="other/lb"))
    assert D.reconcile_step(other, CLASS) is D.Step.WITHDRAW


def test_bad_input_keeps_only_what_the_status_shows_and_is_still_held() -> None:
    last = D.allocated((A, B), ["lan"], "NAT", "198.18.32.1, 198.18.32.2 from VIPPool lan")
    # B was a pick whose status write never landed: shown is A only.
    kept = D.kept_on_bad_input((A,), {A, B}, last, "DSR", "bad annotation", lambda ip: "x")
    assert kept is not None
    assert kept.vips == (A,)
    assert kept.mode == "NAT", "the last valid mode stays in force"
    assert kept.message == last.message and kept.pool == "lan"
    assert kept.allocated and kept.input_error == "bad annotation"
    # Shown but no longer held (released meanwhile): nothing to keep, the Service waits.
    assert D.kept_on_bad_input((C,), {A}, last, "DSR", "bad", lambda ip: "x") is None
    # No earlier outcome (a restart): the mode in force and the pool of the address.
    fresh = D.kept_on_bad_input((A,), {A}, None, "DSR", "bad", lambda ip: f"pool-of-{ip}")
    assert fresh is not None
    assert (fresh.mode, fresh.pool, fresh.message) == (
        "DSR",
        "pool-of-198.18.32.1",
        "198.18.32.1 kept",
    )


def test_the_mode_in_force_comes_from_the_cr_then_the_ingress() -> None:
    assert D.mode_in_force({"forwardingMode": "NAT"}, [{"ipMode": "VIP"}]) == "NAT"
    assert D.mode_in_force(None, [{"ipMode": "Proxy"}, {"ipMode": "Proxy"}]) == "NAT"
    assert D.mode_in_force({}, [{"ipMode": "Proxy"}, {"ipMode": "VIP"}]) == "DSR"
    assert D.mode_in_force({"forwardingMode": "bogus"}, []) == "DSR"


def test_messages_and_outcomes() -> None:
    msg = D.allocation_message([A, B], ["a", "b"], ["shared with shop/api"])
    assert msg == "198.18.32.1, 198.18.32.2 from VIPPool a, b; shared with shop/api"
    assert D.allocated([A], [], "DSR", msg).pool is None
    f = D.failed("DSR", "PoolExhausted", "no free address", None)
    assert f.vips == () and not f.allocated and f.reason == "PoolExhausted"


def test_withdrawal_clears_only_our_conditions() -> None:
    conds = [{"type": "portico.dev/Allocated"}, {"type": "other.io/Ready"}]
    body = D.withdrawal_status(conds, ["portico.dev/Allocated", "portico.dev/Valid"])
    assert body == {"loadBalancer": {"ingress": []}, "conditions": [{"type": "other.io/Ready"}]}


def test_an_event_is_due_once_per_reason_and_message() -> None:
    assert D.reason_changed(None, "PoolExhausted", "no free address")
    assert not D.reason_changed("PoolExhausted:no free address", "PoolExhausted", "no free address")
    assert D.reason_changed("PoolExhausted:no free address", "PoolExhausted", "pool a is full")

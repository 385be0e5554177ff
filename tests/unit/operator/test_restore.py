"""What a new leader restores (pure), and how a cache converges to a fresh listing (pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

from portico_operator.pools import parse_pool
from portico_operator.restore import build_allocator
from portico_operator.resync import plan_resync, rv_newer
from portico_operator.service import parse_service

CLS = "portico.dev/lb"
POOLS = [parse_pool("p", {"addresses": ["10.0.0.0/29"]})]


def svc(name: str, ips: list[str], created: str, **ann: str) -> Any:
    return parse_service(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "creationTimestamp": created,
                "annotations": ann,
            },
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
        }
    )


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def test_restores_holes_as_they_are_not_renumbered():
    alloc = build_allocator(
        POOLS, [svc("b", ["10.0.0.3"], "2"), svc("a", ["10.0.0.1"], "1")], {}, {}, CLS
    )
    assert alloc.holds("ns/a") == (ip("10.0.0.1"),)
    assert alloc.holds("ns/b") == (ip("10.0.0.3"),)


def test_a_typo_does_not_cost_the_restored_address():
    alloc = build_allocator(
        POOLS,
        [svc("a", ["10.0.0.1"], "1", **{"portico.dev/forwarding-mode": "dsrr"})],
        {},
        {},
        CLS,
    )
    assert alloc.holds("ns/a") == (ip("10.0.0.1"),)


def test_the_older_of_two_claimants_keeps_the_address():
    alloc = build_allocator(
        POOLS, [svc("new", ["10.0.0.1"], "2"), svc("old", ["10.0.0.1"], "1")], {}, {}, CLS
    )
    assert alloc.holders(ip("10.0.0.1")) == ["ns/old"]


def test_an_address_still_on_a_cr_stays_out_of_the_pool():
    lbs = {"ns/gone": {"spec": {"vips": ["10.0.0.0"]}}, "ns/a": {"spec": {"vips": ["10.0.0.2"]}}}
    alloc = build_allocator(POOLS, [svc("a", ["10.0.0.1"], "1")], lbs, {}, CLS)
    assert alloc.withdrawing("ns/gone") == (ip("10.0.0.0"),)
    assert alloc.withdrawing("ns/a") == (ip("10.0.0.2"),)
    assert alloc.finish_withdrawal("ns/a", ()) == (ip("10.0.0.2"),)


def test_other_classes_restore_nothing():
    other = parse_service(
        {
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "other"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
        }
    )
    assert build_allocator(POOLS, [other], {}, {}, CLS).holdings == {}


def test_resync_takes_what_the_watch_missed_and_drops_what_vanished():
    stamps = {"a": 1, "b": 2, "c": 5, "gone-late": 6}
    versions = {"a": "10", "b": "11", "c": "15"}  # gone-late: a tombstone
    listed = {"a": "10", "b": "12", "d": "13", "gone-late": "9"}
    take, drop = plan_resync(stamps, versions, listed, since=4)
    # b changed unseen, d was created unseen; gone-late was deleted after the listing began
    assert take == ["b", "d"]
    # c is not listed, but the watch touched it after the listing began: it is newer
    assert drop == []
    take, drop = plan_resync({"a": 1, "c": 2}, {"a": "1", "c": "2"}, {"a": "1"}, since=4)
    assert (take, drop) == ([], ["c"])


def test_resource_versions_compare_as_revisions():
    assert rv_newer("12", "9") and not rv_newer("9", "12") and rv_newer("x", "1")

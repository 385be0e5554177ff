"""The gateway's per-VIP forwarding counters: their names, where the table counts into them,
that re-renders, diffs and replaces keep them, and the values carried across a new kernel
object (``vipstats``); the scrape-time collector on a made-up listing (``vipmetrics``)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from portico_lbnode.fwddiff import diff_fwd, parse_listing
from portico_lbnode.fwdrules import FwdPort, render_fwd, service_chain
from portico_lbnode.vipmetrics import VipCounters
from portico_lbnode.vipstats import (
    CarriedTotals,
    Reading,
    Totals,
    counter_name,
    readings,
    vip_of_counter,
)
from prometheus_client import CollectorRegistry

from .test_fwdrules import load, replace

ip = ipaddress.ip_address
A, B, C = (ip(f"198.18.220.{i}") for i in (11, 12, 13))
A6 = ip("fd00:220::11")
VIP, OTHER, VIP6 = ip("198.18.221.10"), ip("198.18.221.11"), ip("fd00:221::10")
W = {"family": "netdev", "table": "portico-gw"}


def port(
    vip: Any = VIP,
    protocol: str = "TCP",
    number: int = 80,
    slots: tuple[Any, ...] = (A, B, C),
    service: str = "ns/web",
    **kw: Any,
) -> FwdPort:
    return FwdPort(service, vip, protocol, number, False, (), slots, **kw)


def rules_of(rules: Any, chain: str) -> list[Any]:
    return [json.loads(r) for r in rules.rules[chain]]


# -- names ------------------------------------------------------------------------------------
def test_a_counter_name_is_an_nft_identifier_that_gives_its_vip_back() -> None:
    assert counter_name(VIP) == "forwarded-198.18.221.10"
    assert counter_name(VIP6) == "forwarded-fd00_221__10"
    for vip in (VIP, VIP6):
        assert vip_of_counter(counter_name(vip)) == vip
    assert vip_of_counter("forwarded-nonsense") is None
    assert vip_of_counter("other-198.18.221.10") is None


# -- the render -------------------------------------------------------------------------------
def test_every_vip_has_one_counter_whatever_its_ports_and_health() -> None:
    ports = [
        port(),
        port(protocol="UDP", number=53),
        port(OTHER, slots=()),  # no healthy node: still its counter (a flap keeps it)
        port(VIP6, slots=(A6, A6, A6)),
    ]
    r = render_fwd(ports, ["eth0"], 3)
    assert r.counters == {counter_name(v) for v in (VIP, OTHER, VIP6)}
    assert r.counts()["counters"] == 3


def test_a_port_counts_into_its_vip_where_every_later_packet_is_forwarded() -> None:
    count = {"counter": counter_name(VIP)}
    served = port(protocol="UDP", number=53)
    r = render_fwd([served, port(OTHER, slots=())], ["eth0"], 3)
    assert rules_of(r, service_chain(served))[0] == [count]  # before the pinned and new paths
    # no node at all: nothing is forwarded, nothing counted
    assert rules_of(r, service_chain(port(OTHER, slots=()))) == [[{"drop": None}]]
    # draining nodes only: the pinned flows alone are counted
    draining = port(slots=(), established=(A,))
    rules = rules_of(render_fwd([draining], ["eth0"], 3), service_chain(draining))
    assert [s for s in rules[0] if "counter" in s] == [count]
    assert any("flows4-tcp" in json.dumps(s) for s in rules[0])  # after the flow lookup
    assert rules[-1] == [{"drop": None}]
    # NAT mode: counted as it is handed to the IP stack
    nat = port(slots=(), to_stack=True)
    assert rules_of(render_fwd([nat], ["eth0"], 3), service_chain(nat)) == [
        [count, {"accept": None}]
    ]


# -- kept across changes ----------------------------------------------------------------------
def test_a_diff_touches_a_counter_only_when_its_vip_comes_or_goes() -> None:
    old = render_fwd([port(), port(OTHER)], ["eth0"], 3)
    # a node leaves, a port is added: the VIPs stay, their counters are not in the diff
    new = render_fwd(
        [port(slots=(A, A, B)), port(protocol="UDP", number=53), port(OTHER)],
        ["eth0"],
        3,
        previous=old,
    )
    assert not any("counter" in next(iter(c.values())) for c in diff_fwd(old, new))
    gone = render_fwd([port()], ["eth0"], 3, previous=new)
    cmds = diff_fwd(new, gone)
    assert [c for c in cmds if "counter" in next(iter(c.values()))] == [
        {"delete": {"counter": {**W, "name": counter_name(OTHER)}}}
    ]
    m = load(new)
    m.run(cmds)  # the fake kernel refuses a counter deleted while a rule counts into it
    assert parse_listing(m.listing()).same_as(gone)
    back = render_fwd([port(), port(OTHER)], ["eth0"], 3, previous=gone)
    assert {"add": {"counter": {**W, "name": counter_name(OTHER)}}} in diff_fwd(gone, back)


def test_a_replace_adds_counters_never_flushes_them_and_deletes_the_unwanted() -> None:
    current = render_fwd([port(), port(OTHER)], ["eth0"], 3)
    new = render_fwd([port()], ["eth0"], 3)
    cmds = new.to_json_replace(current)["nftables"]
    on_counters = [c for c in cmds if "counter" in next(iter(c.values()))]
    assert on_counters == [
        {"delete": {"counter": {**W, "name": counter_name(OTHER)}}},
        {"add": {"counter": {**W, "name": counter_name(VIP)}}},
    ]
    m = load(current)
    replace(m, new, current)
    assert parse_listing(m.listing()).same_as(new)


def test_the_kernel_listing_reads_counters_back() -> None:
    r = render_fwd([port(), port(VIP6, slots=(A6, A6, A6))], ["eth0"], 3)
    back = parse_listing(load(r).listing())
    assert back.counters == r.counters
    back.counters.discard(counter_name(VIP6))
    assert not back.same_as(r)  # a counter deleted behind our back is a difference (verify)


# -- values carried across a new kernel object ------------------------------------------------
def listing(*counters: tuple[str, int, int, int]) -> dict[str, Any]:
    return {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            *(
                {"counter": {**W, "name": n, "handle": h, "packets": p, "bytes": b}}
                for n, h, p, b in counters
            ),
            {"counter": {**W, "name": "someone-elses", "handle": 99, "packets": 5, "bytes": 5}},
        ]
    }


def test_readings_take_the_vip_counters_of_a_listing() -> None:
    got = readings(listing((counter_name(VIP), 4, 10, 1000), (counter_name(VIP6), 5, 1, 80)))
    assert got == {VIP: Reading(4, 10, 1000), VIP6: Reading(5, 1, 80)}
    assert readings(None) == {}


def test_totals_carry_what_a_recreated_object_had_counted() -> None:
    t = CarriedTotals()
    assert t.update({VIP: Reading(4, 10, 1000)}) == {VIP: Totals(10, 1000)}
    assert t.update({VIP: Reading(4, 15, 1500)}) == {VIP: Totals(15, 1500)}
    # the VIP left the table: its last totals stay
    assert t.update({}) == {VIP: Totals(15, 1500)}
    # it came back in a new object (another handle), already past the old values
    assert t.update({VIP: Reading(9, 20, 2000)}) == {VIP: Totals(35, 3500)}
    # a new table that reused the handle: known by the values going down
    assert t.update({VIP: Reading(9, 3, 300)}) == {VIP: Totals(38, 3800)}
    assert t.update({VIP: Reading(9, 4, 400), OTHER: Reading(1, 1, 1)}) == {
        VIP: Totals(39, 3900),
        OTHER: Totals(1, 1),
    }


# -- the collector ----------------------------------------------------------------------------
class FakeKernel:
    def __init__(self) -> None:
        self.counters: list[tuple[str, int, int, int]] = []
        self.now = 0.0

    def listing(self) -> dict[str, Any]:
        return listing(*self.counters)


def samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["vip"]: s.value for m in registry.collect() for s in m.samples if s.name == name
    }


def test_a_scrape_lists_once_caches_for_a_second_and_never_goes_down() -> None:
    k = FakeKernel()
    registry = CollectorRegistry()
    c = VipCounters(registry, listing=k.listing, clock=lambda: k.now)
    assert c.listings == 0  # registering lists nothing
    k.counters = [(counter_name(VIP), 4, 10, 1000), (counter_name(VIP6), 5, 2, 200)]
    assert samples(registry, "portico_gateway_vip_packets_total") == {
        "198.18.221.10": 10,
        "fd00:221::10": 2,
    }
    assert samples(registry, "portico_gateway_vip_bytes_total")["198.18.221.10"] == 1000
    assert c.listings == 1  # both metrics, every VIP: one listing
    k.counters = [(counter_name(VIP), 7, 1, 100)]  # VIP recreated, VIP6 gone
    k.now = 0.5
    assert samples(registry, "portico_gateway_vip_packets_total")["198.18.221.10"] == 10
    assert c.listings == 1  # within a second: the last listing
    k.now = 1.5
    assert samples(registry, "portico_gateway_vip_packets_total") == {
        "198.18.221.10": 11,
        "fd00:221::10": 2,
    }
    assert c.listings == 2

"""The pool gauges (pool_status.py): capacity and used per pool and family, so that a sum over
any label counts each address once and free is their difference."""

from __future__ import annotations

from types import SimpleNamespace

from portico_operator.ipam import Allocator
from portico_operator.metrics import Metrics
from portico_operator.pool_status import PoolStatus
from portico_operator.pools import parse_pool

OBJ = {"metadata": {"name": "x", "generation": 1}}


def test_capacity_and_used_sum_over_pools_and_families() -> None:
    alloc = Allocator()
    lan = parse_pool("lan", {"addresses": ["198.18.0.0/30", "fd00::/64"]})
    dmz = parse_pool("dmz", {"addresses": ["198.18.1.0/29"]})
    alloc.set_pools([lan, dmz])
    alloc._used[("lan", 4)] = 3  # as _count keeps it when addresses are held
    metrics = Metrics()
    status = PoolStatus(SimpleNamespace(alloc=alloc), None, None, metrics)  # type: ignore[arg-type]
    for pool in (lan, dmz):
        status.status(pool, OBJ)

    def value(name: str, **labels: str) -> float:
        got = metrics.registry.get_sample_value(name, labels)
        assert got is not None, (name, labels)
        return got

    cap, used = "portico_operator_pool_addresses", "portico_operator_pool_addresses_used"
    assert value(cap, pool="lan", family="ipv4") == 4
    assert value(cap, pool="lan", family="ipv6") == 2**64  # exact, not capped at 2^63-1
    assert value(cap, pool="dmz", family="ipv4") == 8
    assert value(used, pool="lan", family="ipv4") == 3
    samples = {
        (m.name, tuple(sorted(s.labels.items()))): s.value
        for m in metrics.registry.collect()
        if m.name.startswith("portico_operator_pool")
        for s in m.samples
    }
    ipv4_capacity = sum(
        v for (n, lb), v in samples.items() if n == cap and ("family", "ipv4") in lb
    )
    assert ipv4_capacity == 12  # each address once: no state label that holds capacity too

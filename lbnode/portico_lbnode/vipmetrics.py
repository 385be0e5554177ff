"""The gateway's per-VIP forwarding counters, read from the kernel when Prometheus scrapes.

``VipCounters`` is a prometheus_client collector: a scrape lists the named counters of table
``netdev portico-gw`` once (one netlink dump of the counter objects alone, whatever the number
of VIPs: 15-40 ms for 1,000 beside a 200,000-element map, where libnftables' ``list counters``
fetched the whole table, 5-19 s and 240 MiB; ``vipstats`` says what they count) and exports

* ``portico_gateway_vip_packets_total{vip}``: packets forwarded toward nodes for the VIP,
* ``portico_gateway_vip_bytes_total{vip}``: their bytes (IP header included),

with what earlier kernel objects of a VIP counted carried forward (``vipstats.CarriedTotals``).
A listing made less than ``max_age`` seconds ago serves the next scrape too: several
Prometheus servers scraping every second cost one listing a second. libnftables works in the
calling thread's network namespace: the scrape thread must be in the gateway's (it is, the
process runs there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from portico_common.nfthandle import Libnftables
from portico_common.nftresult import NftError
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .fwdrules import FAMILY, TABLE
from .vipstats import CarriedTotals, Totals, readings, sorted_vips

log = logging.getLogger("portico.lbnode.vipmetrics")

PACKETS = "portico_gateway_vip_packets"  # prometheus_client adds _total
BYTES = "portico_gateway_vip_bytes"
PACKETS_HELP = "Packets the gateway forwarded toward nodes for the VIP (all its ports)"
BYTES_HELP = "Bytes (IP header included) the gateway forwarded toward nodes for the VIP"
MAX_AGE = 1.0  # seconds a listing serves scrapes for


def _kernel_listing() -> Mapping[str, Any]:
    return Libnftables().counters(FAMILY, TABLE)


class VipCounters(Collector):
    """Register it once on the registry the metrics port serves."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        listing: Callable[[], Mapping[str, Any] | None] = _kernel_listing,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listing = listing
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()  # scrapes may come on several threads at once
        self._carried = CarriedTotals()
        self._totals: dict[Any, Totals] = {}
        self._read_at: float | None = None
        self.listings = 0  # kernel listings made, for tests
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Without it, registering would call collect() and list the table.
        yield CounterMetricFamily(PACKETS, PACKETS_HELP, labels=["vip"])
        yield CounterMetricFamily(BYTES, BYTES_HELP, labels=["vip"])

    def totals(self) -> dict[Any, Totals]:
        """Every VIP's totals, from a listing at most ``max_age`` old."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._max_age:
                try:
                    found = readings(self._listing())
                except NftError as e:  # the scrape goes on with the last values
                    log.warning("reading the VIP counters failed: %s", e)
                else:
                    self._totals = self._carried.update(found)
                    self.listings += 1
                self._read_at = now
            return dict(self._totals)

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self.totals()
        packets = CounterMetricFamily(PACKETS, PACKETS_HELP, labels=["vip"])
        octets = CounterMetricFamily(BYTES, BYTES_HELP, labels=["vip"])
        for vip in sorted_vips(totals):
            t = totals[vip]
            packets.add_metric([str(vip)], t.packets)
            octets.add_metric([str(vip)], t.bytes)
        yield packets
        yield octets

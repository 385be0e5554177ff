"""The gateway's I/O shell: LoadBalancer CRs in; health probes, the forwarding table, ARP/NDP
answers and CR status out. Every decision is made by the pure modules (``model``,
``selection``, ``plan``, ``fwdrules``, ``lbstatus``); this module only feeds and runs them.

Order matters for a user's first packet and last one. A new VIP is programmed in the forwarding
table before it is announced, so the first ARP answer leads to a working path; a VIP that goes
away stops being announced before its rules are removed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from portico_common import API_GROUP, API_VERSION
from portico_common.apipaths import group_path
from portico_common.informer import list_and_watch
from portico_common.kube import ApiError, KubeClient
from portico_common.nftresult import NftError
from prometheus_client import REGISTRY

from . import plan
from .arpprobe import NeighbourProber
from .arpsock import Announcer
from .flowrules import DEFAULT_FLOW_LIMIT
from .flowstate import Standing, next_drain_end, standing
from .fwdmemo import RenderMemo
from .fwdnft import FwdTable
from .fwdrules import render_fwd
from .gwreport import ReportWriter
from .healthstate import NOT_APPLIED_MESSAGE, TargetHealth
from .lbstatus import render_status, status_differs
from .localaddr import own_addresses
from .maglev import DEFAULT_TABLE_SIZE
from .model import GatewayService, InvalidService, service_from_cr
from .natnft import NatTable
from .natrules import render_nat
from .neighbours import (
    UNREACHABLE_MESSAGE,
    Neighbour,
    NeighbourSettings,
    NodeVerdict,
    carried_over,
    probe_targets,
    report_status,
)
from .prober import Prober, ProberMetrics, ProbeSettings, targets_from_services
from .statusqueue import StatusQueue
from .vipmetrics import VipCounters

log = logging.getLogger("portico.lbnode")

FIELD_MANAGER_PREFIX = "portico-lbnode"
STATUS_WRITERS = 8  # concurrent status writes
COALESCE_SECONDS = 0.005  # a change waits this long for others to join its pass ...
COALESCE_AFTER_QUIET = 0.05  # ... unless none came for this long
# A new Service's first pass waits this long after its first good answer for its other nodes'.
FIRST_GATHER = 0.025


def lb_path(namespace: str | None = None, name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "loadbalancers", namespace, name)


def rfc3339(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class GatewaySettings:
    name: str
    interfaces: Sequence[str]
    zone: str = ""
    table_size: int = DEFAULT_TABLE_SIZE
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    # The ARP signal beside the probes: a node that stops answering is out in 0.4-0.5 s.
    neighbour: NeighbourSettings = field(default_factory=NeighbourSettings)
    # How long the first programming waits for every node's first probe after a (re)start, so
    # a restart does not drop the Services whose nodes are merely not probed yet.
    first_probe_wait: float = 3.0
    # Flow pins per family and protocol (``flowrules``); a change re-creates the flows maps.
    flow_limit: int = DEFAULT_FLOW_LIMIT


class Gateway:
    def __init__(self, settings: GatewaySettings, kube: KubeClient) -> None:
        self.settings = settings
        self.kube = kube
        self.crs: dict[str, Mapping[str, Any]] = {}
        self.services: dict[str, GatewayService] = {}
        self.invalid: dict[str, str] = {}
        self.synced = asyncio.Event()
        self._dirty = asyncio.Event()
        # Statuses to write, each once the pass that programs its change has ended: a status
        # never says more than the table does (``statusqueue``).
        self.statuses = StatusQueue()
        self._status_event = asyncio.Event()
        self.maglev = plan.MaglevCache(settings.table_size)
        self.prober = Prober(
            settings.probe,
            on_change=self._health_changed,
            # The process's default registry: what --metrics-port serves.
            metrics=ProberMetrics(REGISTRY),
        )
        self.neighbours = NeighbourProber(
            settings.neighbour, settings.interfaces, on_change=self._neighbour_changed
        )
        self.report = ReportWriter(
            kube,
            settings.name,
            self.report_status,
            lambda status: self.neighbours.carry_over(carried_over(status)),
        )
        self.fwd = FwdTable()
        self.vip_counters = VipCounters(REGISTRY)  # read from the table at each scrape
        # What the last render made, so a pass renders what changed, not the table (the
        # renders run one at a time: ``reconcile`` awaits each).
        self.fwd_memo = RenderMemo()
        self.nat = NatTable()
        self.announcers = [Announcer(dev) for dev in settings.interfaces]
        # The host's own addresses on its LAN devices: when it is a node too, its flows go to
        # its own stack and it is never ARP-probed; on every device: NAT mode's own slots
        # (``localaddr``, ``natrules``).
        own = own_addresses(settings.interfaces)
        self.local_addresses, self.host_addresses = own.lan, own.host
        if self.local_addresses:
            log.info("own addresses: %s", ", ".join(sorted(map(str, self.local_addresses))))
        self.announced: frozenset[Any] = frozenset()
        self.programmed_once = False
        # key -> wall time the CR (with VIPs) was first seen, until its first healthy node is
        # programmed and announced: then one log line says where the time went.
        self._pending_first: dict[str, float] = {}
        self._drain_wakeup: asyncio.TimerHandle | None = None
        # When the latest pass started, entered its worker thread, rendered: for the timing line.
        self._pass_times: dict[str, float] = {}

    # -- the cache of CRs -------------------------------------------------------------------
    def _set(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        self.crs[key] = obj
        try:
            svc = service_from_cr(obj)
        except (InvalidService, TypeError, ValueError) as e:
            self.services.pop(key, None)
            self.invalid[key] = str(e)
            log.error("LoadBalancer %s is not served: %s", key, e)
        else:
            self.invalid.pop(key, None)
            if not svc.vips:
                self.services.pop(key, None)
            else:
                if key not in self.services and self.synced.is_set():
                    self._pending_first.setdefault(key, time.time())
                self.services[key] = svc
        self.statuses.mark([key])

    def _drop(self, key: str) -> None:
        self._pending_first.pop(key, None)
        self.crs.pop(key, None)
        self.services.pop(key, None)
        self.invalid.pop(key, None)
        self.statuses.drop(key)

    def on_list(self, items: Sequence[Mapping[str, Any]]) -> None:
        seen = set()
        for obj in items:
            self._set(obj)
            meta = obj.get("metadata") or {}
            seen.add(f"{meta.get('namespace')}/{meta.get('name')}")
        for gone in set(self.crs) - seen:
            self._drop(gone)
        self.synced.set()
        self._dirty.set()

    def on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if kind == "DELETED":
            self._drop(key)
        else:
            old = self.crs.get(key)
            if old is not None and old.get("spec") == obj.get("spec"):
                # Our own status write (or the operator's) coming back: nothing to program.
                self.crs[key] = obj
                return
            new = key not in self._pending_first
            self._set(obj)
            if new and key in self._pending_first:
                # A new Service's nodes are probed now, not after the reconcile's coalescing,
                # and its pass waits for their answers (or the timeout): a pass now would
                # leave it out, and the answers coming during it would wait for its end.
                self.prober.set_targets(targets_from_services(self.services.values()))
                if key in self._first_probe_pending():
                    return
        self._dirty.set()

    def _health_changed(self, node: str, service_key: str, health: TargetHealth) -> None:
        self.statuses.mark([service_key])
        if service_key in self._pending_first and service_key in self._first_probe_pending():
            return  # a new Service's pass waits for its nodes' answers (``_first_probe_pending``)
        self._dirty.set()

    def _neighbour_changed(self, node: str, _state: Neighbour) -> None:
        self.statuses.mark(self.crs)
        self._dirty.set()
        self.report.dirty.set()

    def report_status(self) -> dict[str, object]:
        verdicts = [
            NodeVerdict(
                n, bool(s.reachable), rfc3339(s.since), "" if s.reachable else UNREACHABLE_MESSAGE
            )
            for n, s in self.neighbours.states().items()
            if s.reachable is not None
        ]
        return report_status(verdicts, self.settings.interfaces, rfc3339(time.time()))

    # -- health lookups ---------------------------------------------------------------------
    def healthy(self, node: str, key: str) -> bool:
        if self.neighbours.unreachable(node):
            return False  # the probe would take 2 s more to see it
        h = self.prober.health(node, key)
        return bool(h and h.healthy)

    def keeps_pins(self, node: str, key: str) -> bool:
        """The node still carries the Service's pinned flows: serving, or draining within the
        Service's drain timeout (``flowstate``)."""
        svc = self.services.get(key)
        if svc is None:
            return False
        h = self.prober.health(node, key)
        # A node that answers no ARP is dead, whatever its last probe said: its pins go at
        # once (the probes would take 2 s more to see it).
        reachable = not self.neighbours.unreachable(node)
        return standing(h, time.time(), svc.drain_timeout, reachable) is not Standing.OUT

    def _wake_at_drain_end(self) -> None:
        """A reconcile when the next drain timeout ends: the node's pins are let go then."""
        if self._drain_wakeup is not None:
            self._drain_wakeup.cancel()
            self._drain_wakeup = None
        end = next_drain_end(self.services.values(), self.prober.health, time.time())
        if end is not None:
            delay = max(0.0, end - time.time()) + 0.01
            self._drain_wakeup = asyncio.get_running_loop().call_later(delay, self._dirty.set)

    def node_health(self, node: str, key: str) -> plan.NodeHealth | None:
        nb = self.neighbours.state(node)
        if nb is not None and nb.reachable is False:
            return plan.NodeHealth(False, UNREACHABLE_MESSAGE, rfc3339(nb.since))
        h = self.prober.health(node, key)
        if h is None:
            return None
        return plan.NodeHealth(h.healthy, h.message, rfc3339(h.since))

    # -- programming ------------------------------------------------------------------------
    def _program(self, ports: list[Any], nat: list[Any]) -> tuple[Any, float]:
        """Render and apply both tables (in a worker thread: a render of thousands of ports
        takes tens of milliseconds, which probes and watches must not wait for)."""
        t0 = time.perf_counter()
        self._pass_times["thread"] = time.time()
        # NAT first: a port handed to the IP stack must find its DNAT there.
        nat_table = render_nat(
            nat, self.settings.table_size, self.settings.interfaces, self.host_addresses
        )
        if self.nat.apply(nat_table):
            log.info("NAT table: %d ports", len(nat))
        rules = render_fwd(
            ports,
            self.settings.interfaces,
            self.settings.table_size,
            self.fwd.applied,
            self.settings.flow_limit,
            memo=self.fwd_memo,
            local_nodes=self.local_addresses,
        )
        self._pass_times["rendered"] = time.time()
        result = self.fwd.apply(rules)
        self._pass_times["applied"] = time.time()
        return result, t0

    def _first_probe_pending(self) -> set[str]:
        """New Services some of whose nodes have not answered a probe yet, or only that they
        have not programmed them yet: until the first answer (at most the probe timeout) and
        ``FIRST_GATHER`` after it. They are programmed and announced with their nodes' answers,
        in one pass, instead of fail-closed first and served one pass later, node by node (the
        answers that came during a pass waited for it)."""
        now = time.time()
        timeout = self.settings.probe.timeout
        waiting = set()
        for key, seen in self._pending_first.items():
            svc = self.services.get(key)
            if svc is None or not svc.backends or now - seen >= timeout:
                continue  # no node to wait for: programmed (fail-closed) and announced now
            health = [self.prober.health(b.node, key) for b in svc.backends]
            asked = [
                (h is not None and not self._not_yet(h)) or self.neighbours.unreachable(b.node)
                for b, h in zip(svc.backends, health, strict=True)
            ]
            if all(asked):
                continue
            # The first answers, and the others for a moment more: a pass with one node of
            # three makes a slot map of its own (4,093 elements, then moved in place twice),
            # where all three share the map every Service over them uses.
            first = min((h.last_probe for h in health if h and not self._not_yet(h)), default=None)
            until = seen + timeout if first is None else min(seen + timeout, first + FIRST_GATHER)
            if now < until:
                waiting.add(key)
                asyncio.get_running_loop().call_later(until - now, self._dirty.set)
        return waiting

    @staticmethod
    def _not_yet(h: TargetHealth | None) -> bool:
        return h is None or (not h.healthy and h.message == NOT_APPLIED_MESSAGE)

    async def reconcile(self) -> None:
        self._pass_times = {"pass": time.time()}
        self.statuses.begin_pass()
        targets = targets_from_services(self.services.values())
        self.prober.set_targets(targets)
        waiting = self._first_probe_pending()
        # Not programmed by this pass: their statuses wait for the pass that serves them.
        self.statuses.mark(waiting)
        served = (
            {k: s for k, s in self.services.items() if k not in waiting}
            if waiting
            else self.services
        )
        self.neighbours.set_targets(
            probe_targets({n: t.address for n, t in targets.items()}, self.local_addresses)
        )
        wanted = plan.vips_to_announce(served)
        announced_before = self.announced
        # Withdraw first: a VIP going away is never answered for while its rules go.
        keep = self.announced & wanted
        if keep != self.announced:
            self._announce(keep)
        ports, nat = plan.forwarding_and_nat(
            served.values(), self.healthy, self.maglev, self.settings.zone, self.keeps_pins
        )
        self._wake_at_drain_end()
        result, t0 = await asyncio.to_thread(self._program, ports, nat)
        if result.commands:
            log.info(
                "forwarding: %d commands (%s) in %.1f ms for %d ports",
                result.commands,
                result.mode,
                (time.perf_counter() - t0) * 1000,
                len(ports),
            )
        self.programmed_once = True
        t_programmed = time.time()
        if wanted != self.announced:
            self._announce(wanted)
        if self._pending_first:
            self._log_first_served(ports, t_programmed)
        # The statuses this pass changed: those whose announcement did (health changes and CR
        # edits mark theirs as they come). Not every CR's: judging 1,000 statuses after each
        # pass kept the event loop from the next Service's probe answers.
        flipped = announced_before ^ self.announced
        self.statuses.end_pass(
            [k for k, svc in self.services.items() if not flipped.isdisjoint(svc.vips)]
            if flipped
            else ()
        )
        self._status_event.set()

    def _log_first_served(self, ports: Sequence[Any], t_programmed: float) -> None:
        """One line per new Service once it has a healthy node: CR seen, first healthy probe
        answer, forwarding programmed, first announcement (wall-clock seconds)."""
        served = {p.service for p in ports if p.slots}
        for key in [k for k in self._pending_first if k in served]:
            seen = self._pending_first.pop(key)
            svc = self.services[key]
            healthy = [
                h.since
                for b in svc.backends
                if (h := self.prober.health(b.node, key)) is not None and h.healthy
            ]
            log.info(
                "serving %s",
                key,
                extra={
                    "timing": {
                        "service": key,
                        "cr_seen": seen,
                        "first_healthy": min(healthy, default=t_programmed),
                        "programmed": t_programmed,
                        **self._pass_times,
                        "announced": time.time(),
                    }
                },
            )

    def _announce(self, vips: frozenset[Any]) -> None:
        for a in self.announcers:
            a.set_vips(vips)
        self.announced = vips

    async def reconcile_loop(self) -> None:
        await self.synced.wait()
        # After a restart, the nodes' first answers decide the first table: wait for them
        # (bounded), rather than program every Service as fail-closed for a moment.
        self.prober.set_targets(targets_from_services(self.services.values()))
        await self.prober.first_round(self.settings.first_probe_wait)
        while True:
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; retrying")
                self.statuses.pass_failed()
                await asyncio.sleep(1.0)
                self._dirty.set()
            ended = time.monotonic()
            await self._dirty.wait()
            # Coalesce a burst (a Deployment's pods, a list): one transaction for all of it. A
            # change after a quiet spell (a new Service's first probe answer) goes at once:
            # what came with it in the same loop turn joins it all the same.
            quiet = time.monotonic() - ended > COALESCE_AFTER_QUIET
            await asyncio.sleep(0 if quiet else COALESCE_SECONDS)

    # -- status -----------------------------------------------------------------------------
    def desired_status(self, key: str) -> dict[str, Any] | None:
        obj = self.crs.get(key)
        if obj is None:
            return None
        current = obj.get("status") or {}
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        now = rfc3339(time.time())
        svc = self.services.get(key)
        if svc is None:
            reason, message = (
                ("InvalidSpec", self.invalid[key])
                if key in self.invalid
                else ("NoVIPs", "the Service has no address yet")
            )
            report = plan.Report(self.settings.name, False, reason, message, (), False)
        else:
            report = plan.report(
                svc, self.settings.name, self.node_health, announced=svc.vips[0] in self.announced
            )
        return render_status(report, generation, now, current)

    async def status_loop(self) -> None:
        sem = asyncio.Semaphore(STATUS_WRITERS)

        async def write(key: str) -> None:
            async with sem:
                await self._write_status(key)

        while True:
            await self._status_event.wait()
            self._status_event.clear()
            if not self.programmed_once:
                continue
            await asyncio.gather(*(write(k) for k in self.statuses.take()))

    async def _write_status(self, key: str) -> None:
        if not self.statuses.writable(key):
            return  # changed while it waited for a writer: written after the pass that programs it
        if await self._patch_status(key):
            self.statuses.written(key)

    async def _patch_status(self, key: str) -> bool:
        """Writes the key's status if it differs; False when the write failed (retried)."""
        desired = self.desired_status(key)
        if desired is None:
            return True
        # The CR as last seen, or as our last write returned it: a status someone else changed
        # (or cleared) is written again, ours coming back is not.
        current = self.crs[key].get("status") or {}
        if not status_differs(current, desired):
            return True
        ns, name = key.split("/", 1)
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "LoadBalancer",
            "metadata": {"name": name, "namespace": ns},
            "status": desired,
        }
        try:
            applied = await self.kube.patch(
                lb_path(ns, name) + "/status",
                body,
                kind="apply",
                field_manager=f"{FIELD_MANAGER_PREFIX}-{self.settings.name}",
                force=True,
            )
        except ApiError as e:
            if e.status == 404:
                return True  # the CR is gone
            log.warning("status of %s: %s (retrying)", key, e)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("status of %s: %s (retrying)", key, e)
        else:
            if key in self.crs and applied.get("spec") == self.crs[key].get("spec"):
                self.crs[key] = applied
            return True
        self.statuses.retry(key)
        asyncio.get_running_loop().call_later(1.0, self._status_event.set)
        return False

    # -- running ----------------------------------------------------------------------------
    async def watch_loop(self) -> None:
        await list_and_watch(
            self.kube, lb_path(), self.on_list, self.on_event, what="LoadBalancers"
        )

    async def verify_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.programmed_once:
                continue
            try:
                if await asyncio.to_thread(self.fwd.verify):
                    log.warning("forwarding table was changed behind our back: restored")
                if await asyncio.to_thread(self.nat.verify):
                    log.warning("NAT table was deleted behind our back: restored")
            except NftError as e:
                log.error("verify failed: %s", e)
            await self.refresh_local_addresses()

    async def refresh_local_addresses(self) -> None:
        """The host's own addresses, read again: one added or removed after the start (a
        node's address that DHCP or an operator changed) changes which node's flows go to the
        host's stack and which nodes are ARP-probed."""
        try:
            own = await asyncio.to_thread(own_addresses, self.settings.interfaces)
        except Exception as e:  # pyroute2's NetlinkError is no OSError; the loop goes on
            log.error("reading the host's addresses failed: %s", e)
            return
        if own.host != self.host_addresses:
            self.host_addresses = own.host
            self._dirty.set()  # NAT mode's own slots
        if own.lan != self.local_addresses:
            log.info("own addresses: %s", ", ".join(sorted(map(str, own.lan))) or "none")
            self.local_addresses = own.lan
            # A node that became (or stopped being) this host changes health, not only the
            # table: its neighbour verdict goes (or comes), so every status and the report.
            self.statuses.mark(self.crs)
            self.report.dirty.set()
            self._dirty.set()

    async def withdraw(self) -> None:
        """Stops announcing (a clean stop); the table stays so a restart keeps the flows."""
        self._announce(frozenset())
        for a in self.announcers:
            a.close()

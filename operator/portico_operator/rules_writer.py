"""The operator's writer of NodeRules (what every node agent programs) and reader of the agents'
reports (NodeAgent), for the LoadBalancer CR's Programmed condition.

Entries are wanted as Services are published or withdrawn; a flusher writes what differs from
what the shards hold, one merge patch per shard and change burst. What to write and what
Programmed says are pure (``noderules_push``); this is the state and the I/O around them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from portico_common import API_GROUP, API_VERSION, rulesdoc
from portico_common.kube import ApiError

from .errors import NotLeading
from .lbspec import condition
from .metrics import Metrics
from .noderules_push import (
    Entry,
    entry_patch,
    forwards_alike,
    lagging_nodes,
    programmed,
    shard_patches,
)
from .service import ServiceView
from .writebudget import WriteBudget

log = logging.getLogger("portico.operator.rules")


# A change waits this long for others to join it (unless the writer was quiet), and the
# shards are written once per RULES_MIN_INTERVAL on average (a Deployment replacing 100 pods
# is a few writes per shard), RULES_BURST writes at once (``writebudget``: a new Service's
# entry, then its endpoints).
RULES_GATHER_SECONDS = 0.005
RULES_MIN_INTERVAL = 0.05
RULES_BURST = 2
RETRY_SECONDS = 0.2
# A node that has not applied a Service's new rules this long after they were written makes
# Programmed False; sooner, a True one stays (the usual apply takes milliseconds: no flapping,
# no extra write per change).
PROGRAMMED_GRACE_SECONDS = 2.0


class NodeRulesWriter:
    def __init__(
        self,
        kube: Any,
        metrics: Metrics,
        *,
        on_written: Callable[[str], None],
        recheck_after: Callable[[str, float], None],
    ) -> None:
        self.kube = kube  # the Lease-gated client
        self.metrics = metrics
        self.on_written = on_written  # an entry was written: its Programmed may change
        self.recheck_after = recheck_after
        self.enabled = True  # False when the NodeRules CRD is missing
        # Entries wanted since the last flush (None: remove), and what the shards hold (listed
        # at take-over, then kept by our own writes).
        self.wanted: dict[str, Entry | None] = {}
        self.written: dict[str, Entry] = {}
        self.shards: set[str] = set()
        self.dirty = asyncio.Event()
        self.generation: dict[str, tuple[str, int]] = {}  # key -> (shard, generation written)
        self.written_at: dict[str, float] = {}  # key -> when (monotonic)
        self.applied: dict[str, dict[str, int]] = {}  # node -> shard -> generation applied
        self.sent = 0  # shard writes attempted (the write budget counts these)

    # -- entries -----------------------------------------------------------------------------
    def want(self, key: str, entry: Entry | None) -> None:
        if not self.enabled:
            return
        if entry is None and key not in self.written and key not in self.wanted:
            return
        self.wanted[key] = entry
        self.dirty.set()

    def holds(self, key: str, entry: Entry) -> bool:
        """Whether the shards carry ``entry`` for the Service, endpoints aside (a CR may
        announce what they carry). Always, when the nodes get no rules (no NodeRules CRD)."""
        if not self.enabled:
            return True
        written = self.written.get(key)
        return written is not None and forwards_alike(written, entry)

    async def load(self, services: Mapping[str, ServiceView], load_balancer_class: str) -> None:
        """What the shards hold now (at take-over); entries of Services that are gone or no
        longer ours go."""
        try:
            listing = await self.kube.get(rulesdoc.path())
        except ApiError as e:
            if e.status != 404:
                raise
            # An install without the NodeRules CRD still allocates; nodes get no rules.
            log.error("the NodeRules CRD is not installed: node agents get no rules")
            self.enabled = False
            return
        self.enabled = True
        self.written, self.shards, self.generation, self.wanted = {}, set(), {}, {}
        for obj in listing.get("items") or []:
            shard = obj["metadata"]["name"]
            gen = int(obj["metadata"].get("generation") or 0)
            self.shards.add(shard)
            for key, entry in ((obj.get("spec") or {}).get("services") or {}).items():
                self.written[key] = entry
                self.generation[key] = (shard, gen)
        for key in self.written:
            view = services.get(key)
            if view is None or not view.served_by(load_balancer_class) or view.deleting:
                self.wanted[key] = None
        if self.wanted:
            self.dirty.set()

    async def flusher(self) -> None:
        budget = WriteBudget(RULES_MIN_INTERVAL, RULES_BURST)
        while True:
            await self.dirty.wait()
            # After a quiet spell (a new Service) at once: what came in the same loop turn
            # joins all the same, and a burst's rest gathers behind the rate limit.
            quiet = budget.full(time.monotonic())
            await asyncio.sleep(0 if quiet else RULES_GATHER_SECONDS)
            self.dirty.clear()
            wanted, self.wanted = self.wanted, {}
            sent = self.sent
            try:
                await self.write(wanted)
            except (ApiError, OSError, TimeoutError) as e:
                log.warning("node rules: %s (retrying)", e)
                self._retry(wanted)
                await asyncio.sleep(RETRY_SECONDS)
            except NotLeading:
                raise  # the term is over: the workers stop with it
            except Exception:
                # A bug must not stop the workers this task runs beside: log, retry later.
                log.exception("node rules")
                self._retry(wanted)
                await asyncio.sleep(RETRY_SECONDS * 10)
            if self.sent != sent:  # a flush that found nothing to write costs nothing
                await asyncio.sleep(budget.spend(time.monotonic()))

    def _retry(self, wanted: Mapping[str, Entry | None]) -> None:
        for key, entry in wanted.items():
            self.wanted.setdefault(key, entry)  # a newer want wins
        self.dirty.set()

    async def write(self, wanted: dict[str, Entry | None]) -> None:
        """Writes what differs; what was written leaves ``wanted`` (the rest is retried)."""
        for shard, changes in sorted(shard_patches(wanted, self.written).items()):
            reply: dict[str, Any] = {}
            if shard in self.shards:
                patch = {k: entry_patch(self.written.get(k), v) for k, v in changes.items()}
                body: dict[str, Any] = {"spec": {"services": patch}}
                self._count(body)
                try:
                    with self.metrics.api_write("noderules"):
                        reply = await self.kube.patch(rulesdoc.path(shard), body)
                except ApiError as e:
                    if e.status != 404:
                        raise
                    self.shards.discard(shard)  # someone deleted it: create it again
            if shard not in self.shards:
                services: dict[str, Entry | None] = {
                    k: v for k, v in self.written.items() if rulesdoc.shard_name(k) == shard
                }
                services.update(changes)
                body = {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": rulesdoc.KIND,
                    "metadata": {"name": shard},
                    "spec": {"services": {k: v for k, v in services.items() if v is not None}},
                }
                self._count(body)
                with self.metrics.api_write("noderules"):
                    reply = await self.kube.create(rulesdoc.path(), body)
                self.shards.add(shard)
            gen = int((reply.get("metadata") or {}).get("generation") or 0)
            for key, entry in changes.items():
                wanted.pop(key, None)
                if entry is None:
                    self.written.pop(key, None)
                    self.generation.pop(key, None)
                    self.written_at.pop(key, None)
                else:
                    self.written[key] = entry
                    self.generation[key] = (shard, gen)
                    self.written_at[key] = time.monotonic()
                    self.on_written(key)  # Programmed: now against this generation

    def _count(self, body: Any) -> None:
        self.sent += 1
        self.metrics.api_write_bytes.labels("noderules").inc(len(json.dumps(body)))

    # -- the agents' reports -----------------------------------------------------------------
    def observe_agent(self, name: str, obj: Mapping[str, Any] | None) -> set[str]:
        """A node agent's report (None: gone); returns the shards whose applied generation
        changed."""
        old = self.applied.pop(name, {})
        new: dict[str, int] = {}
        if obj is not None:
            for shard, gen in ((obj.get("status") or {}).get("applied") or {}).items():
                if isinstance(gen, int):
                    new[shard] = gen
            self.applied[name] = new
        return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}

    def keys_in(self, shards: Iterable[str]) -> list[str]:
        wanted = set(shards)
        return [key for key, (shard, _) in self.generation.items() if shard in wanted]

    def programmed_condition(
        self,
        key: str,
        vips: Any,
        spec: Mapping[str, Any],
        generation: int,
        t: str,
        previous: list[Any],
    ) -> dict[str, Any] | None:
        """Programmed: every backend node's agent applied the rules that carry this Service."""
        if not self.enabled or not vips or key not in self.generation:
            return None
        shard, gen = self.generation[key]
        nodes = [b["node"] for b in spec.get("backends") or []]
        ok, reason, message = programmed(lagging_nodes(nodes, shard, gen, self.applied))
        prev = next((c for c in previous if c.get("type") == "Programmed"), None)
        young = time.monotonic() - self.written_at.get(key, 0.0) < PROGRAMMED_GRACE_SECONDS
        if not ok and young:
            # Written a moment ago: the agents are applying it. Look again after the grace; till
            # then a True stays True and a new Service gets no Programmed yet (one write, not a
            # False and then a True, for every new Service).
            self.recheck_after(key, PROGRAMMED_GRACE_SECONDS)
            if prev is None:
                return None
            if prev.get("status") == "True":
                ok, reason, message = True, prev.get("reason", "Applied"), prev.get("message", "")
        return condition("Programmed", ok, reason, message, generation, t, previous)

"""The agent run from the cluster: NodeRules and this Node in, one nftables transaction and the
health listeners out, after every change (changes that arrive while one is applied are applied
together next)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from portico_common import API_GROUP, API_VERSION
from portico_common.apipaths import group_path
from portico_common.clock import now_rfc3339
from portico_common.conditions import condition
from portico_common.kube import ApiError, KubeClient, load_credentials, patch_status_creating
from portico_common.model import LOCAL, LBService, NodeInfo, NodeRulesError
from portico_common.tasks import run_together, run_until_signalled

from . import nftnames as N
from .conntrack import delete_flows
from .drift import render_drift
from .healthserver import HealthServers, HealthState
from .incremental import NodeRenderer
from .kubesource import KubeSource
from .metrics import AgentMetrics
from .nft import NftError, NftTable
from .render import check_service
from .settings import AgentSettings
from .stale import stale_flows
from .statusfile import write_status

log = logging.getLogger("portico.nodeagent")
# NodeAgent status: at most this often (it is how Programmed learns, not how traffic flows;
# every write costs the operator a look at the Services of the shards it names).
STATUS_MIN_INTERVAL = 0.2
APPLY_RETRY_SECONDS = 1.0


def agent_status(
    applied: dict[str, int],
    previous: dict[str, Any],
    *,
    services: int,
    counts: dict[str, int],
    error: str | None,
    bad: dict[str, str],
    conflicts: dict[int, str],
    applied_at: str,
) -> dict[str, Any]:
    """The NodeAgent status to merge-patch: shards no longer applied are removed; the
    Programmed condition keeps its transition time while its status stays."""
    ok = error is None
    cond = condition(
        "Programmed",
        ok,
        "Applied" if ok else "ApplyFailed",
        "the rules in force are the latest" if ok else (error or "")[:4000],
        0,
        now_rfc3339(),
        previous.get("conditions") or [],
    )
    gone = {k: None for k in previous.get("applied") or {} if k not in applied}
    return {
        "applied": {**gone, **applied},
        "appliedAt": applied_at,
        "services": services,
        "counts": counts,
        "error": error or "",
        "badEntries": {
            **{k: None for k in previous.get("badEntries") or {} if k not in bad},
            **bad,
        },
        "healthPortConflicts": {
            **{
                k: None
                for k in previous.get("healthPortConflicts") or {}
                if k not in {str(p) for p in conflicts}
            },
            **{str(k): v for k, v in conflicts.items()},
        },
        "conditions": [cond],
    }


def usable(
    services: list[LBService], last_good: dict[str, LBService]
) -> tuple[list[LBService], dict[str, str]]:
    """The Services to render: an entry that cannot be rendered (a bad source range, say)
    keeps its last good version in force, and is reported."""
    out, bad = [], {}
    for svc in services:
        if last_good.get(svc.key) is svc:
            out.append(svc)  # checked when it last changed: not again on every change
            continue
        try:
            check_service(svc)
        except NodeRulesError as e:
            bad[svc.key] = str(e)
            if svc.key in last_good:
                out.append(last_good[svc.key])
            continue
        last_good[svc.key] = svc
        out.append(svc)
    for key in set(last_good) - {s.key for s in services}:
        del last_good[key]
    return out, bad


def local_health_ports(services: list[LBService]) -> dict[int, LBService]:
    return {
        s.health_check_node_port: s
        for s in services
        if s.external_traffic_policy == LOCAL and s.health_check_node_port
    }


class KubeAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.table = NftTable()
        self.renderer = NodeRenderer()  # re-renders only the Services that changed
        self.changed = asyncio.Event()
        self.state = HealthState(node=settings.node_name)
        self.health = HealthServers(
            self.state, settings.health_port, settings.kube_proxy_healthz_port
        )
        self.metrics = AgentMetrics()
        self.last_good: dict[str, LBService] = {}
        self.applied: list[LBService] = []  # what the rules in force were rendered from
        self.applied_node = NodeInfo("")  # ... for this node
        self.status: dict[str, Any] = {}
        self.kube: KubeClient | None = None
        self.source: KubeSource | None = None
        self.applied_generations: dict[str, int] = {}
        self.applied_at = ""
        self.last_error: str | None = None
        self.last_bad: dict[str, str] = {}
        self.status_dirty = asyncio.Event()
        self.written_status: dict[str, Any] = {}

    async def run(self) -> None:
        self.kube = KubeClient(load_credentials(self.settings.kubeconfig))
        self.source = KubeSource(self.kube, self.settings.node_name, self.changed.set)
        self.metrics.serve(self.settings.metrics_port)
        await self.health.start_node()
        try:
            await run_together(
                self.source.run(), self._applier(), self._verifier(), self._status_writer()
            )
        finally:
            self.health.close()
            await self.kube.close()

    async def _applier(self) -> None:
        assert self.source is not None
        # Never apply a half-listed view (it would drop rules) or before the zone is known.
        await self.source.synced.wait()
        await self.source.node_synced.wait()
        while True:
            await self.changed.wait()
            self.changed.clear()
            node = self.source.node
            generations = dict(self.source.services.generations)  # what this render covers
            services, bad = usable(self.source.services.all(), self.last_good)
            if await self.apply(services, node.info, bad):
                self.applied_generations = generations
            else:
                # A failed transaction is tried again (also without a new change).
                asyncio.get_running_loop().call_later(APPLY_RETRY_SECONDS, self.changed.set)
            self.last_bad = bad
            self.state.deleting, self.state.taints = node.deleting, node.taints
            self.state.services = local_health_ports(services)
            await self.health.sync()
            # What is in force (the last applied, should this apply have failed), then the
            # long polls of the aggregate answer.
            self.state.applied = frozenset(s.key for s in self.applied)
            self.state.generation += 1
            self.health.changed()
            # After the listeners: the status names the health ports another program holds.
            self.status_dirty.set()

    async def apply(self, services: list[LBService], node: NodeInfo, bad: dict[str, str]) -> bool:
        t0 = time.perf_counter()
        try:
            render = await asyncio.to_thread(self.renderer.render, services, node)
            result = await asyncio.to_thread(self.table.apply, render)
        except (NodeRulesError, NftError) as e:
            # The rules in force stay; the applier tries again.
            log.error("cannot apply rules: %s", e)
            self.metrics.errors.inc()
            self.state.rules_current = False
            self.status["error"] = str(e)
            self.last_error = str(e)
            write_status(self.settings.status, self.status)
            return False
        stale = stale_flows(self.applied, services, node)
        self.applied, self.applied_node = services, node
        if stale:
            # After the rules: a datagram between the two would re-create the entry.
            try:
                gone = await delete_flows(stale)
                self.metrics.conntrack_deleted.inc(gone)
                log.info("deleted %d conntrack entries of %d stale flows", gone, len(stale))
            except OSError as e:
                log.error("conntrack: %s", e)
        seconds = time.perf_counter() - t0
        self.last_error = None
        self.applied_at = now_rfc3339()
        self.state.rules_current = True
        self.state.last_applied_ns = time.time_ns()
        self.metrics.observe_apply(result.mode, result.seconds, self.table.stats.counts)
        self.status = {
            "node": node.name,
            "applied": time.time(),
            "error": None,
            "mode": result.mode,
            "commands": result.commands,
            "seconds": round(result.seconds, 6),
            "services": len(services),
            "counts": self.table.stats.counts,
            "restores": self.table.stats.restores,
            "badEntries": bad,
            "healthPortConflicts": {str(k): v for k, v in self.health.conflicts.items()},
        }
        write_status(self.settings.status, self.status)
        if result.commands:
            log.info(
                "applied %d Services: %s, %d commands, %.2f ms in nftables, %.2f ms in all",
                len(services),
                result.mode,
                result.commands,
                result.seconds * 1000,
                seconds * 1000,
            )
        return True

    async def _status_writer(self) -> None:
        """The NodeAgent object of this node: what it applied, for the operator's Programmed."""
        assert self.kube is not None
        node = self.settings.node_name
        collection = group_path(API_GROUP, API_VERSION, "nodeagents")
        path = f"{collection}/{node}"
        try:
            # What a previous run reported: shards it named that are gone get removed.
            self.written_status = (await self.kube.get(path)).get("status") or {}
        except (ApiError, OSError, TimeoutError):
            self.written_status = {}
        while True:
            await self.status_dirty.wait()
            self.status_dirty.clear()
            status = agent_status(
                self.applied_generations,
                self.written_status,
                services=len(self.applied),
                counts=self.table.stats.counts,
                error=self.last_error,
                bad=self.last_bad,
                conflicts=self.health.conflicts,
                applied_at=self.applied_at or now_rfc3339(),
            )
            try:
                await patch_status_creating(
                    self.kube, collection, node, "NodeAgent", {"node": node}, status
                )
                self.written_status = {k: v for k, v in status.items()}
                for key in ("applied", "badEntries", "healthPortConflicts"):
                    self.written_status[key] = {
                        k: v for k, v in status[key].items() if v is not None
                    }
            except (ApiError, OSError, TimeoutError) as e:
                log.warning("NodeAgent status: %s (retrying)", e)
                self.status_dirty.set()
                await asyncio.sleep(1)
            await asyncio.sleep(STATUS_MIN_INTERVAL)

    async def _verifier(self) -> None:
        every = self.settings.render_check_interval
        next_check = time.monotonic() + every
        while True:
            await asyncio.sleep(self.settings.verify_interval)
            try:
                if await asyncio.to_thread(self.table.verify):
                    self.metrics.restores.inc()
                    log.warning("restored table %s %s", N.FAMILY, N.TABLE)
            except NftError as e:
                log.error("verify failed: %s", e)
            if every > 0 and time.monotonic() >= next_check:
                next_check = time.monotonic() + every
                await self.check_render()

    async def check_render(self) -> bool:
        """Compares the rules in force with a render from scratch of the Services they were
        rendered from; on a difference, logs it and rebuilds: the next render starts from
        nothing. Returns whether they differed."""
        applied = self.table.applied
        if applied is None:
            return False
        services, node = self.applied, self.applied_node  # taken together, before any await
        try:
            drift = await asyncio.to_thread(render_drift, applied.index, services, node)
        except NodeRulesError:
            return False  # the applier reports bad input
        if not drift or self.table.applied is not applied:
            return False  # equal, or a newer apply came meanwhile: the next check sees it
        self.metrics.render_drifts.inc()
        log.error("the rules in force differ from a render from scratch: %s", "; ".join(drift))
        self.renderer = NodeRenderer()
        self.changed.set()
        return True


def run_kube_agent(settings: AgentSettings) -> int:
    async def main() -> None:
        agent = KubeAgent(settings)
        if await run_until_signalled(agent.run()):
            log.info("stopping: the rules stay in force")

    asyncio.run(main())
    return 0

"""The agent's view of the API: every NodeRules shard and its own Node, listed and then watched.

Watches restart from the last resourceVersion seen; a 410 (the watch fell too far behind) or any
other failure relists. Every change calls ``on_change``; the caller coalesces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portico_common import rulesdoc
from portico_common.kube import ApiError, KubeClient, core_path
from portico_common.noderules import LBService, NodeInfo
from portico_common.rulesdoc import service_from_entry

log = logging.getLogger("portico.nodeagent.kube")
ZONE_LABEL = "topology.kubernetes.io/zone"
RELIST_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class NodeState:
    info: NodeInfo
    deleting: bool = False
    taints: tuple[str, ...] = ()


def parse_node(obj: Mapping[str, Any]) -> NodeState:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ips = tuple(
        a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"
    )
    return NodeState(
        NodeInfo(meta.get("name", ""), (meta.get("labels") or {}).get(ZONE_LABEL), ips),
        deleting=bool(meta.get("deletionTimestamp")),
        taints=tuple(t.get("key", "") for t in (obj.get("spec") or {}).get("taints") or []),
    )


@dataclass
class Services:
    """Entries by shard, parsed once per change; malformed entries are reported, not fatal."""

    shards: dict[str, dict[str, LBService]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # service key -> what is wrong
    generations: dict[str, int] = field(default_factory=dict)  # shard -> metadata.generation

    def set_shard(self, name: str, obj: Mapping[str, Any] | None) -> None:
        for key in self.shards.pop(name, {}):
            self.errors.pop(key, None)
        self.generations.pop(name, None)
        if obj is None:
            return
        self.generations[name] = int((obj.get("metadata") or {}).get("generation") or 0)
        parsed: dict[str, LBService] = {}
        for key, entry in ((obj.get("spec") or {}).get("services") or {}).items():
            try:
                parsed[key] = service_from_entry(entry)
            except (KeyError, TypeError, ValueError) as e:
                self.errors[key] = f"{type(e).__name__}: {e}"
                log.error("NodeRules %s: entry %s is malformed (%s): skipped", name, key, e)
        self.shards[name] = parsed

    def all(self) -> list[LBService]:
        return [svc for shard in self.shards.values() for svc in shard.values()]


class KubeSource:
    def __init__(self, kube: KubeClient, node_name: str, on_change: Callable[[], None]) -> None:
        self.kube = kube
        self.node_name = node_name
        self.on_change = on_change
        self.services = Services()
        self.node = NodeState(NodeInfo(node_name))
        self.synced = asyncio.Event()  # every shard listed
        self.node_synced = asyncio.Event()  # this Node read (its zone decides hints)

    async def run(self) -> None:
        await asyncio.gather(self._loop_rules(), self._loop_node())

    async def _loop_rules(self) -> None:
        failures = 0
        while True:
            try:
                listing = await self.kube.get(rulesdoc.path())
                seen = set()
                for obj in listing.get("items") or []:
                    seen.add(obj["metadata"]["name"])
                    self.services.set_shard(obj["metadata"]["name"], obj)
                for gone in set(self.services.shards) - seen:
                    self.services.set_shard(gone, None)
                self.synced.set()
                self.on_change()
                rv = listing["metadata"]["resourceVersion"]
                failures = 0
                while True:
                    async for ev in self.kube.watch(
                        rulesdoc.path(), {"resourceVersion": rv, "allowWatchBookmarks": "true"}
                    ):
                        obj = ev["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if ev["type"] == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        self.services.set_shard(name, None if ev["type"] == "DELETED" else obj)
                        self.on_change()
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, TimeoutError, ValueError, KeyError) as e:
                if not (isinstance(e, ApiError) and e.status == 410):
                    failures += 1
                    log.warning("NodeRules watch: %s (relisting)", e)
                await asyncio.sleep(RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)])

    async def _loop_node(self) -> None:
        path = core_path("nodes", None, self.node_name)
        failures = 0
        while True:
            try:
                obj = await self.kube.get(path)
                self._set_node(obj)
                self.node_synced.set()
                rv = obj["metadata"]["resourceVersion"]
                failures = 0
                while True:
                    async for ev in self.kube.watch(
                        core_path("nodes"),
                        {"fieldSelector": f"metadata.name={self.node_name}", "resourceVersion": rv},
                    ):
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._set_node(ev["object"])
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, TimeoutError, ValueError, KeyError) as e:
                if not (isinstance(e, ApiError) and e.status == 410):
                    failures += 1
                    log.warning("Node %s watch: %s (relisting)", self.node_name, e)
                await asyncio.sleep(RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)])

    def _set_node(self, obj: Mapping[str, Any]) -> None:
        new = parse_node(obj)
        if new != self.node:
            changed_rules = new.info != self.node.info
            self.node = new
            if changed_rules:
                self.on_change()

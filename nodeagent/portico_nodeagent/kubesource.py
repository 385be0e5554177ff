"""The agent's view of the API: every NodeRules shard and its own Node, listed and then watched.

Each is ``portico_common.informer.list_and_watch``: a relist replaces the whole cache. Every
change calls ``on_change``; the caller coalesces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from portico_common import rulesdoc
from portico_common.apipaths import core_path
from portico_common.informer import list_and_watch
from portico_common.kube import KubeClient
from portico_common.model import LBService, NodeInfo
from portico_common.rulesdoc import service_from_entry

log = logging.getLogger("portico.nodeagent.kube")
ZONE_LABEL = "topology.kubernetes.io/zone"


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
    spec = obj.get("spec") or {}
    pod_cidrs = tuple(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    return NodeState(
        NodeInfo(meta.get("name", ""), (meta.get("labels") or {}).get(ZONE_LABEL), ips, pod_cidrs),
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
        before = self.shards.pop(name, {})
        for key in before:
            self.errors.pop(key, None)
        self.generations.pop(name, None)
        if obj is None:
            return
        self.generations[name] = int((obj.get("metadata") or {}).get("generation") or 0)
        parsed: dict[str, LBService] = {}
        for key, entry in ((obj.get("spec") or {}).get("services") or {}).items():
            try:
                svc = service_from_entry(entry)
                # An unchanged entry keeps its object: the renderer and the stale-flow check
                # tell unchanged Services by identity, which costs nothing per Service.
                old = before.get(key)
                parsed[key] = old if old == svc else svc
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
        await asyncio.gather(
            list_and_watch(
                self.kube, rulesdoc.path(), self._list_shards, self._shard_event, what="NodeRules"
            ),
            list_and_watch(
                self.kube,
                core_path("nodes"),
                self._list_node,
                self._node_event,
                what=f"Node {self.node_name}",
                params={"fieldSelector": f"metadata.name={self.node_name}"},
            ),
        )

    def _list_shards(self, items: Sequence[Mapping[str, Any]]) -> None:
        seen = set()
        for obj in items:
            seen.add(obj["metadata"]["name"])
            self.services.set_shard(obj["metadata"]["name"], obj)
        for gone in set(self.services.shards) - seen:
            self.services.set_shard(gone, None)
        self.synced.set()
        self.on_change()

    def _shard_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.services.set_shard(obj["metadata"]["name"], None if kind == "DELETED" else obj)
        self.on_change()

    def _list_node(self, items: Sequence[Mapping[str, Any]]) -> None:
        if items:
            self._set_node(items[0])
            self.node_synced.set()

    def _node_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._set_node(obj)

    def _set_node(self, obj: Mapping[str, Any]) -> None:
        new = parse_node(obj)
        if new != self.node:
            changed_rules = new.info != self.node.info
            self.node = new
            if changed_rules:
                self.on_change()

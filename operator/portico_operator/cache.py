"""The operator's caches of the cluster, fed by watch events and fresh listings. No I/O and no
decisions: ``apply`` records one event and says what changed; the controller decides what to
queue. Every replica keeps them warm, so a new leader starts from a complete view.

Events can arrive late (a lagging watch after a listing brought a newer version), so each key
keeps its resourceVersion and a stamp of the last watch event; ``corrections`` turns a fresh
listing into the events the watches missed (``resync.plan_resync``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from portico_common import API_GROUP, API_VERSION
from portico_common.apipaths import core_path, group_path
from portico_common.model import Endpoint

from .lbspec import NodeView, parse_node
from .pools import Pool, parse_pool
from .reachability import GatewayVerdicts, Reachability, parse_report
from .resync import plan_resync, rv_newer
from .service import ServiceView, parse_service
from .slices import endpoints_from_slices

# The kinds the operator caches, with where a fresh listing comes from.
LISTINGS = {
    "services": core_path("services"),
    "namespaces": core_path("namespaces"),
    "nodes": core_path("nodes"),
    "slices": group_path("discovery.k8s.io", "v1", "endpointslices"),
    "pools": group_path(API_GROUP, API_VERSION, "vippools"),
    "lbs": group_path(API_GROUP, API_VERSION, "loadbalancers"),
    "agents": group_path(API_GROUP, API_VERSION, "nodeagents"),
    "reports": group_path(API_GROUP, API_VERSION, "gatewayreports"),
}
# Kinds whose CRD an older install may lack: listed as empty rather than failing the listing.
OPTIONAL_LISTINGS = {"agents", "reports"}


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def slice_service_key(obj: Mapping[str, Any]) -> str | None:
    """'namespace/service' of the Service an EndpointSlice belongs to, or None."""
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    return f"{meta.get('namespace')}/{svc}" if svc else None


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator needs of its own CRs: a full object with managedFields is ~10x larger,
    and there is one per Service."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {"generation": meta.get("generation")},
        "spec": obj.get("spec"),
        "status": obj.get("status"),
    }


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class Change:
    """What one event changed. ``key`` is the object's key; for an EndpointSlice, the key of
    its Service (empty when it has none). ``changed``: the part the operator acts on changed
    (a namespace's labels, a node's view, a pool's spec; always for Services and deletions)."""

    kind: str
    key: str
    deleted: bool
    changed: bool


@dataclass
class ClusterCache:
    services: dict[str, ServiceView] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    nodes: dict[str, NodeView] = field(default_factory=dict)
    slices: dict[str, dict[str, tuple[Endpoint, ...]]] = field(default_factory=dict)  # svc ->
    slice_owner: dict[str, str] = field(default_factory=dict)  # "ns/slice" -> "ns/service"
    lbs: dict[str, dict[str, Any]] = field(default_factory=dict)  # our CRs, slimmed
    pool_objs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, GatewayVerdicts] = field(default_factory=dict)  # gateway -> verdicts
    # What the controller made of the reports (``reachability.decide``): the nodes whose
    # endpoints every NodeRules entry marks unreachable.
    reachability: Reachability = field(default_factory=Reachability)
    # Per kind, each key's resourceVersion and last watch stamp (tombstones too).
    stamp: int = 0
    versions: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in LISTINGS})
    stamps: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in LISTINGS})

    def parsed_pools(self) -> list[Pool]:
        return [parse_pool(n, o.get("spec")) for n, o in self.pool_objs.items()]

    # -- events ---------------------------------------------------------------------------------
    def apply(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> Change | None:
        """Records one watch event (or a listing's correction); None when it is older than what
        is cached and so changes nothing."""
        if kind not in LISTINGS:
            return None  # not cached here (NodeRules: the rules writer's own)
        meta = obj.get("metadata") or {}
        key = object_key(obj)
        deleted = event_type == "DELETED"
        if deleted and self._older_than_cached(kind, key, _rv(obj)):
            # A lagging watch's deletion of an older incarnation (a Service deleted and created
            # again under its name, the new one already listed) must not drop the new one. A
            # listing's corrections carry no resourceVersion and always apply.
            return None
        if kind == "slices":
            return self._slice(obj, deleted)
        if not self._touch(kind, key, None if deleted else _rv(obj)):
            return None
        changed = True
        if kind == "services":
            if deleted:
                self.services.pop(key, None)
            else:
                view = parse_service(obj)
                self.services[view.key] = view
        elif kind == "namespaces":
            if deleted:
                self.namespaces.pop(key, None)
            else:
                labels = dict(meta.get("labels") or {})
                changed = self.namespaces.get(key) != labels
                self.namespaces[key] = labels
        elif kind == "nodes":
            if deleted:
                self.nodes.pop(key, None)
            else:
                node = parse_node(obj)
                changed = self.nodes.get(key) != node
                self.nodes[key] = node
        elif kind == "pools":
            # Not for our own status writes, which happen every second while addresses change
            # and must not re-examine every Service: only a new spec counts.
            old = self.pool_objs.pop(key, None)
            if not deleted:
                self.pool_objs[key] = dict(obj)
                changed = old is None or old.get("spec") != obj.get("spec")
        elif kind == "lbs":
            if deleted:
                self.lbs.pop(key, None)
            else:
                self.lbs[key] = slim(obj)
        elif kind == "reports":
            old_verdicts = self.reports.pop(key, None)
            if not deleted:
                self.reports[key] = parse_report(obj)
            changed = deleted or old_verdicts != self.reports[key]
        return Change(kind, key, deleted, changed)

    def _slice(self, obj: Mapping[str, Any], deleted: bool) -> Change | None:
        skey = object_key(obj)
        if deleted:
            svc = self.slice_owner.pop(skey, None) or slice_service_key(obj)
            self._touch("slices", skey, None)
            if svc is not None:
                self.slices.get(svc, {}).pop((obj.get("metadata") or {}).get("name", ""), None)
                if not self.slices.get(svc):
                    self.slices.pop(svc, None)
        else:
            svc = slice_service_key(obj)
            if svc is None or not self._touch("slices", skey, _rv(obj)):
                return None
            name = (obj.get("metadata") or {}).get("name", "")
            self.slices.setdefault(svc, {})[name] = endpoints_from_slices([obj])
            self.slice_owner[skey] = svc
        return Change("slices", svc or "", deleted, svc is not None)

    def _older_than_cached(self, kind: str, key: str, rv: str | None) -> bool:
        """An event older than what is cached: a listing may have brought a newer version (or
        a newer incarnation of the name) before a lagging watch delivers the older one."""
        cached = self.versions[kind].get(key)
        return bool(rv and cached and rv != cached and not rv_newer(rv, cached))

    def _touch(self, kind: str, key: str, rv: str | None) -> bool:
        """Stamps a watch event; False for an event older than what is cached."""
        if self._older_than_cached(kind, key, rv):
            return False
        self.stamp += 1
        self.stamps[kind][key] = self.stamp
        if rv is None:
            self.versions[kind].pop(key, None)
        else:
            self.versions[kind][key] = rv
        return True

    # -- converging to a fresh listing ----------------------------------------------------------
    def corrections(
        self, listing: Mapping[str, list[dict[str, Any]]], since: int
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The events (kind, MODIFIED | DELETED, object) that make the caches agree with a
        listing started at stamp ``since``: what the watch missed, what vanished unseen. Also
        forgets tombstones older than the listing (no longer needed)."""
        for kind, items in listing.items():
            by_key = {object_key(o): o for o in items}
            if kind == "slices":
                by_key = {k: o for k, o in by_key.items() if slice_service_key(o)}
            take, drop = plan_resync(
                self.stamps[kind],
                self.versions[kind],
                {k: _rv(o) for k, o in by_key.items()},
                since,
            )
            for key in take:
                yield kind, "MODIFIED", by_key[key]
            for key in drop:
                ns, _, name = key.rpartition("/")
                yield (
                    kind,
                    "DELETED",
                    {"metadata": {"name": name, **({"namespace": ns} if ns else {})}},
                )
            stamps = self.stamps[kind]
            for key in [
                k for k, t in stamps.items() if t <= since and k not in self.versions[kind]
            ]:
                del stamps[key]

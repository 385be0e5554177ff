"""What ``kubectl portico status`` reads of one Service: the objects as the API returns them
(JSON), nothing derived. Pure data; ``fetch`` fills it in, ``diagnose`` judges it.

``None`` for a kind means it could not be read (its CRD is not installed, or the user may not
list it): the checks that need it are left out, and the report says so, rather than calling the
Service broken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from portico_common.rulesdoc import shard_name

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Snapshot:
    namespace: str
    name: str
    service: Obj | None  # None: no such Service
    lb: Obj | None = None  # its LoadBalancer CR (same namespace and name)
    slices: tuple[Obj, ...] = ()  # its EndpointSlices
    rules: Obj | None = None  # the NodeRules shard that carries it
    pools: tuple[Obj, ...] | None = ()
    agents: tuple[Obj, ...] | None = ()  # NodeAgent objects, one per node
    reports: tuple[Obj, ...] | None = ()  # GatewayReport objects, one per gateway

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def shard(self) -> str:
        return shard_name(self.key)


@dataclass(frozen=True)
class Listing:
    """Every object ``--all`` reads, once; ``snapshot`` picks one Service's share."""

    services: Sequence[Obj]
    lbs: Sequence[Obj]
    slices: Sequence[Obj]
    rules: Sequence[Obj] | None
    pools: Sequence[Obj] | None
    agents: Sequence[Obj] | None
    reports: Sequence[Obj] | None

    def load_balancer_services(self) -> list[tuple[str, str]]:
        out = []
        for svc in self.services:
            if (svc.get("spec") or {}).get("type") == "LoadBalancer":
                meta = svc.get("metadata") or {}
                out.append((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        return sorted(out)

    def snapshot(self, namespace: str, name: str) -> Snapshot:
        key = f"{namespace}/{name}"
        shard = shard_name(key)
        return Snapshot(
            namespace=namespace,
            name=name,
            service=_find(self.services, namespace, name),
            lb=_find(self.lbs, namespace, name),
            slices=tuple(
                s
                for s in self.slices
                if (s.get("metadata") or {}).get("namespace") == namespace
                and ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == name
            ),
            rules=None if self.rules is None else _find(self.rules, None, shard),
            pools=_tuple(self.pools),
            agents=_tuple(self.agents),
            reports=_tuple(self.reports),
        )


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _find(items: Iterable[Obj], namespace: str | None, name: str) -> Obj | None:
    for obj in items:
        meta = obj.get("metadata") or {}
        if meta.get("name") == name and (namespace is None or meta.get("namespace") == namespace):
            return obj
    return None


def _tuple(items: Sequence[Obj] | None) -> tuple[Obj, ...] | None:
    return None if items is None else tuple(items)

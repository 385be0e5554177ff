"""An in-memory Kubernetes API for unit tests of the operator's reconcile loop.

It keeps what the real apiserver guarantees and the operator relies on: resourceVersions that
grow, 409 on a stale resourceVersion precondition, merge patches, a /status subresource that
changes only status, finalizers that hold a deletion back, owner references that take a
LoadBalancer CR along with its Service, and one ordered event log that each replica's "watch"
reads at its own pace (so views lag, as real watches do). It is not a mock of any reply: the
operator's writes change this state and every check reads it back.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

from portico_common.kube import ApiError

KINDS = {
    "services": "services",
    "namespaces": "namespaces",
    "nodes": "nodes",
    "endpointslices": "slices",
    "vippools": "pools",
    "loadbalancers": "lbs",
    "noderules": "noderules",
    "nodeagents": "agents",
    "gatewayreports": "reports",
    "leases": "leases",
    "events": "events",
}
NAMESPACED = {"services", "slices", "lbs", "leases", "events"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_path(path: str) -> tuple[str, str | None, str | None, str | None]:
    """(kind, namespace, name, subresource)."""
    segs = path.strip("/").split("/")
    rest = segs[2:] if segs[0] == "api" else segs[3:]
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    kind = KINDS[rest[0]]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return kind, ns, name, sub


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[tuple[str, str, dict[str, Any]]] = []  # (kind, type, object)
        self.events: list[dict[str, Any]] = []
        self._rv = itertools.count(1)
        self._uid = itertools.count(1)
        self.writes = 0
        # kind -> how many more writes of it to refuse with a 500 (an apiserver having trouble)
        self.refuse: dict[str, int] = {}

    # -- helpers for tests (the "users" and the other controllers of a cluster) -------------------
    @staticmethod
    def key(kind: str, ns: str | None, name: str) -> tuple[str, str]:
        return kind, f"{ns}/{name}" if kind in NAMESPACED else name

    def get_obj(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.objects.get((kind, key))

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _), o in self.objects.items() if k == kind]

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Creates or replaces (a user's kubectl apply), with no precondition."""
        meta = obj.setdefault("metadata", {})
        key = self.key(kind, meta.get("namespace"), meta["name"])
        old = self.objects.get(key)
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            for keep in ("finalizers", "deletionTimestamp"):
                if keep in old["metadata"]:
                    meta[keep] = old["metadata"][keep]
            if "status" in old and "status" not in obj:
                obj["status"] = old["status"]
        else:
            meta["uid"] = f"uid-{next(self._uid)}"
            meta["creationTimestamp"] = (
                f"2026-01-01T00:00:{next(self._uid) % 60:02d}Z-{meta['uid']}"
            )
        return self._commit(kind, key, obj, "MODIFIED" if old else "ADDED")

    def remove(self, kind: str, key: str) -> None:
        """A user's delete: held back by finalizers, as the apiserver does."""
        obj = self.objects.get((kind, key))
        if obj is None:
            return
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                self._commit(kind, (kind, key), obj, "MODIFIED")
            return
        self._delete((kind, key))

    # -- internals -------------------------------------------------------------------------------
    def _commit(
        self, kind: str, key: tuple[str, str], obj: dict[str, Any], event: str
    ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = obj
        self.log.append((kind, event, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _delete(self, key: tuple[str, str]) -> None:
        obj = self.objects.pop(key)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.log.append((key[0], "DELETED", obj))
        uid = obj["metadata"]["uid"]
        # the garbage collector: dependents go with their owner
        for dkey, dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                self._delete(dkey)

    def _check_rv(self, current: dict[str, Any], body: dict[str, Any], path: str) -> None:
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != current["metadata"]["resourceVersion"]:
            raise ApiError(409, '{"reason": "Conflict", "message": "stale"}', "PATCH", path)

    def _write(self, kind: str, method: str, path: str) -> None:
        self.writes += 1
        if self.refuse.get(kind, 0) > 0:
            self.refuse[kind] -= 1
            raise ApiError(500, '{"reason": "InternalError"}', method, path)

    def _missing(self, method: str, path: str) -> ApiError:
        return ApiError(404, '{"reason": "NotFound", "message": "not found"}', method, path)

    # -- the KubeClient interface the operator uses ------------------------------------------------
    async def get(self, path: str, **_: str) -> dict[str, Any]:
        kind, ns, name, _sub = parse_path(path)
        if name is None:
            items = [
                copy.deepcopy(o)
                for (k, _), o in sorted(self.objects.items())
                if k == kind and (ns is None or o["metadata"].get("namespace") == ns)
            ]
            return {"items": items, "metadata": {"resourceVersion": str(len(self.log))}}
        obj = self.objects.get(self.key(kind, ns, name))
        if obj is None:
            raise self._missing("GET", path)
        return copy.deepcopy(obj)

    def watch(self, path: str, params: dict[str, str] | None = None) -> Any:
        return watch_log(self, parse_path(path)[0], params)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, ns, _name, _ = parse_path(path)
        self._write(kind, "POST", path)
        if kind == "events":
            self.events.append(body)
            return body
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", ns)
        key = self.key(kind, ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, '{"reason": "AlreadyExists"}', "POST", path)
        meta["uid"] = f"uid-{next(self._uid)}"
        return self._commit(kind, key, body, "ADDED")

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, ns, name, _ = parse_path(path)
        self._write(kind, "PUT", path)
        key = self.key(kind, ns, name or "")
        current = self.objects.get(key)
        if current is None:
            raise self._missing("PUT", path)
        self._check_rv(current, body, path)
        return self._commit(kind, key, body, "MODIFIED")

    async def delete(self, path: str) -> dict[str, Any]:
        kind, ns, name, _ = parse_path(path)
        self._write(kind, "DELETE", path)
        key = self.key(kind, ns, name or "")
        if key not in self.objects:
            raise self._missing("DELETE", path)
        self.remove(*key)
        return {}

    async def patch(self, path: str, body: Any, *, kind: str = "merge", **_: Any) -> dict[str, Any]:
        res, ns, name, sub = parse_path(path)
        self._write(res, "PATCH", path)
        key = self.key(res, ns, name or "")
        current = self.objects.get(key)
        if kind == "apply":
            return self._apply(res, key, current, body, sub)
        if current is None:
            raise self._missing("PATCH", path)
        self._check_rv(current, body, path)
        if sub == "status":
            new = copy.deepcopy(current)
            new["status"] = merge_patch(current.get("status") or {}, body.get("status") or {})
        else:
            patch = copy.deepcopy(body)
            patch.get("metadata", {}).pop("resourceVersion", None)
            new = merge_patch(current, patch)
        if new == current:
            return copy.deepcopy(current)  # a no-op patch changes no resourceVersion
        out = self._commit(res, key, new, "MODIFIED")
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._delete(key)
        return out

    def _apply(
        self,
        res: str,
        key: tuple[str, str],
        current: dict[str, Any] | None,
        body: dict[str, Any],
        sub: str | None,
    ) -> dict[str, Any]:
        """Server-side apply, as far as the operator's use of it goes: this manager's fields
        replace what it wrote before."""
        if sub == "status":
            if current is None:
                raise self._missing("PATCH", key[1])
            new = copy.deepcopy(current)
            new["status"] = {**(current.get("status") or {}), **(body.get("status") or {})}
        elif current is None:
            new = copy.deepcopy(body)
            new["metadata"]["uid"] = f"uid-{next(self._uid)}"
            new["metadata"]["generation"] = 1
            owners = new["metadata"].get("ownerReferences") or []
            alive = {o["metadata"]["uid"] for o in self.objects.values()}
            if owners and not any(o.get("uid") in alive for o in owners):
                # the apiserver accepts it; the garbage collector deletes it right after
                out = self._commit(res, key, new, "ADDED")
                self._delete(key)
                return out
        else:
            new = copy.deepcopy(current)
            new["metadata"] = merge_patch(current["metadata"], body.get("metadata") or {})
            if body.get("spec") != current.get("spec"):
                new["spec"] = copy.deepcopy(body.get("spec"))
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if new == current:
            return copy.deepcopy(current)
        return self._commit(res, key, new, "MODIFIED" if current else "ADDED")


class FakeClient:
    """One replica's connection to a FakeKube: every request takes a random time, so that
    concurrent workers interleave as they do against a real apiserver; ``inflight`` counts the
    requests under way (a write sent before a Lease was lost still lands)."""

    def __init__(self, kube: FakeKube, rng: Any, max_latency: float = 0.002) -> None:
        self.kube = kube
        self.rng = rng
        self.max_latency = max_latency
        self.inflight = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.kube, name)
        if name == "watch":
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.inflight += 1
            try:
                await asyncio.sleep(self.rng.random() * self.max_latency)
                return await method(*args, **kwargs)
            finally:
                self.inflight -= 1

        return call


async def watch_log(
    kube: FakeKube, kind: str, params: dict[str, str] | None = None, poll: float = 0.005
) -> Any:
    """A watch on one kind, from now on: the events the log gains."""
    name = None
    for part in ((params or {}).get("fieldSelector") or "").split(","):
        if part.startswith("metadata.name="):
            name = part.split("=", 1)[1]
    cursor = len(kube.log)
    while True:
        while cursor < len(kube.log):
            k, event, obj = kube.log[cursor]
            cursor += 1
            if k == kind and (name is None or obj["metadata"]["name"] == name):
                yield {"type": event, "object": obj}
        await asyncio.sleep(poll)

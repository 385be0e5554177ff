"""Leader election on a coordination.k8s.io Lease, as client-go does it.

Only the leader allocates; standbys keep their view of the cluster warm and take over when the
leader stops renewing. Expiry is judged by the local monotonic clock from the moment this replica
last saw the Lease change, so clock skew between replicas does not matter. A leader that cannot
renew within the renew deadline steps down before its Lease can expire, so two replicas never
act as leader at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from portico_common.kube import ApiError, KubeClient, group_path

log = logging.getLogger("portico.leader")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float,
        renew_deadline: float,
        retry_seconds: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self.kube = kube
        self.path = group_path("coordination.k8s.io", "v1", "leases", namespace, name)
        self.collection = group_path("coordination.k8s.io", "v1", "leases", namespace)
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self.is_leader = False
        self._seen: tuple[str, str] | None = None
        self._seen_at = 0.0
        self._renewed_at = 0.0

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("leadership %s", "acquired" if leader else "lost", extra={"id": self.identity})
            self.on_change(leader)

    async def run(self) -> None:
        try:
            while True:
                try:
                    ok = await self._try_acquire_or_renew()
                except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as e:
                    log.warning("lease: %s", e)
                    ok = False
                now = time.monotonic()
                if ok:
                    self._renewed_at = now
                    self._set(True)
                elif self.is_leader and now - self._renewed_at > self.renew_deadline:
                    self._set(False)
                await asyncio.sleep(self.retry_seconds)
        finally:
            if self.is_leader:
                await self._release()
                self._set(False)

    async def _try_acquire_or_renew(self) -> bool:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_seconds),
                "acquireTime": _now(),
                "renewTime": _now(),
            },
        }
        try:
            lease = await self.kube.get(self.path)
        except ApiError as e:
            if e.status != 404:
                raise
            try:
                await self.kube.create(self.collection, body)
            except ApiError as e2:
                if e2.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime") or "")
        now = time.monotonic()
        if record != self._seen:
            self._seen, self._seen_at = record, now
        if holder and holder != self.identity and now - self._seen_at < self.lease_seconds:
            return False  # someone else holds a lease that has not expired by our clock
        if holder == self.identity:
            body["spec"]["acquireTime"] = spec.get("acquireTime") or _now()
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            updated = await self.kube.replace(self.path, body)
        except ApiError as e:
            if e.status == 409:
                return False  # another replica wrote first
            raise
        s = updated["spec"]
        self._seen, self._seen_at = (s["holderIdentity"], s["renewTime"]), time.monotonic()
        return True

    async def _release(self) -> None:
        # Hand over at once on a clean shutdown: an empty holder is free to take.
        try:
            lease = await self.kube.get(self.path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.kube.replace(self.path, lease)
        except (ApiError, OSError, aiohttp.ClientError) as e:
            log.warning("lease release: %s", e)

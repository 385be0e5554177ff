"""Leader election on a coordination.k8s.io Lease, with client-go's semantics.

Only the leader allocates; standbys keep their view of the cluster warm and take over when the
leader stops renewing. The rules, as client-go's leaderelection has them:

- Expiry of another holder's Lease is judged by the local monotonic clock from the moment this
  replica last saw the Lease record change, against the Lease's own ``leaseDurationSeconds``
  (not our flag): clock skew between replicas does not matter.
- Every attempt (GET + PUT) is bounded by the time left until the renew deadline; the leader
  stops acting the moment the deadline passes without a renewal (``valid()`` turns False at once,
  even if the process was frozen and the loop has not run since), well before its Lease expires
  for the others, so two replicas never act as leader at once.
- The Lease has a connection of its own, so bulk writes never queue a renewal behind them.
- A standby watches the Lease and tries at once when it is released; a clean shutdown releases
  it (after the workers have stopped), so the hand-over takes milliseconds, not a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from portico_common.apipaths import group_path
from portico_common.clock import now_rfc3339
from portico_common.kube import ApiError, KubeClient

log = logging.getLogger("portico.leader")


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
        if not 0 < retry_seconds < renew_deadline < lease_seconds:
            raise ValueError("need 0 < retry-seconds < renew-deadline < lease-seconds")
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
        self._renewed_at = 0.0  # monotonic start of the last successful acquire or renew
        self._wake = asyncio.Event()

    # -- what the rest of the operator asks -------------------------------------------------------
    def valid(self) -> bool:
        """True while this replica may act as leader: it leads and its renew deadline, counted
        from the start of its last successful renewal, has not passed."""
        return self.is_leader and time.monotonic() < self._renewed_at + self.renew_deadline

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("leadership %s (%s)", "acquired" if leader else "lost", self.identity)
            self.on_change(leader)

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Runs until cancelled. Does not release the Lease: ``release`` is the caller's, after
        its workers have stopped."""
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                if self.is_leader and not self.valid():
                    # The term is over (a renewal failed or the process was frozen) even if
                    # the Lease is still ours: whatever comes next is a new term, with a
                    # fresh view, never a continuation of this one.
                    self._set(False)
                started = time.monotonic()
                budget = self.renew_deadline
                if self.is_leader:
                    budget = self._renewed_at + self.renew_deadline - started
                ok = False
                try:
                    ok = await asyncio.wait_for(self._try_acquire_or_renew(), budget)
                except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as e:
                    log.warning("lease: %s", e or type(e).__name__)
                if ok and (not self.is_leader or time.monotonic() < started + budget):
                    self._renewed_at = started
                    self._set(True)
                elif self.is_leader and not self.valid():
                    self._set(False)
                await self._pause()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _pause(self) -> None:
        delay = self.retry_seconds
        if self.is_leader:
            # never sleep through the deadline: the next attempt must have time to finish
            delay = min(delay, max(0.0, self._renewed_at + self.renew_deadline - time.monotonic()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _try_acquire_or_renew(self) -> bool:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.lease_seconds),
                "acquireTime": now_rfc3339(micro=True),
                "renewTime": now_rfc3339(micro=True),
                "leaseTransitions": 0,
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
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if now - self._seen_at < duration:
                return False  # someone else holds a lease that has not expired by our clock
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            body["spec"]["acquireTime"] = spec.get("acquireTime") or now_rfc3339(micro=True)
            body["spec"]["leaseTransitions"] = transitions
        else:
            body["spec"]["leaseTransitions"] = transitions + 1
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

    async def _watch(self) -> None:
        """Wakes the loop when the Lease is released, so a standby takes over at once."""
        params = {"fieldSelector": f"metadata.name={self.name}"}
        while True:
            try:
                async for event in self.kube.watch(self.collection, params):
                    spec = (event.get("object") or {}).get("spec") or {}
                    if not spec.get("holderIdentity") and not self.is_leader:
                        self._wake.set()
            except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as e:
                log.debug("lease watch: %s", e)
            await asyncio.sleep(self.retry_seconds)

    async def release(self, timeout: float = 2.0) -> None:
        """Hands the Lease over on a clean shutdown: an empty holder is free to take at once.
        Call it only after this replica has stopped acting as leader."""
        was = self.is_leader
        self._set(False)
        if not was:
            return
        try:
            await asyncio.wait_for(self._release(), timeout)
        except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as e:
            log.warning("lease release: %s", e or type(e).__name__)

    async def _release(self) -> None:
        lease = await self.kube.get(self.path)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        spec["holderIdentity"] = ""
        spec["leaseDurationSeconds"] = 1
        spec["renewTime"] = now_rfc3339(micro=True)
        await self.kube.replace(self.path, lease)

"""The leader's loop that makes the cluster's VIPPools match the chart's pools ConfigMap
(``--pools-configmap``). What to write is pure (``values_pools``); this watches the one
ConfigMap, lists the pools afresh before each pass (a pool created a moment ago by a user must
count) and writes. A deleted ConfigMap (``helm uninstall``) leaves every pool as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from portico_common.apipaths import core_path
from portico_common.informer import list_and_watch
from portico_common.kube import ApiError, KubeClient

from .errors import NotLeading
from .values_pools import VALUES_LABEL, BadPools, desired_pools, existing_pool, plan
from .writes import Writes, pool_path

log = logging.getLogger("portico.operator.values")


def parse_configmap_ref(ref: str) -> tuple[str, str]:
    """ "NAMESPACE/NAME" -> (namespace, name); raises ValueError."""
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--pools-configmap wants NAMESPACE/NAME, not {ref!r}")
    return namespace, name


class ValuesPools:
    def __init__(self, reader: KubeClient, writes: Writes, ref: str) -> None:
        self.reader = reader
        self.writes = writes
        self.namespace, self.name = parse_configmap_ref(ref)
        self.configmap: Mapping[str, Any] | None = None  # as last seen; None: absent
        self.changed = asyncio.Event()

    def poke(self) -> None:
        """Another pass, e.g. after a resync: a managed pool deleted by hand comes back."""
        self.changed.set()

    def _on_list(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.configmap = items[0] if items else None
        self.changed.set()

    def _on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.configmap = None
            log.info(
                "pools ConfigMap %s/%s deleted: the VIPPools it made are kept",
                self.namespace,
                self.name,
            )
            return
        self.configmap = obj
        self.changed.set()

    async def run(self) -> None:
        """Runs while this replica leads (the controller cancels it with the other workers)."""
        watch = asyncio.create_task(
            list_and_watch(
                self.reader,
                core_path("configmaps", self.namespace),
                self._on_list,
                self._on_event,
                what="pools configmap",
                params={"fieldSelector": f"metadata.name={self.name}"},
            )
        )
        try:
            while True:
                await self.changed.wait()
                self.changed.clear()
                if self.configmap is None:
                    continue
                try:
                    await self.sync(self.configmap)
                except NotLeading:
                    return
                except (ApiError, OSError, TimeoutError) as e:
                    log.warning("pools of %s/%s: %s (retrying)", self.namespace, self.name, e)
                    await asyncio.sleep(2)
                    self.changed.set()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def sync(self, configmap: Mapping[str, Any]) -> None:
        try:
            desired = desired_pools(configmap.get("data"))
        except BadPools as e:
            log.warning(
                "pools ConfigMap %s/%s refused, pools kept: %s", self.namespace, self.name, e
            )
            self.writes.object_event(configmap, "Warning", "InvalidPools", f"pools kept: {e}")
            return
        listing = await self.reader.get(pool_path())
        todo = plan(desired, (existing_pool(o) for o in listing.get("items") or []))
        for name in todo.taken:
            message = (
                f"VIPPool {name} exists without the label {VALUES_LABEL}=true (not made from "
                "these values): left as it is; rename the pool in the values or delete it"
            )
            log.warning("%s", message)
            self.writes.object_event(configmap, "Warning", "PoolNameTaken", message)
        for name, body in todo.create.items():
            await self._write(configmap, name, self.writes.create_pool(body), "created")
        for name, body in todo.update.items():
            await self._write(configmap, name, self.writes.apply_pool(name, body), "")
        for name in todo.delete:
            await self.writes.delete_pool(name)
            log.info("VIPPool %s deleted: no longer in the values", name)

    async def _write(
        self, configmap: Mapping[str, Any], name: str, call: Awaitable[None], done: str
    ) -> None:
        """One pool's write. A conflict (the pool changed or its name was taken since the
        listing) makes another pass over a fresh listing; the apiserver refusing the pool (its
        CEL rules) is reported on the ConfigMap, and the other pools go on."""
        try:
            await call
        except ApiError as e:
            if e.status == 409:
                log.info("VIPPool %s changed meanwhile: another pass", name)
                self.poke()
                return
            if e.status not in (400, 422):
                raise
            log.warning("VIPPool %s from the values refused: %s", name, e)
            self.writes.object_event(
                configmap, "Warning", "PoolRefused", f"VIPPool {name}: {e.message}"
            )
            return
        if done:
            log.info("VIPPool %s %s from the values", name, done)

"""List, then watch from the listing's resourceVersion, forever: the one loop that keeps a
program's cache of a resource equal to the cluster's.

Every relist replaces the whole cache (``on_list`` gets every item), so objects deleted while a
watch was down are forgotten too, which a watch alone never reports. A 410 (the watch's
resourceVersion is too old) relists at once; other errors back off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from .kube import ApiError, KubeClient

log = logging.getLogger("portico.informer")

RELIST_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0)

OnList = Callable[[Sequence[Mapping[str, Any]]], None]
OnEvent = Callable[[str, Mapping[str, Any]], None]  # "ADDED" | "MODIFIED" | "DELETED", object


async def list_and_watch(
    kube: KubeClient,
    path: str,
    on_list: OnList,
    on_event: OnEvent,
    *,
    what: str,
    params: Mapping[str, str] | None = None,
) -> None:
    failures = 0
    while True:
        try:
            listing = await kube.get(path, **dict(params or {}))
            on_list(listing.get("items") or [])
            rv = listing["metadata"]["resourceVersion"]
            failures = 0
            while True:
                async for ev in kube.watch(
                    path, {**(params or {}), "resourceVersion": rv, "allowWatchBookmarks": "true"}
                ):
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        on_event(ev["type"], obj)
        except asyncio.CancelledError:
            raise
        # aiohttp's ServerDisconnectedError and payload errors are not OSErrors.
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as e:
            if not (isinstance(e, ApiError) and e.status == 410):
                failures += 1
                log.warning("%s watch: %s (relisting)", what, e)
            await asyncio.sleep(RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)])

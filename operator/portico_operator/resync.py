"""Converging a watch cache to a fresh listing (kopf relists only on 410 and emits no deletion
for what vanished during a watch gap). Pure: which keys to take from the listing, which to drop.

Every watch event stamps its key with a counter. A listing started at stamp ``since`` is only
trusted for keys the watch has not touched since: those the watch saw later are newer than the
listing, and a key the listing lacks but the watch added meanwhile was created after it.
"""

from __future__ import annotations

from collections.abc import Mapping


def rv_newer(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion ``a`` is newer than ``b``. They are opaque to clients, but the
    apiserver's are etcd revisions; when either is not a number, assume newer."""
    if not a or not b or not a.isdigit() or not b.isdigit():
        return True
    return int(a) > int(b)


def plan_resync(
    stamps: Mapping[str, int], versions: Mapping[str, str], listed: Mapping[str, str], since: int
) -> tuple[list[str], list[str]]:
    """(keys to take from the listing, keys to forget).

    ``stamps``: the last watch stamp of every key the watch has seen, deleted ones included (a
    deletion after the listing began must not be undone by it); ``versions``: the
    resourceVersion of each cached (present) key; ``listed``: each listed key's."""
    take = [k for k, rv in listed.items() if stamps.get(k, -1) <= since and versions.get(k) != rv]
    drop = [k for k in versions if k not in listed and stamps.get(k, -1) <= since]
    return sorted(take), sorted(drop)

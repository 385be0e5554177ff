"""Kubernetes API paths (pure: the clients that use them live elsewhere)."""

from __future__ import annotations

from urllib.parse import quote


def core_path(resource: str, namespace: str | None = None, name: str | None = None) -> str:
    return _path("/api/v1", resource, namespace, name)


def group_path(
    group: str, version: str, resource: str, namespace: str | None = None, name: str | None = None
) -> str:
    return _path(f"/apis/{group}/{version}", resource, namespace, name)


def _path(prefix: str, resource: str, namespace: str | None, name: str | None) -> str:
    p = prefix
    if namespace is not None:
        p += f"/namespaces/{quote(namespace)}"
    p += f"/{resource}"
    if name is not None:
        p += f"/{quote(name)}"
    return p

"""The chart's `pools` values, as VIPPools (pure: what to write; ``values_sync`` writes it).

Helm cannot create a VIPPool in the install that creates the VIPPool CRD, so the chart puts
the pools of its values in a ConfigMap (key ``pools.yaml``: a YAML list of ``{name, ...spec}``)
and the leader makes the cluster's VIPPools match it. The pools it makes carry
``VALUES_LABEL``; only those are ever updated or deleted. A listed name already taken by a
pool without the label (a user's own) is reported, never overwritten. A ConfigMap that does not
parse changes nothing: the whole list is refused with the reason, so a typo loses no pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from portico_common import API_GROUP, API_VERSION

POOLS_KEY = "pools.yaml"
VALUES_LABEL = f"{API_GROUP}/managed-by-values"
# A VIPPool's name is a DNS subdomain (the apiserver's rule for custom resources).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class BadPools(ValueError):
    """The ConfigMap's pools cannot be used; the message says where and why."""


def desired_pools(data: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The ConfigMap's ``data`` -> pool name -> its VIPPool spec. Raises ``BadPools``."""
    text = (data or {}).get(POOLS_KEY)
    if text is None:
        raise BadPools(f"no key {POOLS_KEY!r} in the ConfigMap's data")
    try:
        listed = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadPools(f"{POOLS_KEY} is not YAML: {e}") from None
    if listed is None:
        return {}
    if not isinstance(listed, list):
        raise BadPools(f"{POOLS_KEY} must be a list of pools, not {type(listed).__name__}")
    pools: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise BadPools(f"pools[{i}] must be a mapping with a name and addresses")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise BadPools(f"pools[{i}].name is required")
        if len(name) > 253 or not _NAME.match(name):
            raise BadPools(f"pools[{i}].name {name!r} is not a DNS subdomain name")
        if name in pools:
            raise BadPools(f"pools[{i}].name {name!r} is listed twice")
        addresses = entry.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            raise BadPools(f"pools[{i}].addresses must list at least one CIDR or first-last range")
        pools[name] = {k: v for k, v in entry.items() if k != "name"}
    return pools


@dataclass(frozen=True)
class Existing:
    """A VIPPool in the cluster, as far as the plan needs it."""

    name: str
    managed: bool  # it carries VALUES_LABEL=true
    resource_version: str = ""


def existing_pool(obj: Mapping[str, Any]) -> Existing:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return Existing(
        name=str(meta.get("name", "")),
        managed=labels.get(VALUES_LABEL) == "true",
        resource_version=str(meta.get("resourceVersion", "")),
    )


@dataclass(frozen=True)
class Plan:
    create: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> VIPPool body
    update: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> VIPPool body
    delete: tuple[str, ...] = ()
    taken: tuple[str, ...] = ()  # listed, but a pool without the label has the name


def pool_body(
    name: str, spec: Mapping[str, Any], resource_version: str | None = None
) -> dict[str, Any]:
    """The whole VIPPool the values ask for (a server-side apply body: a field the values no
    longer give is removed). ``resource_version`` makes an update fail rather than write over
    a pool that was replaced in between."""
    metadata: dict[str, Any] = {"name": name, "labels": {VALUES_LABEL: "true"}}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VIPPool",
        "metadata": metadata,
        "spec": dict(spec),
    }


def plan(desired: Mapping[str, Mapping[str, Any]], existing: Iterable[Existing]) -> Plan:
    """What makes the cluster's pools match ``desired``: create what is missing, update (an
    apply that changes nothing writes nothing) what carries the label, delete what carries the
    label and is no longer listed; a pool without the label is never touched."""
    have = {e.name: e for e in existing}
    create: dict[str, dict[str, Any]] = {}
    update: dict[str, dict[str, Any]] = {}
    taken: list[str] = []
    for name, spec in sorted(desired.items()):
        found = have.get(name)
        if found is None:
            create[name] = pool_body(name, spec)
        elif found.managed:
            update[name] = pool_body(name, spec, found.resource_version)
        else:
            taken.append(name)
    delete = tuple(sorted(n for n, e in have.items() if e.managed and n not in desired))
    return Plan(create=create, update=update, delete=delete, taken=tuple(taken))

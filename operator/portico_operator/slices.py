"""Endpoints from the Kubernetes API's EndpointSlices, in the shared Service model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from portico_common.model import Endpoint, EndpointPort


def endpoints_from_slices(slices: Iterable[Mapping[str, Any]]) -> tuple[Endpoint, ...]:
    """Endpoints of a Service's EndpointSlices (API JSON), with each slice's resolved ports."""
    out: list[Endpoint] = []
    for s in slices:
        ports = tuple(
            EndpointPort(p.get("name") or "", p.get("protocol") or "TCP", int(p["port"]))
            for p in s.get("ports") or []
            if p.get("port") is not None
        )
        for ep in s.get("endpoints") or []:
            c = ep.get("conditions") or {}
            ready = c.get("ready") is not False  # nil means ready (API convention)
            serving = c.get("serving") if c.get("serving") is not None else ready
            hints = ep.get("hints") or {}
            zones = tuple(sorted(h["name"] for h in hints.get("forZones") or [] if "name" in h))
            nodes = tuple(sorted(h["name"] for h in hints.get("forNodes") or [] if "name" in h))
            for addr in ep.get("addresses") or []:
                out.append(
                    Endpoint(
                        address=addr,
                        node=ep.get("nodeName"),
                        zone=ep.get("zone"),
                        ready=ready,
                        serving=bool(serving),
                        terminating=bool(c.get("terminating")),
                        for_zones=zones,
                        for_nodes=nodes,
                        ports=ports,
                    )
                )
    return tuple(out)

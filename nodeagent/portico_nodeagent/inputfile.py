"""The renderer's input from a file (``--input``): this node and its Services, as plain JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portico_common.model import LBService, NodeInfo, NodeRulesError
from portico_common.rulesdoc import service_from_entry


def input_from_json(obj: Mapping[str, Any]) -> tuple[NodeInfo, tuple[LBService, ...]]:
    """The renderer's input from plain JSON (what a node agent is handed in a file):
    ``{"node": {"name", "zone", "ips", "podCIDRs"}, "services": [<entry>, ...]}``, each entry as
    a NodeRules object carries it (``portico_common.rulesdoc``). Raises NodeRulesError when
    malformed."""
    try:
        n = obj["node"]
        node = NodeInfo(
            n["name"], n.get("zone"), tuple(n.get("ips") or ()), tuple(n.get("podCIDRs") or ())
        )
        services = tuple(service_from_entry(s) for s in obj.get("services") or [])
    except (KeyError, TypeError, ValueError) as e:
        raise NodeRulesError(f"malformed node rules input: {type(e).__name__}: {e}") from None
    return node, services

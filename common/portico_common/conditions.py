"""metav1.Condition values, as both the operator and the gateway write them into status: the
transition time moves only when the status does, and a write is needed only when something but
that time changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["condition", "same_conditions"]


def condition(
    kind: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status does."""
    text = "Unknown" if status is None else ("True" if status else "False")
    since = now
    for c in previous:
        if c.get("type") == kind and c.get("status") == text:
            since = c.get("lastTransitionTime") or now
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def same_conditions(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> bool:
    """Equal but for lastTransitionTime: what decides whether a status write is needed."""

    def norm(cs: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                c.get("type"),
                c.get("status"),
                c.get("reason"),
                c.get("message"),
                # Services have no metadata.generation: a 0 written is read back as absent.
                c.get("observedGeneration") or 0,
            )
            for c in cs
        )

    return norm(a) == norm(b)

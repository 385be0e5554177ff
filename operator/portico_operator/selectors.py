"""Kubernetes label selectors (matchLabels, matchExpressions), pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPS = {"In", "NotIn", "Exists", "DoesNotExist"}


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """An empty selector matches everything, as in Kubernetes."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def parse_selector(raw: Mapping[str, Any] | None) -> Selector:
    if not raw:
        return Selector()
    # The wrong shapes are errors too (not AttributeError, nor a string taken as its characters).
    if not isinstance(raw, Mapping):
        raise SelectorError("a selector must be an object")
    labels = raw.get("matchLabels") or {}
    exprs = raw.get("matchExpressions") or []
    if not isinstance(labels, Mapping):
        raise SelectorError("matchLabels must be an object")
    if not isinstance(exprs, list) or not all(isinstance(e, Mapping) for e in exprs):
        raise SelectorError("matchExpressions must be a list of objects")
    reqs: list[Requirement] = []
    for key, value in labels.items():
        reqs.append(Requirement(str(key), "In", frozenset([str(value)])))
    for expr in exprs:
        op = expr.get("operator")
        key = expr.get("key")
        raw_values = expr.get("values") or []
        if not isinstance(raw_values, list):
            raise SelectorError(f"values of {key!r} must be a list")
        values = frozenset(str(v) for v in raw_values)
        if op not in _OPS:
            raise SelectorError(f"matchExpressions operator {op!r} is not one of {sorted(_OPS)}")
        if not key:
            raise SelectorError("matchExpressions entry without a key")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"operator {op} on {key!r} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"operator {op} on {key!r} takes no values")
        reqs.append(Requirement(str(key), op, values))
    return Selector(tuple(reqs))

"""What a table holds, in comparable form (pure): a render's ``add`` commands, a ``Table``
being built and the kernel's ``nft -j list table`` all read into a ``RulesIndex``; or the
kernel's table read in parts (a terse listing, then each map's elements), compared or read as
they come.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import nftnames as N
from .ruleset import Json, Table, canon, canon_value


@dataclass
class RulesIndex:
    """What a table holds, in comparable form: a render's ``add`` commands and the kernel's
    ``nft -j list table`` both read into this."""

    table: bool = False
    chains: dict[str, Json] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> canonical exprs
    maps: dict[str, Json] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # map -> key -> value
    sets: dict[str, Json] = field(default_factory=dict)

    def same_as(self, other: RulesIndex) -> bool:
        return (
            self.table == other.table
            and self.chains == other.chains
            and self.rules == other.rules
            and self.maps == other.maps
            and self.elements == other.elements
            and self.sets == other.sets
        )

    def differences(self, other: RulesIndex, limit: int = 10) -> list[str]:
        """What differs from ``other``, briefly (for logs and test failures)."""
        out: list[str] = []
        if self.table != other.table:
            out.append(f"table present: {self.table} vs {other.table}")
        for what in ("chains", "rules", "maps", "elements", "sets"):
            mine, theirs = getattr(self, what), getattr(other, what)
            for name in sorted(set(mine) | set(theirs)):
                if mine.get(name) != theirs.get(name):
                    out.append(f"{what} {name}: {mine.get(name)} vs {theirs.get(name)}")
        return out[:limit]

    def counts(self) -> dict[str, int]:
        return {
            "chains": len(self.chains),
            "rules": sum(len(r) for r in self.rules.values()),
            "maps": len(self.maps),
            "elements": sum(len(e) for e in self.elements.values()),
            "sets": len(self.sets),
        }


CHAIN_KEYS = ("name", "type", "hook", "prio", "policy")


def index_rules(doc: Mapping[str, Any]) -> RulesIndex:
    """Reads a render (``add`` commands) or a kernel listing of Portico's table. Objects of other
    tables are ignored; handles, sizes and dynamic set contents are not part of the content."""
    idx = RulesIndex()
    for item in doc.get("nftables") or []:
        if "add" in item:
            item = item["add"]
        (kind, obj), *_ = item.items()
        if not isinstance(obj, Mapping) or kind == "metainfo":
            continue
        if obj.get("family") != N.FAMILY or obj.get("table", obj.get("name")) != N.TABLE:
            continue
        if kind == "table":
            idx.table = True
        elif kind == "chain":
            idx.chains[obj["name"]] = {k: obj[k] for k in CHAIN_KEYS if k in obj}
            idx.rules.setdefault(obj["name"], [])
        elif kind == "rule":
            idx.rules.setdefault(obj["chain"], []).append(canon(obj["expr"]))
        elif kind == "map":
            idx.maps[obj["name"]] = {"name": obj["name"], "type": obj["type"], "map": obj["map"]}
            elems = idx.elements.setdefault(obj["name"], {})
            for k, v in obj.get("elem") or []:
                elems[canon(k)] = canon_value(v)
        elif kind == "element":
            elems = idx.elements.setdefault(obj["name"], {})
            for k, v in obj.get("elem") or []:
                elems[canon(k)] = canon_value(v)
        elif kind == "set":
            idx.sets[obj["name"]] = {
                "name": obj["name"],
                "type": obj["type"],
                "flags": ["timeout"],
                "timeout": obj.get("timeout"),
            }
    return idx


def same_outline(a: RulesIndex, b: RulesIndex) -> bool:
    """Whether two tables are the same but for their maps' elements (of which only which maps
    have them is compared): a terse listing's index (no elements) against a render's."""
    return (
        a.table == b.table
        and a.chains == b.chains
        and a.rules == b.rules
        and a.maps == b.maps
        and a.sets == b.sets
        and a.elements.keys() == b.elements.keys()
    )


def read_elements(elements: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One map's elements, (key, value) as canonical text, as an index holds them (values
    interned, as ``canon_value`` does)."""
    return {k: sys.intern(v) for k, v in elements}


def holds_elements(want: Mapping[str, str], elements: Iterable[tuple[str, str]]) -> bool:
    """Whether a map's elements, (key, value) as canonical text, are ``want`` (an index's),
    compared as they come: none is kept, and the first difference ends it."""
    n = 0
    for k, v in elements:
        if want.get(k) != v:
            return False
        n += 1
    return n == len(want)  # a map's keys are distinct


def index_of(t: Table, *, maps: bool = True) -> RulesIndex:
    """``index_rules(t.doc())``, straight from the table (``maps=False``: a fragment's elements
    only, the maps being the fixed part's)."""
    idx = RulesIndex(table=True)
    for name, c in t.chains.items():
        idx.chains[name] = {k: c[k] for k in CHAIN_KEYS if k in c}
        idx.rules[name] = [canon(expr) for expr in t.rules.get(name, [])]
    if maps:
        idx.maps = {
            n: {"name": m["name"], "type": m["type"], "map": m["map"]} for n, m in t.maps.items()
        }
    for name, elems in t.elements.items():
        if elems or maps:  # a fragment's maps without elements: nothing to hold
            idx.elements[name] = dict(elems)
    for name, st in t.sets.items():
        idx.sets[name] = {
            "name": st["name"],
            "type": st["type"],
            "flags": ["timeout"],
            "timeout": st.get("timeout"),
        }
    return idx

"""From one table to another (pure): the libnftables commands that change only what differs
between two renders, or between the kernel's listing and a render; and the commands that
replace or delete the whole table.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import nftnames as N
from .ruleset import Json
from .rulesindex import RulesIndex, index_rules


@dataclass
class Touched:
    """What may differ between two renders (so a diff need not compare the rest): chains
    (with their rules), sets, and elements by map."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    elements: dict[str, set[str]] = field(default_factory=dict)  # map -> canonical keys


def document_of(idx: RulesIndex) -> Json:
    """The ``add`` commands that build the table ``idx`` describes (what ``diff_rules`` gives
    from nothing), in the order ``Table.doc`` uses: table, sets, maps, chains, elements,
    rules."""
    return diff_rules(RulesIndex(), idx)


def _as_index(x: RulesIndex | Mapping[str, Any]) -> RulesIndex:
    return x if isinstance(x, RulesIndex) else index_rules(x)


def _restricted(idx: RulesIndex, touched: Touched) -> RulesIndex:
    """Only what ``touched`` names of ``idx`` (and all its maps' definitions)."""
    return RulesIndex(
        table=idx.table,
        chains={c: idx.chains[c] for c in touched.chains if c in idx.chains},
        rules={c: idx.rules[c] for c in touched.chains if c in idx.rules},
        maps=idx.maps,
        elements={
            m: {k: elems[k] for k in touched.elements.get(m, ()) if k in elems}
            for m, elems in idx.elements.items()
        },
        sets={st: idx.sets[st] for st in touched.sets if st in idx.sets},
    )


def diff_rules(
    old: RulesIndex | Mapping[str, Any],
    new: RulesIndex | Mapping[str, Any],
    touched: Touched | None = None,
) -> Json:
    """The libnftables JSON that turns table ``old`` (a render, or the kernel's listing) into
    ``new`` in one transaction, touching only what differs: map elements are added and deleted
    one by one, a chain whose rules changed is flushed and refilled, chains and sets that appear
    or go are added or deleted. Dynamic set contents (ClientIP affinity pins) are kept. An empty
    command list means the two are the same. With ``touched`` (a ``Render``'s, from its base),
    only what it names is compared: everything else must be the same in both.

    A fixed object whose definition changed (a base chain's hook or priority, a map's type) is
    deleted and added again; an old table missing entirely gives the full render."""
    o, n = _as_index(old), _as_index(new)
    if touched is not None:
        o, n = _restricted(o, touched), _restricted(n, touched)
    where = {"family": N.FAMILY, "table": N.TABLE}
    cmds: list[Json] = []
    if not n.table:
        if o.table:
            cmds.append({"delete": {"table": {"family": N.FAMILY, "name": N.TABLE}}})
        return {"nftables": cmds}
    if not o.table:
        o = RulesIndex()
        cmds.append({"add": {"table": {"family": N.FAMILY, "name": N.TABLE}}})

    redefined_chains = {c for c in n.chains if c in o.chains and o.chains[c] != n.chains[c]}
    redefined_maps = {m for m in n.maps if m in o.maps and o.maps[m] != n.maps[m]}
    redefined_sets = {s for s in n.sets if s in o.sets and o.sets[s] != n.sets[s]}
    gone_chains = [c for c in o.chains if c not in n.chains or c in redefined_chains]
    gone_maps = [m for m in o.maps if m not in n.maps or m in redefined_maps]
    gone_sets = [s for s in o.sets if s not in n.sets or s in redefined_sets]

    # 1. Empty what goes away or is redefined (nothing may refer to it when it is deleted).
    for c in gone_chains:
        if o.rules.get(c):
            cmds.append({"flush": {"chain": {**where, "name": c}}})
    changed = [
        c
        for c in n.chains
        if c in o.chains and c not in redefined_chains and o.rules.get(c) != n.rules.get(c)
    ]
    for c in changed:
        if o.rules.get(c):
            cmds.append({"flush": {"chain": {**where, "name": c}}})
    # 2. Elements that go or change value (a verdict cannot be replaced in place).
    for m, old_elems in o.elements.items():
        if m in gone_maps:
            continue
        new_elems = n.elements.get(m, {})
        drop = [k for k, v in old_elems.items() if new_elems.get(k) != v]
        if drop:
            keys = [json.loads(k) for k in sorted(drop)]
            cmds.append({"delete": {"element": {**where, "name": m, "elem": keys}}})
    # 3. Delete what is gone (after the flushes and element deletions that referred to it).
    cmds += [{"delete": {"chain": {**where, "name": c}}} for c in gone_chains]
    cmds += [{"delete": {"map": {**where, "name": m}}} for m in gone_maps]
    cmds += [{"delete": {"set": {**where, "name": s}}} for s in gone_sets]
    # 4. Add what is new, then fill.
    new_sets = [s for s in n.sets if s not in o.sets or s in redefined_sets]
    new_maps = [m for m in n.maps if m not in o.maps or m in redefined_maps]
    new_chains = [c for c in n.chains if c not in o.chains or c in redefined_chains]
    cmds += [{"add": {"set": {**where, **n.sets[s]}}} for s in new_sets]
    cmds += [{"add": {"map": {**where, **n.maps[m]}}} for m in new_maps]
    cmds += [{"add": {"chain": {**where, **n.chains[c]}}} for c in new_chains]
    for m, new_elems in n.elements.items():
        old_elems = {} if m in new_maps else o.elements.get(m, {})
        add = [k for k, v in new_elems.items() if old_elems.get(k) != v]
        if add:
            items = [[json.loads(k), json.loads(new_elems[k])] for k in sorted(add)]
            cmds.append({"add": {"element": {**where, "name": m, "elem": items}}})
    for c in [*changed, *new_chains]:
        for expr in n.rules.get(c, []):
            cmds.append({"add": {"rule": {**where, "chain": c, "expr": json.loads(expr)}}})
    return {"nftables": cmds}


def replace_table(doc: Mapping[str, Any]) -> Json:
    """One transaction that removes whatever the table holds and builds ``doc`` instead: the
    fallback when an incremental change fails. (``add`` first, so that ``delete`` never fails on
    a missing table.) Affinity pins are lost; established flows keep their conntrack NAT."""
    t = {"family": N.FAMILY, "name": N.TABLE}
    return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}, *doc["nftables"]]}


# A table built from nothing with more elements than this is sent in several transactions:
# libnftables holds a whole transaction in memory at once, ~2.4 KiB an element (10,000
# Services of 3 ports and 6 endpoints: 170,000 elements, ~400 MiB in one transaction), a step
# of this size ~13 MiB, and the load takes no longer (bench/nodeagent_apply.py).
STEP_ELEMENTS = 5_000

_FILTERS = frozenset(N.FIREWALL.values())


def _fill_order(idx: RulesIndex, name: str) -> int:
    """When a table is built in steps, the order its maps are filled in, so that no traffic is
    dispatched before what it is sent to is there: 0, the source-range checks; 1, what dispatch
    leads to (endpoint addresses and ports, pick chains, masquerade decisions); 2, the maps that
    dispatch, keyed by a packet's destination port (VIP . protocol . port, protocol . port)."""
    if name in _FILTERS:
        return 0
    key = idx.maps.get(name, {}).get("type")
    return 2 if key is None or (key[-1] if isinstance(key, list) else key) == "inet_service" else 1


class Build(Mapping[str, Any]):
    """``document_of(idx)``, the commands that build the table ``idx`` describes from nothing,
    made only when read: ``steps()`` makes them a transaction at a time, so that the JSON of
    every element (~600 bytes each) is never held at once; ``["nftables"]`` gives all of them
    (counted without being made)."""

    def __init__(self, idx: RulesIndex, size: int = STEP_ELEMENTS) -> None:
        self.index, self.size = idx, size

    def __getitem__(self, key: str) -> _Commands:
        if key != "nftables":
            raise KeyError(key)
        return _Commands(self.index)

    def __iter__(self) -> Iterator[str]:
        yield "nftables"

    def __len__(self) -> int:
        return 1

    def steps(self) -> Iterator[Json]:
        """The transactions to run, in order. One, the whole document, unless the table has
        more than ``size`` elements; then first the table with its sets, maps, chains and rules
        but no elements (on its own it changes no packet's path: every Service is reached
        through a map element), then the elements in steps of at most ``size``, map by map in
        ``_fill_order``."""
        idx, size = self.index, self.size
        if sum(len(e) for e in idx.elements.values()) <= size:
            yield document_of(idx)
            return
        yield document_of(replace(idx, elements={}))
        where = {"family": N.FAMILY, "table": N.TABLE}
        step: list[Json] = []
        room = size
        for m in sorted(idx.elements, key=lambda m: _fill_order(idx, m)):
            elems, keys, i = idx.elements[m], sorted(idx.elements[m]), 0
            while i < len(keys):
                part = keys[i : i + room]
                items = [[json.loads(k), json.loads(elems[k])] for k in part]
                step.append({"add": {"element": {**where, "name": m, "elem": items}}})
                i, room = i + len(part), room - len(part)
                if not room:
                    yield {"nftables": step}
                    step, room = [], size
        if step:
            yield {"nftables": step}


class _Commands(Collection[Json]):
    """A ``Build``'s commands: counted from its index, made when iterated."""

    def __init__(self, idx: RulesIndex) -> None:
        self.index = idx

    def __len__(self) -> int:
        idx = self.index
        n = 1 + len(idx.sets) + len(idx.maps) + len(idx.chains)
        return n + sum(1 for e in idx.elements.values() if e) + sum(map(len, idx.rules.values()))

    def __iter__(self) -> Iterator[Json]:
        return iter(document_of(self.index)["nftables"])

    def __contains__(self, cmd: object) -> bool:
        return cmd in document_of(self.index)["nftables"]


def in_steps(cmds: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The transactions to run for ``cmds``: a ``Build``'s steps, else ``cmds`` itself."""
    if isinstance(cmds, Build):
        yield from cmds.steps()
    else:
        yield cmds


def delete_table() -> Json:
    t = {"family": N.FAMILY, "name": N.TABLE}
    return {"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}

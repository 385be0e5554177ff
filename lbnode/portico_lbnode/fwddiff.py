"""The gateway's forwarding table, changed and read back (pure): ``diff_fwd(old, new)`` turns
one ``FwdRules`` into another touching only what differs, and ``parse_listing`` reads the kernel's
listing of the table back into ``FwdRules`` (what ``fwdrules`` renders)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .flowrules import is_helper
from .fwdrules import (
    INGRESS_CHAIN_PREFIX,
    WHERE,
    BaseChain,
    Collection,
    FwdRules,
    Json,
    canon,
    chain_json,
    element_cmd,
    rule_cmd,
)


# ==============================================================================================
# the differ
# ==============================================================================================
def diff_fwd(old: FwdRules, new: FwdRules) -> list[Json]:
    """The commands that turn table ``old`` into ``new`` in one transaction: elements added and
    deleted one by one in sets and maps whose definition is unchanged, chains flushed and
    refilled only when their rules changed, chains, sets and maps added or deleted when they
    appear or go. An empty list means the two are the same.

    Order: (1) flush chains that go or change, so no rule refers to what goes; (2) delete
    elements, among them vmap elements that point at chains that go; (3) delete those chains,
    sets, maps and counters; (4) add new sets, maps and counters, then chains (elements and
    rules refer to them); (5) add elements; (6) add rules. A counter kept is not touched (its
    values stay, ``vipstats``)."""
    redefined_colls = {
        n for n, c in new.collections.items() if n in old.collections and old.collections[n] != c
    }
    redefined_chains = {n for n, c in new.chains.items() if n in old.chains and old.chains[n] != c}
    gone_colls = [n for n in old.collections if n not in new.collections or n in redefined_colls]
    gone_chains = [n for n in old.chains if n not in new.chains or n in redefined_chains]
    # A kept chain whose rules refer to a set that is deleted and added again must let go of
    # it too (the kernel refuses to delete a set in use).
    refs = {f'"@{n}"' for n in redefined_colls}
    changed = [
        n
        for n in new.chains
        if n in old.chains
        and n not in redefined_chains
        and (
            old.rules.get(n, ()) != new.rules.get(n, ())
            or any(ref in r for ref in refs for r in old.rules.get(n, ()))
        )
    ]
    # The pin helpers' rules are nft text that JSON cannot write: they are static, and a table
    # without them is rebuilt (``FwdTable``), never diffed into.
    changed = [n for n in changed if not is_helper(n)]
    cmds: list[Json] = []
    for n in [*gone_chains, *changed]:
        if old.rules.get(n):
            cmds.append({"flush": {"chain": {**WHERE, "name": n}}})
    for name, old_elems in old.elements.items():
        if name in gone_colls:
            continue
        new_elems = new.elements.get(name, {})
        if new_elems is old_elems:
            continue  # shared by two renders (``fwdmemo``): the same, without a look
        drop = {k: v for k, v in old_elems.items() if k not in new_elems or new_elems[k] != v}
        if drop:
            cmds.append(element_cmd("delete", name, old.collections[name], drop))
    cmds += [{"delete": {"chain": {**WHERE, "name": n}}} for n in gone_chains]
    for n in gone_colls:
        cmds.append({"delete": {old.collections[n].kind: {**WHERE, "name": n}}})
    cmds += [
        {"delete": {"counter": {**WHERE, "name": n}}} for n in sorted(old.counters - new.counters)
    ]
    added_colls = [n for n in new.collections if n not in old.collections or n in redefined_colls]
    added_chains = [n for n in new.chains if n not in old.chains or n in redefined_chains]
    for n in added_colls:
        c = new.collections[n]
        cmds.append({"add": {c.kind: c.json(n)}})
    cmds += [
        {"add": {"counter": {**WHERE, "name": n}}} for n in sorted(new.counters - old.counters)
    ]
    cmds += [{"add": {"chain": chain_json(n, new.chains[n])}} for n in added_chains]
    for name, new_elems in new.elements.items():
        base = {} if name in added_colls else old.elements.get(name, {})
        if base is new_elems:
            continue
        add = {k: v for k, v in new_elems.items() if k not in base or base[k] != v}
        if add:
            cmds.append(element_cmd("add", name, new.collections[name], add))
    for n in [*changed, *added_chains]:
        if is_helper(n) and new.rules.get(n):
            raise ValueError(f"chain {n} is written as nft text: rebuild the table")
        cmds += [rule_cmd(n, r) for r in new.rules.get(n, ())]
    return cmds


# ==============================================================================================
# the kernel's listing read back
# ==============================================================================================
def parse_listing(listing: Mapping[str, Any]) -> FwdRules:
    """``nft -j list table netdev portico-gw`` as FwdRules, comparable with a render."""
    out = FwdRules()
    for item in listing.get("nftables") or []:
        kind, obj = next(iter(item.items()))
        if kind in ("metainfo", "table"):
            continue
        if kind == "counter":  # its values are read at scrape time (``vipmetrics``)
            out.counters.add(obj["name"])
            continue
        if kind == "chain":
            if "hook" in obj:
                # nft 1.0.6 leaves a netdev chain's device out of its JSON listing; the chain's
                # name carries it (``ingress-<dev>``).
                dev = obj.get("dev") or obj["name"].removeprefix(INGRESS_CHAIN_PREFIX)
                out.chains[obj["name"]] = BaseChain(
                    dev,
                    int(obj.get("prio", 0)),
                    obj["hook"],
                    obj.get("type", ""),
                    obj.get("policy", ""),
                )
            else:
                out.chains[obj["name"]] = None
            out.rules.setdefault(obj["name"], ())
        elif kind == "rule":
            rules = out.rules.get(obj["chain"], ())
            out.rules[obj["chain"]] = (*rules, canon(obj["expr"]))
        elif kind in ("set", "map"):
            typ = obj["type"]
            c = Collection(
                tuple(typ) if isinstance(typ, list) else typ,
                obj.get("map") if kind == "map" else None,
                tuple(obj.get("flags") or ()),
                obj.get("size"),
                obj.get("timeout"),
            )
            out.collections[obj["name"]] = c
            elems: dict[str, str | None] = {}
            # The flows maps' pins are the packet path's, not part of what was applied.
            for e in () if c.dynamic else obj.get("elem") or []:
                if kind == "map":
                    elems[canon(e[0])] = canon(e[1])
                else:
                    elems[canon(e)] = None
            out.elements[obj["name"]] = elems
    return out

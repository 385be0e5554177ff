"""A strict fake of one nftables table as the kernel keeps it, for the renderers' and differs'
tests (``lbnode/test_fwdrules``, ``nodeagent/test_rulesdiff_props``) and the packet tracer
(``nfttrace``).

It runs libnftables JSON commands (``add``/``flush``/``delete`` of table, chain, rule, set, map
and element; ``add``/``delete`` of a named counter) and refuses, with :class:`Refused`, what
the kernel refuses:

* anything in a table that does not exist; a chain, set, map or element that is not there
  (flushed, deleted, added to);
* an object added again with another definition (a base chain's hook or priority, a set's type
  or flags: ``add`` cannot change them), a set added under a map's name or the other way round;
* a rule or element that refers to a chain, set or map that does not exist, or that jumps to a
  base chain;
* a chain deleted while it has rules or while a rule or a verdict-map element jumps to it; a set
  or map deleted while a rule or element refers to it; a counter deleted while a rule counts
  into it, or a rule that names a counter that does not exist;
* an element added when its key is there already, or deleted when absent; an interval set's
  element that overlaps another;
* at the end of a transaction, a NAT statement (dnat, snat, masquerade, redirect) in a chain
  that a ``filter`` base chain reaches, by jump or goto or through a verdict map it looks up
  or dispatches with ("Operation not supported": the kernel validates a verdict map's chains
  from every chain that uses the map, even as a plain lookup).

(Stricter than the kernel in one way, on purpose: ``add element`` of an existing key is refused
although the kernel accepts an identical one, so that a differ which adds what is there fails.)

Rules and elements are kept as canonical JSON text (sorted keys), so two tables compare equal
when their content does. ``listing()`` gives the table back the way ``nft -j list table`` does.
Only one table: a command naming another raises :class:`Unsupported`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

Json = dict[str, Any]


class Refused(AssertionError):
    """The kernel would refuse this command (the transaction would fail)."""


class Unsupported(ValueError):
    """A command or form this fake does not implement (never silently accepted)."""


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def refs(value: Any) -> set[str]:
    """The chains (``chain:<name>``), sets or maps (``set:<name>``) and named counters
    (``counter:<name>``) a JSON expression, rule or verdict refers to."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("jump", "goto") and isinstance(v, dict):
                out.add("chain:" + v["target"])
            elif k == "counter" and isinstance(v, str):
                out.add("counter:" + v)
            else:
                out |= refs(v)
    elif isinstance(value, list):
        for v in value:
            out |= refs(v)
    elif isinstance(value, str) and value.startswith("@"):
        out.add("set:" + value[1:])
    return out


_VERBS = ("add", "flush", "delete")
_KINDS = ("table", "chain", "rule", "set", "map", "element", "counter")
_NOT_DEFINITION = ("family", "table", "elem", "handle")


def _interval(key: Any) -> tuple[int, int, int]:
    """An interval set element as (version, first, last)."""
    if isinstance(key, str):
        ip = ipaddress.ip_address(key)
        return ip.version, int(ip), int(ip)
    if isinstance(key, dict) and "prefix" in key:
        net = ipaddress.ip_network(f"{key['prefix']['addr']}/{key['prefix']['len']}")
        return net.version, int(net.network_address), int(net.broadcast_address)
    if isinstance(key, dict) and "range" in key:
        lo, hi = (ipaddress.ip_address(a) for a in key["range"])
        return lo.version, int(lo), int(hi)
    raise Unsupported(f"interval element {key!r}")


class Kernel:
    """One table, strict (see the module docstring)."""

    def __init__(self) -> None:
        self.family: str | None = None
        self.name: str | None = None
        self.chains: dict[str, Json] = {}  # name -> definition (name, type, hook, prio, ...)
        self.rules: dict[str, list[str]] = {}  # chain -> canonical expressions, in order
        self.colls: dict[str, Json] = {}  # set or map name -> definition ("map" key: a map)
        self.elems: dict[str, dict[str, str | None]] = {}  # name -> key -> value (None: set)
        self.counters: set[str] = set()  # named counters (their values are not modelled)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, doc: Mapping[str, Any] | Iterable[Json]) -> Kernel:
        """A kernel holding ``doc``: libnftables commands (a render, a replace) or a listing
        (``nft -j list table``: objects without a verb, elements inline)."""
        k = cls()
        items = list(doc["nftables"] if isinstance(doc, Mapping) else doc)
        if all(next(iter(i)) in (*_VERBS, "metainfo") for i in items):
            k.run(items)
            return k
        by_kind: dict[str, list[Json]] = {}
        for item in items:
            ((kind, obj),) = item.items()
            if kind != "metainfo":
                by_kind.setdefault(kind, []).append(obj)
        for kind in by_kind:
            if kind not in ("table", "counter", "chain", "set", "map", "rule"):
                raise Unsupported(f"listing object {kind!r}")
        # Chains before the elements that jump to them, sets before the rules that use them.
        for kind in ("table", "counter", "chain", "set", "map", "rule"):
            for obj in by_kind.get(kind, []):
                obj = dict(obj)
                elem = obj.pop("elem", None)
                getattr(k, f"add_{kind}")(obj)
                if elem:
                    k.add_element({**obj, "name": obj["name"], "elem": elem})
        k.validate()
        return k

    def run(self, doc: Mapping[str, Any] | Iterable[Json]) -> None:
        """Runs commands (a ``{"nftables": [...]}`` document or the list), in order, as one
        transaction: a refused one leaves the table as it was."""
        before = self._state()
        try:
            self._run(doc)
        except Refused:
            self._restore(before)
            raise

    def _state(self) -> tuple[Any, ...]:
        return (
            self.family,
            self.name,
            dict(self.chains),
            {k: list(v) for k, v in self.rules.items()},
            dict(self.colls),
            {k: dict(v) for k, v in self.elems.items()},
            set(self.counters),
        )

    def _restore(self, state: tuple[Any, ...]) -> None:
        (
            self.family,
            self.name,
            self.chains,
            self.rules,
            self.colls,
            self.elems,
            self.counters,
        ) = state

    def _run(self, doc: Mapping[str, Any] | Iterable[Json]) -> None:
        for cmd in doc["nftables"] if isinstance(doc, Mapping) else doc:
            ((verb, body),) = cmd.items()
            if verb == "metainfo":
                continue
            ((kind, obj),) = body.items()
            if verb not in _VERBS or kind not in _KINDS:
                raise Unsupported(f"command {verb} {kind}")
            handler = getattr(self, f"{verb}_{kind}", None)
            if handler is None:
                raise Unsupported(f"command {verb} {kind}")
            handler(obj)
        self.validate()

    _NAT = ("dnat", "snat", "masquerade", "redirect")

    def validate(self) -> None:
        """What the kernel checks when a transaction commits: no NAT statement is reachable
        from a filter base chain (through jumps, gotos and the chains of verdict maps)."""
        for base, d in self.chains.items():
            if d.get("type") != "filter":
                continue
            seen: set[str] = set()
            todo = [base]
            while todo:
                chain = todo.pop()
                if chain in seen:
                    continue
                seen.add(chain)
                for text in self.rules.get(chain, []):
                    for stmt in json.loads(text):
                        if any(k in stmt for k in self._NAT):
                            raise Refused(
                                f"Operation not supported: {next(iter(stmt))} in {chain}, "
                                f"reached from filter chain {base}"
                            )
                    for ref in refs(json.loads(text)):
                        kind, name = ref.split(":", 1)
                        if kind == "chain":
                            todo.append(name)
                        elif self.colls.get(name, {}).get("map") == "verdict":
                            for value in self.elems.get(name, {}).values():
                                todo += [
                                    r.split(":", 1)[1] for r in refs(json.loads(value or "null"))
                                ]

    # -- tables ------------------------------------------------------------------------------
    def _in_table(self, obj: Json, key: str = "table") -> None:
        where = (obj.get("family"), obj.get(key))
        if self.name is not None and where != (self.family, self.name):
            raise Unsupported(f"this fake holds one table ({self.family} {self.name}): {where}")
        if self.name is None:
            raise Refused(f"no table {where[0]} {where[1]}")

    def add_table(self, obj: Json) -> None:
        if self.name is None:
            self.family, self.name = obj["family"], obj["name"]
        self._in_table(obj, "name")

    def flush_table(self, obj: Json) -> None:
        self._in_table(obj, "name")
        for rs in self.rules.values():
            rs.clear()

    def delete_table(self, obj: Json) -> None:
        self._in_table(obj, "name")
        self.__init__()  # type: ignore[misc]

    # -- chains and rules --------------------------------------------------------------------
    @staticmethod
    def _def(obj: Json) -> Json:
        return {k: v for k, v in obj.items() if k not in _NOT_DEFINITION}

    def _chain(self, obj: Json) -> str:
        self._in_table(obj)
        n = obj["name"] if "name" in obj else obj["chain"]
        if n not in self.chains:
            raise Refused(f"no chain {n}")
        return str(n)

    def add_chain(self, obj: Json) -> None:
        self._in_table(obj)
        n = obj["name"]
        if n in self.chains and self.chains[n] != self._def(obj):
            raise Refused(f"chain {n} exists with another definition")
        self.chains.setdefault(n, self._def(obj))
        self.rules.setdefault(n, [])

    def flush_chain(self, obj: Json) -> None:
        self.rules[self._chain(obj)].clear()

    def delete_chain(self, obj: Json) -> None:
        n = self._chain(obj)
        if self.rules[n]:
            raise Refused(f"chain {n} deleted with rules")
        if self.referred("chain:" + n):
            raise Refused(f"chain {n} is still jumped to")
        del self.chains[n], self.rules[n]

    def _check_refs(self, value: Any, what: str) -> None:
        for ref in refs(value):
            kind, name = ref.split(":", 1)
            if kind == "chain":
                if name not in self.chains:
                    raise Refused(f"{what} refers to missing chain {name}")
                if "hook" in self.chains[name]:
                    raise Refused(f"{what} jumps to base chain {name}")
            elif kind == "counter":
                if name not in self.counters:
                    raise Refused(f"{what} counts into missing counter {name}")
            elif name not in self.colls:
                raise Refused(f"{what} refers to missing set {name}")

    def add_rule(self, obj: Json) -> None:
        n = self._chain(obj)
        self._check_refs(obj["expr"], f"rule in {n}")
        self.rules[n].append(canon(obj["expr"]))

    def referred(self, ref: str) -> bool:
        """Whether a rule or an element value refers to ``ref`` (``chain:x`` or ``set:x``)."""
        if any(ref in refs(json.loads(r)) for rs in self.rules.values() for r in rs):
            return True
        return any(
            v is not None and ref in refs(json.loads(v))
            for e in self.elems.values()
            for v in e.values()
        )

    # -- named counters ----------------------------------------------------------------------
    def add_counter(self, obj: Json) -> None:
        self._in_table(obj)
        self.counters.add(obj["name"])  # an existing one is kept as it is

    def delete_counter(self, obj: Json) -> None:
        self._in_table(obj)
        n = obj["name"]
        if n not in self.counters:
            raise Refused(f"no counter {n}")
        if self.referred("counter:" + n):
            raise Refused(f"counter {n} is in use")
        self.counters.discard(n)

    # -- sets and maps -----------------------------------------------------------------------
    def _coll(self, obj: Json, kind: str | None = None) -> str:
        self._in_table(obj)
        n = obj["name"]
        if n not in self.colls or (kind is not None and self.kind(n) != kind):
            raise Refused(f"no {kind or 'set or map'} {n}")
        return str(n)

    def kind(self, name: str) -> str:
        return "map" if "map" in self.colls[name] else "set"

    def _add_coll(self, obj: Json) -> None:
        self._in_table(obj)
        n = obj["name"]
        if n in self.colls and self.colls[n] != self._def(obj):
            raise Refused(f"{n} exists with another definition")
        self.colls.setdefault(n, self._def(obj))
        self.elems.setdefault(n, {})

    def add_set(self, obj: Json) -> None:
        if "map" in obj:
            raise Refused(f"set {obj['name']} with a value type")
        self._add_coll(obj)

    def add_map(self, obj: Json) -> None:
        if "map" not in obj:
            raise Refused(f"map {obj['name']} without a value type")
        self._add_coll(obj)

    def flush_set(self, obj: Json) -> None:
        self.elems[self._coll(obj, "set")].clear()

    def flush_map(self, obj: Json) -> None:
        self.elems[self._coll(obj, "map")].clear()

    def _delete_coll(self, obj: Json, kind: str) -> None:
        n = self._coll(obj, kind)
        if self.referred("set:" + n):
            raise Refused(f"{kind} {n} is in use")
        del self.colls[n], self.elems[n]

    def delete_set(self, obj: Json) -> None:
        self._delete_coll(obj, "set")

    def delete_map(self, obj: Json) -> None:
        self._delete_coll(obj, "map")

    def add_element(self, obj: Json) -> None:
        n = self._coll(obj)
        elems = self.elems[n]
        is_map = self.kind(n) == "map"
        interval = "interval" in (self.colls[n].get("flags") or ())
        for e in obj["elem"]:
            if is_map:
                if not (isinstance(e, list) and len(e) == 2):
                    raise Refused(f"map {n}: element {e!r} is not a key and a value")
                key, value = canon(e[0]), canon(e[1])
                self._check_refs(e[1], f"element {key} of {n}")
            else:
                key, value = canon(e), None
            if key in elems:
                raise Refused(f"element {key} exists in {n}")
            if interval:
                fam, lo, hi = _interval(e)
                for other in elems:
                    f2, lo2, hi2 = _interval(json.loads(other))
                    if fam == f2 and lo <= hi2 and lo2 <= hi:
                        raise Refused(f"element {key} overlaps {other} in {n}")
            elems[key] = value

    def delete_element(self, obj: Json) -> None:
        n = self._coll(obj)
        elems = self.elems[n]
        for e in obj["elem"]:
            if canon(e) not in elems:
                raise Refused(f"element {canon(e)} is absent from {n}")
            del elems[canon(e)]

    # -- reading back ------------------------------------------------------------------------
    def listing(self) -> Json:
        """The table as ``nft -j list table`` gives it (nft 1.0.6 leaves a netdev chain's device
        out); empty when there is no table."""
        if self.name is None:
            return {"nftables": []}
        where = {"family": self.family, "table": self.name}
        out: list[Json] = [{"table": {"family": self.family, "name": self.name}}]
        out += [{"counter": {**where, "name": n, "packets": 0, "bytes": 0}} for n in self.counters]
        for n, c in self.colls.items():
            elem = [
                [json.loads(k), json.loads(v)] if v is not None else json.loads(k)
                for k, v in self.elems[n].items()
            ]
            out.append({self.kind(n): {**where, **c, **({"elem": elem} if elem else {})}})
        for c in self.chains.values():
            hide = ("dev",) if self.family == "netdev" else ()
            out.append({"chain": {**where, **{k: v for k, v in c.items() if k not in hide}}})
        for n, rs in self.rules.items():
            out += [{"rule": {**where, "chain": n, "expr": json.loads(r)}} for r in rs]
        return {"nftables": out}

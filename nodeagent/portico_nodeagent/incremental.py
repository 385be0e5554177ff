"""The agent's renderer (pure): the full render's result, at the cost of what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from portico_common.model import LBService, NodeInfo

from . import nftnames as N
from .render import render_fixed, render_node_rules, render_service
from .rulesdiff import Touched, document_of
from .ruleset import Json, Table
from .rulesindex import RulesIndex, index_of, index_rules


@dataclass
class _Fragment:
    """One Service's part of a render, in index form (the JSON it was made from is not kept:
    only a full replace needs a document, which ``document_of`` makes from the index)."""

    index: RulesIndex
    claims: frozenset[str]


# Maps whose elements several Services may put in (an endpoint address, an endpoint count):
# counted, so that one Service leaving does not take them from the others. Every other element
# is keyed by a claimed VIP port or nodePort, and so has one owner.
_SHARED_MAPS = frozenset(
    m[f]
    for m in (N.REMOTE_ENDPOINTS, N.HAIRPIN, N.PICKS, N.NODEPORT_PICKS, N.INTERNAL_PICKS)
    for f in (4, 6)
)


@dataclass(frozen=True)
class Render:
    """One render of a node's table: its index; how to build the whole document (only a full
    replace needs it); and, when it was made from the renderer's previous render, that render's
    index and what may differ from it, so ``diff_rules(base, index, touched)`` costs the change,
    not the table. Indexes are never modified once returned."""

    index: RulesIndex
    document: Callable[[], Json]
    base: RulesIndex | None = None
    touched: Touched | None = None


def _by_name(svc: LBService) -> tuple[str, str]:
    return (svc.namespace, svc.name)


class NodeRenderer:
    """``render_node_rules`` and ``index_rules`` of its result, for an agent that renders after
    every change: each Service's part is rendered and indexed once and reused until that Service
    (or the node) changes, and the table's index is updated by the parts that changed, so a
    change costs the changed Services, not every Service. The result is the same as the full
    render's (tests compare them); when two Services claim one address it falls back to the
    full render, whose order decides. Services are told apart by key and compared by identity
    first: a caller that keeps unchanged Services as the same objects pays nothing for them."""

    def __init__(self) -> None:
        self._node: NodeInfo | None = None
        self._fixed = Table()
        self._fixed_index = RulesIndex()
        self._parts: dict[str, tuple[LBService, _Fragment]] = {}  # by Service key
        self._index: RulesIndex | None = None  # the last render's, when built from the parts
        self._claims: dict[str, str] = {}  # VIP port / nodePort claimed -> Service key
        self._refs: dict[tuple[str, str], int] = {}  # chains, sets, shared elements -> parts

    def render(self, services: Iterable[LBService], node: NodeInfo) -> Render:
        services = list(services)
        if node != self._node:
            self._node, self._fixed = node, Table()
            render_fixed(self._fixed, node)
            self._fixed_index = index_of(self._fixed)
            self._parts, self._index = {}, None
        live = {s.key: s for s in services}
        gone = [k for k in self._parts if k not in live]
        parts = self._parts
        changed = {
            k: (s, self._fragment(s))
            for k, s in live.items()
            if (part := parts.get(k)) is None or part[0] is not s
        }
        base, touched = self._index, Touched()
        if base is not None and self._move_claims(gone, changed):
            index: RulesIndex | None = self._update(base, gone, changed, touched)
        else:
            for k in gone:
                del self._parts[k]
            self._parts.update(changed)
            base, index = None, self._rebuild(sorted(services, key=_by_name))
        self._index = index
        if index is None:  # two Services claim one address: the full render decides
            full = render_node_rules(services, node)
            return Render(index_rules(full), lambda: full)
        return Render(
            index, lambda: document_of(index), base, touched if base is not None else None
        )

    def _fragment(self, svc: LBService) -> _Fragment:
        part = self._parts.get(svc.key)
        if part is not None and part[0] == svc:
            return part[1]
        assert self._node is not None
        t = Table()
        # The fixed maps exist (elements go into them); nothing else of the fixed part.
        for name, m in self._fixed.maps.items():
            t.maps[name] = m
            t.elements[name] = {}
        claimed: set[str] = set()
        render_service(t, svc, self._node, claimed)
        return _Fragment(index_of(t, maps=False), frozenset(claimed))

    def _move_claims(
        self, gone: list[str], changed: Mapping[str, tuple[LBService, _Fragment]]
    ) -> bool:
        """Releases the claims of the parts that go or change and takes the new parts' claims;
        False (and nothing changed) when one is held by another Service."""
        claims = dict(self._claims)
        for k in [*gone, *(k for k in changed if k in self._parts)]:
            for c in self._parts[k][1].claims:
                del claims[c]
        for k, (_, frag) in changed.items():
            for c in frag.claims:
                if claims.setdefault(c, k) != k:
                    return False
        self._claims = claims
        return True

    def _rebuild(self, ordered: list[LBService]) -> RulesIndex | None:
        """The index from every part; None when two claim one address."""
        claims: dict[str, str] = {}
        self._refs = {}
        frags = [self._parts[s.key][1] for s in ordered]
        for svc, frag in zip(ordered, frags, strict=True):
            for c in frag.claims:
                if claims.setdefault(c, svc.key) != svc.key:
                    self._claims = {}
                    return None
            for key in self._counted(frag.index):
                self._refs[key] = self._refs.get(key, 0) + 1
        self._claims = claims
        return _combined(self._fixed_index, [f.index for f in frags])

    @staticmethod
    def _counted(part: RulesIndex) -> Iterable[tuple[str, str]]:
        yield from ((":chain", c) for c in part.chains)
        yield from ((":set", st) for st in part.sets)
        for m in _SHARED_MAPS:
            yield from ((m, k) for k in part.elements.get(m, ()))

    def _update(
        self,
        base: RulesIndex,
        gone: list[str],
        changed: Mapping[str, tuple[LBService, _Fragment]],
        touched: Touched,
    ) -> RulesIndex:
        """A new index: ``base`` less the parts that go or change, plus the changed ones.
        Copies only what it modifies (``base`` is the index in force: never modified)."""
        idx = replace(
            base,
            chains=dict(base.chains),
            rules=dict(base.rules),
            elements=dict(base.elements),
            sets=dict(base.sets),
        )
        copied: set[str] = set()

        def elements(m: str) -> dict[str, str]:
            touched.elements.setdefault(m, set())
            if m not in copied:
                idx.elements[m] = dict(idx.elements[m])
                copied.add(m)
            return idx.elements[m]

        for k in [*gone, *(k for k in changed if k in self._parts)]:
            part = self._parts.pop(k)[1].index
            for c in part.chains:
                if self._unref((":chain", c)):
                    del idx.chains[c], idx.rules[c]
                    touched.chains.add(c)
            for st in part.sets:
                if self._unref((":set", st)):
                    del idx.sets[st]
                    touched.sets.add(st)
            for m, elems in part.elements.items():
                shared = m in _SHARED_MAPS
                for key in elems:
                    if not shared or self._unref((m, key)):
                        del elements(m)[key]
                        touched.elements[m].add(key)
        for k, (svc, frag) in changed.items():
            part = frag.index
            for c in part.chains:
                if self._ref((":chain", c)):
                    idx.chains[c], idx.rules[c] = part.chains[c], part.rules[c]
                    touched.chains.add(c)
            for st in part.sets:
                if self._ref((":set", st)):
                    idx.sets[st] = part.sets[st]
                    touched.sets.add(st)
            for m, elems in part.elements.items():
                shared = m in _SHARED_MAPS
                for key, value in elems.items():
                    if not shared or self._ref((m, key)):
                        elements(m)[key] = value
                        touched.elements[m].add(key)
            self._parts[k] = (svc, frag)
        return idx

    def _ref(self, key: tuple[str, str]) -> bool:
        """Counts one more holder; True for the first."""
        n = self._refs.get(key, 0)
        self._refs[key] = n + 1
        return n == 0

    def _unref(self, key: tuple[str, str]) -> bool:
        """Counts one holder less; True when it was the last."""
        n = self._refs[key] - 1
        if n:
            self._refs[key] = n
        else:
            del self._refs[key]
        return n == 0


_Part = TypeVar("_Part", Table, RulesIndex)


def _combined(base: _Part, parts: Iterable[_Part]) -> _Part:
    """``base`` (the fixed part, left untouched) with every Service's part added: their chains,
    rules and sets are their own; their elements go into the fixed maps."""
    out = replace(
        base,
        chains=dict(base.chains),
        rules=dict(base.rules),  # lists are replaced, never appended to: no copy needed
        maps=dict(base.maps),
        elements={k: dict(v) for k, v in base.elements.items()},
        sets=dict(base.sets),
    )
    for part in parts:
        out.chains.update(part.chains)
        out.rules.update(part.rules)
        out.sets.update(part.sets)
        for name, elems in part.elements.items():
            if elems:
                out.elements[name].update(elems)
    return out

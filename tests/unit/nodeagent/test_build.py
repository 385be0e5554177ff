"""A table built from nothing in steps (``rulesdiff.Build``), on the strict fake kernel
(tests/unit/nftkernel.py): whatever the step size, it ends as the one-transaction build, its
first step is inert and no dispatch-map element goes in before what it leads to. Then the agent's
``NftTable`` on that kernel, through a fake handle: the table built in steps, read back in parts
(a terse listing, then each map's elements) by verify and at a restart, restored when someone
changes it, and replaced in one transaction of JSON text."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from portico_common import nfttable
from portico_common.model import Endpoint, EndpointPort, LBService, NodeInfo, ServicePort
from portico_nodeagent import nft as nft_module
from portico_nodeagent import nftnames as N
from portico_nodeagent.incremental import NodeRenderer
from portico_nodeagent.nft import NftError, NftTable
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import Build, _fill_order, document_of, in_steps
from portico_nodeagent.rulesindex import RulesIndex, index_rules

from ..nftkernel import Kernel, Refused

NODE = NodeInfo("node-1", "zone-a", ("198.18.0.10", "fd00:18::10"), ("10.244.1.0/24",))


def services(n: int = 12) -> list[LBService]:
    """Every kind of map element: both families, source ranges, Local and Cluster policies,
    ClientIP affinity, no endpoints, endpoints here and elsewhere."""
    out = []
    for i in range(n):
        ports = (ServicePort("http", "TCP", 80, 30080 + i, 8080),)
        if i % 3 == 0:
            ports += (ServicePort("dns", "UDP", 53, None, 53),)
        eps = tuple(
            Endpoint(
                f"198.19.{node}.{2 + k}" if k < 2 else f"fd00:19:{node}::{2 + k}",
                f"node-{node}",
                "zone-a",
                ports=(EndpointPort("http", "TCP", 8080), EndpointPort("dns", "UDP", 53)),
            )
            for node in (1, 2)
            for k in range(i % 4)
        )
        out.append(
            LBService(
                "ns",
                f"s{i}",
                (f"198.18.32.{1 + i}", f"fd00:18:32::{1 + i:x}"),
                ports,
                eps,
                "Local" if i % 2 else "Cluster",
                "ClientIP" if i % 5 == 1 else "None",
                None,
                ("10.0.0.0/8", "fd00::/8") if i % 4 == 2 else (),
            )
        )
    return out


@pytest.fixture(scope="module")
def index() -> RulesIndex:
    idx = index_rules(render_node_rules(services(), NODE))
    assert sum(len(e) for e in idx.elements.values()) > 100
    return idx


def elements(idx: RulesIndex) -> int:
    return sum(len(e) for e in idx.elements.values())


def listed(k: Kernel) -> RulesIndex:
    return index_rules(k.listing())


@pytest.mark.parametrize("size", [1, 2, 7, 50, 10_000])
def test_a_table_built_in_steps_ends_as_the_one_transaction_build(
    index: RulesIndex, size: int
) -> None:
    whole = Kernel.load(document_of(index))
    k = Kernel()
    steps = list(Build(index, size).steps())
    for step in steps:
        k.run(step)
        for cmd in step["nftables"]:
            if "element" in cmd.get("add", {}):
                assert len(cmd["add"]["element"]["elem"]) <= size
    assert listed(k).same_as(listed(whole)), listed(k).differences(listed(whole))
    assert listed(k).same_as(index)
    if size >= elements(index):
        assert len(steps) == 1  # small enough: one transaction
    else:
        assert len(steps) == 1 + -(-elements(index) // size)  # the outline, then full steps


@pytest.mark.parametrize("size", [1, 7, 50])
def test_the_first_step_is_inert_and_dispatch_comes_last(index: RulesIndex, size: int) -> None:
    k = Kernel()
    steps = Build(index, size).steps()
    k.run(next(steps))
    first = listed(k)
    # Everything but the elements: no map leads anywhere yet.
    assert first.chains == index.chains and first.rules == index.rules
    assert first.maps == index.maps and first.sets == index.sets
    assert elements(first) == 0
    orders = []
    for step in steps:
        names = [cmd["add"]["element"]["name"] for cmd in step["nftables"]]
        orders += [_fill_order(index, name) for name in names]
        k.run(step)
        if 2 in orders:
            # Dispatch elements are in (this transaction or before): everything they can lead
            # to is in too (the strict kernel also refuses an element whose verdict names a
            # chain that is not there).
            now = listed(k)
            for m, elems in index.elements.items():
                if _fill_order(index, m) < 2:
                    assert now.elements[m] == elems, m
    assert orders == sorted(orders)  # source-range checks, what dispatch leads to, dispatch
    assert set(orders) == {0, 1, 2}  # (the fixture has each)
    assert listed(k).same_as(index)


def test_a_build_counts_its_commands_without_making_them(index: RulesIndex) -> None:
    b = Build(index)
    assert len(b["nftables"]) == len(document_of(index)["nftables"])
    assert list(b["nftables"]) == document_of(index)["nftables"]
    assert [s for s in in_steps(b)] == [document_of(index)]
    plain = {"nftables": []}
    assert list(in_steps(plain)) == [plain]


# -- the agent's table on the fake kernel ---------------------------------------------------------


class FakeHandle:
    """``portico_common.nfthandle.Libnftables`` on a ``Kernel``: transactions (all or nothing),
    the generation, a terse listing, a map's elements as canonical text."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel, self.gen = kernel, 1
        self.transactions: list[str] = []
        self.reads: list[str] = []

    def run_json(self, doc: Mapping[str, Any]) -> None:
        if not doc.get("nftables"):
            return
        self.transactions.append("json")
        self._run(json.loads(json.dumps(dict(doc))))

    def run_json_text(self, text: str) -> None:
        self.transactions.append("text")
        self._run(json.loads(text))

    def run_text(self, text: str) -> None:
        raise AssertionError("JSON only")

    def _run(self, doc: Mapping[str, Any]) -> None:
        before = copy.deepcopy(self.kernel.__dict__)
        try:
            self.kernel.run(doc)
        except Refused as e:  # all or nothing
            self.kernel.__dict__.update(before)
            raise NftError(str(e)) from None
        self.gen += 1

    def generation(self) -> int:
        return self.gen

    def listing(self, family: str, table: str, *, terse: bool = False) -> dict[str, Any] | None:
        self.reads.append("terse" if terse else "whole")
        items = self.kernel.listing()["nftables"]
        if not items:
            return None
        if terse:
            items = [
                {"map": {k: v for k, v in i["map"].items() if k != "elem"}} if "map" in i else i
                for i in items
            ]
        return {"nftables": items}

    def map_elements(
        self, family: str, table: str, decl: Mapping[str, Any]
    ) -> Iterator[tuple[str, str]]:
        self.reads.append(decl["name"])
        for k, v in self.kernel.elems.get(decl["name"], {}).items():
            assert v is not None
            yield k, v


@pytest.fixture
def handle(monkeypatch: pytest.MonkeyPatch) -> FakeHandle:
    h = FakeHandle(Kernel())
    monkeypatch.setattr(nfttable, "Libnftables", lambda: h)
    monkeypatch.setattr(nft_module, "Build", lambda idx: Build(idx, 7))  # steps of 7 elements
    return h


def test_the_agents_table_built_in_steps_verified_and_restored_in_parts(
    handle: FakeHandle,
) -> None:
    renderer = NodeRenderer()
    t = NftTable()
    render = renderer.render(services(), NODE)
    t.apply(render)
    k = handle.kernel
    assert listed(k).same_as(render.index)
    assert handle.transactions.count("json") == 1 + -(-elements(render.index) // 7)

    handle.reads.clear()
    assert t.verify() is False  # read in parts: never the whole listing
    assert handle.reads[0] == "terse" and "whole" not in handle.reads
    assert set(handle.reads[1:]) == set(render.index.maps)
    handle.reads.clear()
    assert t.verify() is False and handle.reads == []  # nothing committed since

    # Someone deletes an element and flushes a chain: read, diffed from, restored.
    m = next(m for m, e in render.index.elements.items() if e)
    key = next(iter(render.index.elements[m]))
    where = {"family": N.FAMILY, "table": N.TABLE}
    k.run([{"delete": {"element": {**where, "name": m, "elem": [json.loads(key)]}}}])
    k.run([{"flush": {"chain": {"family": N.FAMILY, "table": N.TABLE, "name": N.SERVICES}}}])
    handle.gen += 1
    assert t.verify() is True and listed(k).same_as(render.index)
    assert "whole" not in handle.reads and t.stats.restores == 1

    # An element's value changed: found as the maps are compared.
    handle.reads.clear()
    m, (key, _) = next((m, next(iter(e.items()))) for m, e in k.elems.items() if e)
    k.elems[m][key] = json.dumps({"goto": {"target": N.REJECT}}, separators=(",", ":"))
    handle.gen += 1
    assert t.verify() is True and listed(k).same_as(render.index)

    # Deleted: built again, in steps.
    k.run([{"delete": {"table": {"family": N.FAMILY, "name": N.TABLE}}}])
    handle.gen += 1
    n = len(handle.transactions)
    assert t.verify() is True and listed(k).same_as(render.index)
    assert len(handle.transactions) - n > 1


def test_a_restart_reads_the_table_in_parts_and_changes_nothing(handle: FakeHandle) -> None:
    render = NodeRenderer().render(services(), NODE)
    NftTable().apply(render)
    handle.reads.clear()
    n = len(handle.transactions)
    again = NftTable().apply(NodeRenderer().render(services(), NODE))
    assert (again.mode, len(handle.transactions)) == ("none", n)
    assert handle.reads[0] == "terse" and "whole" not in handle.reads
    # One Service fewer: a diff from the kernel's table, one transaction.
    res = NftTable().apply(NodeRenderer().render(services()[1:], NODE))
    assert res.mode == "incremental" and len(handle.transactions) == n + 1
    assert listed(handle.kernel).same_as(index_rules(render_node_rules(services()[1:], NODE)))


def test_the_full_replace_is_one_transaction_of_json_text(handle: FakeHandle) -> None:
    t = NftTable()
    render = NodeRenderer().render(services(), NODE)
    t.apply(render)
    k = handle.kernel
    k.run([{"flush": {"chain": {"family": N.FAMILY, "table": N.TABLE, "name": N.SERVICES}}}])
    replacement = t.rebuild(render, lambda: None)
    doc = json.loads(replacement)
    assert doc["nftables"][:2] == [
        {"add": {"table": {"family": N.FAMILY, "name": N.TABLE}}},
        {"delete": {"table": {"family": N.FAMILY, "name": N.TABLE}}},
    ]
    assert doc["nftables"][2:] == document_of(render.index)["nftables"]
    assert replacement.commands == len(doc["nftables"])
    n = len(handle.transactions)
    t.run(replacement)
    assert handle.transactions[n:] == ["text"]
    assert listed(k).same_as(render.index)

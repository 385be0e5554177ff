"""OwnedTable's fallback order (portico_common.nfttable), against a fake libnftables handle: a
table is a set of words, a diff adds and deletes words (refused when the kernel's table is not
what it was computed from), a replace sets them all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from portico_common import nfttable
from portico_common.nfttable import NftError, OwnedTable

Words = frozenset[str]


class FakeKernel:
    def __init__(self) -> None:
        self.table: set[str] | None = None
        self.transactions: list[list[Any]] = []
        self.refuse: Callable[[list[Any]], bool] = lambda cmds: False

    def run_json(self, doc: Mapping[str, Any]) -> None:
        cmds = list(doc["nftables"])
        if not cmds:
            return
        if self.refuse(cmds):
            raise NftError("refused")
        table = None if self.table is None else set(self.table)
        for op, arg in cmds:
            if op == "replace":
                table = set(arg)
            elif table is None:
                raise NftError("No such file or directory")
            elif op == "add" and arg not in table:
                table.add(arg)
            elif op == "delete" and arg in table:
                table.remove(arg)
            else:
                raise NftError(f"cannot {op} {arg}")
        self.table = table  # all or nothing
        self.transactions.append(cmds)

    def run_text(self, text: str) -> None:
        raise AssertionError("JSON only")

    def listing(self, family: str, table: str) -> dict[str, Any] | None:
        return None if self.table is None else {"nftables": sorted(self.table)}


class WordTable(OwnedTable[Words]):
    family = "inet"
    name = "test"

    def read(self, listing: Mapping[str, Any]) -> Words:
        return frozenset(listing["nftables"])

    def diff(self, old: Words | None, new: Words) -> Mapping[str, Any] | None:
        if old is None:
            return None
        adds = [("add", w) for w in sorted(new - old)]
        return {"nftables": [("delete", w) for w in sorted(old - new)] + adds}

    def rebuild(self, new: Words, current: Callable[[], Words | None]) -> Mapping[str, Any]:
        return {"nftables": [("replace", sorted(new))]}

    def removal(self) -> Mapping[str, Any]:
        return {"nftables": [("replace", [])]}

    def counts(self, state: Words) -> dict[str, int]:
        return {"words": len(state)}


class ListingTable(WordTable):
    diff_from_listing = True


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel()
    monkeypatch.setattr(nfttable, "Libnftables", lambda: k)
    return k


def W(*words: str) -> Words:
    return frozenset(words)


def test_changes_are_incremental_from_what_was_applied(kernel: FakeKernel) -> None:
    t = WordTable()
    first = t.apply(W("a", "b"))
    assert (first.mode, first.commands) == ("replace", 1)  # a start: nothing applied yet
    res = t.apply(W("a", "c"))
    assert (res.mode, res.commands) == ("incremental", 2)
    assert kernel.transactions[-1] == [("delete", "b"), ("add", "c")]
    assert (t.apply(W("a", "c")).mode, len(kernel.transactions)) == ("none", 2)
    assert t.applied == W("a", "c") and t.stats.counts == {"words": 2}
    assert t.stats.applies == 3 and t.stats.errors == 0


def test_a_start_diffs_from_the_listing_when_the_owner_can(kernel: FakeKernel) -> None:
    kernel.table = {"a", "b"}  # an earlier run's table
    t = ListingTable()
    res = t.apply(W("a", "b"))
    assert (res.mode, res.commands, kernel.transactions) == ("none", 0, [])
    assert t.apply(W("a")).mode == "incremental"
    kernel.table = None
    assert ListingTable().apply(W("x")).mode == "replace"  # no table, no diff from it


def test_a_refused_change_diffs_from_the_listing_then_replaces(kernel: FakeKernel) -> None:
    t, u = ListingTable(), WordTable()
    t.apply(W("a", "b"))
    kernel.table = {"a", "z"}  # someone deleted b and added z: "delete b" is refused
    res = t.apply(W("a", "c"))
    assert (res.mode, kernel.table, t.stats.errors) == ("incremental", {"a", "c"}, 1)

    u._applied = W("a", "c")  # what it believes; the kernel says otherwise
    kernel.table = {"q"}
    res = u.apply(W("a"))
    assert (res.mode, kernel.table, u.stats.errors) == ("replace", {"a"}, 1)


def test_when_everything_is_refused_what_is_in_force_stays(kernel: FakeKernel) -> None:
    t = ListingTable()
    t.apply(W("a"))
    kernel.refuse = lambda cmds: True
    with pytest.raises(NftError):
        t.apply(W("b"))
    assert kernel.table == {"a"} and t.applied == W("a")
    assert t.stats.errors == 3 and t.stats.applies == 1  # diff, diff from listing, replace
    assert t.stats.last_error == "refused"


def test_verify_restores_an_edited_or_deleted_table(kernel: FakeKernel) -> None:
    for cls in (WordTable, ListingTable):
        kernel.table = None
        t = cls()
        assert t.verify() is False  # nothing applied yet
        t.apply(W("a", "b"))
        assert t.verify() is False
        kernel.table = {"a"}
        n = len(kernel.transactions)
        assert t.verify() is True and kernel.table == {"a", "b"}
        want = [("add", "b")] if cls is ListingTable else [("replace", ["a", "b"])]
        assert kernel.transactions[n:] == [want]
        kernel.table = None
        assert t.verify() is True and kernel.table == {"a", "b"}
        assert t.verify() is False and t.stats.restores == 2


def test_delete_forgets_what_was_applied(kernel: FakeKernel) -> None:
    t = WordTable()
    t.apply(W("a"))
    t.delete()
    assert t.applied is None and kernel.table == set() and t.verify() is False

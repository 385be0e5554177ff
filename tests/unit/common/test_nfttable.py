"""OwnedTable's fallback order and verify (portico_common.nfttable), against a fake libnftables
handle: a table is a set of words, a diff adds and deletes words (refused when the kernel's table
is not what it was computed from), a replace sets them all, and every transaction that commits
bumps the ruleset's generation. Then the handle's own parts (portico_common.nfthandle): the
terse listing of one table, the generation, and map elements decoded from netlink messages
made here."""

from __future__ import annotations

import json
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from portico_common import nfthandle, nftnetlink, nfttable
from portico_common.nfthandle import Libnftables
from portico_common.nftnetlink import canon
from portico_common.nfttable import JsonText, NftError, OwnedTable

Words = frozenset[str]


class FakeKernel:
    def __init__(self) -> None:
        self.table: set[str] | None = None
        self.transactions: list[list[Any]] = []
        self.refuse: Callable[[list[Any]], bool] = lambda cmds: False
        self.gen: int | None = 1  # the ruleset's generation (None: netlink does not give it)
        self.listings = 0
        self.texts: list[str] = []

    def generation(self) -> int | None:
        return self.gen

    def other_program(self) -> None:
        """Another program's transaction, on another table."""
        if self.gen is not None:
            self.gen += 1

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
        self.other_program()  # committed: the generation moves

    def run_json_text(self, text: str) -> None:
        self.texts.append(text)
        self.run_json({"nftables": [tuple(c) for c in json.loads(text)["nftables"]]})

    def run_text(self, text: str) -> None:
        raise AssertionError("JSON only")

    def listing(self, family: str, table: str, *, terse: bool = False) -> dict[str, Any] | None:
        self.listings += 1
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
        kernel.other_program()  # someone's edit, a transaction
        n = len(kernel.transactions)
        assert t.verify() is True and kernel.table == {"a", "b"}
        want = [("add", "b")] if cls is ListingTable else [("replace", ["a", "b"])]
        assert kernel.transactions[n:] == [want]
        kernel.table = None
        kernel.other_program()
        assert t.verify() is True and kernel.table == {"a", "b"}
        assert t.verify() is False and t.stats.restores == 2


def test_delete_forgets_what_was_applied(kernel: FakeKernel) -> None:
    t = WordTable()
    t.apply(W("a"))
    t.delete()
    assert t.applied is None and kernel.table == set() and t.verify() is False


# -- verify: the ruleset's generation ---------------------------------------------------------


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(nfttable, "trim", lambda: calls.append(1))
    return calls


def test_verify_reads_the_table_only_when_a_transaction_ran(kernel: FakeKernel) -> None:
    t = ListingTable()
    t.apply(W("a", "b"))  # a start: the listing read (none) to diff from
    assert t.verify() is False and kernel.listings == 2  # a start: never read at a generation
    for _ in range(3):
        assert t.verify() is False  # nothing committed since: not read
    assert (kernel.listings, t.reads, t.skips) == (2, 1, 3)
    kernel.other_program()  # on any table: read, found as applied, known again
    assert t.verify() is False and t.verify() is False
    assert (kernel.listings, t.reads, t.skips) == (3, 2, 4)
    kernel.table = {"a"}  # someone's edit commits
    kernel.other_program()
    assert t.verify() is True and kernel.table == {"a", "b"}  # read, and read to diff from
    assert t.verify() is False and kernel.listings == 6  # the restore is read back, once
    assert t.verify() is False and kernel.listings == 6


def test_an_apply_carries_the_generation_when_its_transactions_are_all_that_ran(
    kernel: FakeKernel,
) -> None:
    t = ListingTable()
    t.apply(W("a"))
    t.verify()
    n = kernel.listings
    assert t.apply(W("a", "b")).mode == "incremental"
    assert t.apply(W("a", "b")).mode == "none"
    assert t.verify() is False and kernel.listings == n  # ours alone: still known

    # Another program commits while we apply: the next verify reads.
    kernel.refuse = lambda cmds: kernel.other_program() or False
    t.apply(W("a", "c"))
    kernel.refuse = lambda cmds: False
    assert t.verify() is False and kernel.listings == n + 1
    assert t.verify() is False and kernel.listings == n + 1

    # A refused step (the table was not what we believed): the next verify reads.
    t.verify()
    kernel.table = {"a", "z"}  # c deleted and z added, and no generation moved
    res = t.apply(W("a"))  # "delete c" refused; from the listing: "delete z"
    assert (res.mode, kernel.table, t.stats.errors) == ("incremental", {"a"}, 1)
    assert t.verify() is False and kernel.listings == n + 3  # (the diff from the listing: +1)


def test_every_nth_verify_reads_whatever_the_generation(kernel: FakeKernel) -> None:
    t = ListingTable()
    t.verify_read_every = 3
    t.apply(W("a"))
    t.verify()
    kernel.table = None  # gone without a transaction (a table whose owner process exited)
    assert t.verify() is False and t.verify() is False  # not seen yet
    assert t.verify() is True and kernel.table == {"a"}  # the third reads
    assert (t.reads, t.skips, t.stats.restores) == (2, 2, 1)


def test_without_a_generation_every_verify_reads(kernel: FakeKernel) -> None:
    kernel.gen = None
    t = ListingTable()
    t.apply(W("a"))
    for _ in range(3):
        assert t.verify() is False
    assert (kernel.listings, t.reads, t.skips) == (4, 3, 0)  # the start's diff, 3 verifies


def test_delete_forgets_the_generation(kernel: FakeKernel) -> None:
    t = ListingTable()
    t.apply(W("a"))
    t.verify()
    t.delete()
    kernel.table = {"x"}
    t.apply(W("a"))  # a start again: diffed from the listing
    assert kernel.table == {"a"}
    n = kernel.listings
    assert t.verify() is False and kernel.listings == n + 1


def test_memory_is_given_back_after_reads_and_long_transactions(
    kernel: FakeKernel, trims: list[int]
) -> None:
    t = ListingTable()
    t.apply(W("a"))  # a start: the kernel's table read
    assert len(trims) == 1
    t.apply(W("a", "b"))  # a small change
    assert len(trims) == 1
    t.verify()  # reads
    t.verify()  # does not
    assert len(trims) == 2
    kernel.other_program()
    kernel.table = set()
    t.verify()  # reads, restores (and reads the kernel's table again to diff from)
    assert len(trims) == 4


class TextTable(WordTable):
    """Rebuilds with JSON text, as the node agent's full replace does."""

    def rebuild(self, new: Words, current: Callable[[], Words | None]) -> JsonText:
        text = JsonText(json.dumps({"nftables": [("replace", sorted(new))]}))
        text.commands = 7
        return text


def test_json_text_is_run_as_one_json_transaction(kernel: FakeKernel) -> None:
    t = TextTable()
    res = t.apply(W("a", "b"))
    assert (res.mode, res.commands, kernel.table) == ("replace", 7, {"a", "b"})
    assert len(kernel.texts) == 1 and len(kernel.transactions) == 1


# -- the handle's parts: a terse listing, the generation, map elements from netlink ------------


def test_a_terse_listing_is_the_family_ruleset_filtered_to_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[tuple[str, bool]] = []
    ruleset = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "other"}},
        {"table": {"family": "inet", "name": "t"}},
        {"chain": {"family": "inet", "table": "other", "name": "c"}},
        {"chain": {"family": "inet", "table": "t", "name": "c"}},
        {"map": {"family": "inet", "table": "t", "name": "m", "type": "mark", "map": "mark"}},
    ]

    def fake_list(cmd: str, terse: bool) -> dict[str, Any] | None:
        commands.append((cmd, terse))
        return {"nftables": ruleset}

    monkeypatch.setattr(nfthandle, "_list", fake_list)
    monkeypatch.setattr(nfthandle, "_handle", lambda terse=False: None)
    nft = Libnftables()
    got = nft.listing("inet", "t", terse=True)
    assert got == {"nftables": [ruleset[2], ruleset[4], ruleset[5]]}
    assert commands == [("list ruleset inet", True)]  # not "list table": it fetches elements
    assert nft.listing("inet", "gone", terse=True) is None
    nft.listing("inet", "t")
    assert commands[-1] == ("list table inet t", False)


def nlattr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return nlattr(kind | 0x8000, b"".join(attrs))


def message(kind: int, *attrs: bytes, flags: int = 0) -> bytes:
    body = struct.pack("=BBH", 1, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | kind, flags, 1, 0) + body


def value(raw: bytes) -> bytes:
    return nlattr(1, raw)  # NFTA_DATA_VALUE


def verdict(code: int, chain: str | None = None) -> bytes:
    inner = [nlattr(1, struct.pack(">i", code))]
    if chain is not None:
        inner.append(nlattr(2, chain.encode() + b"\0"))
    return nested(2, *inner)  # NFTA_DATA_VERDICT


def pad(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 4)


def element(key: bytes, data: bytes | None, *extra: bytes) -> bytes:
    attrs = [nested(1, value(key))]  # NFTA_SET_ELEM_KEY
    if data is not None:
        attrs.append(nested(2, data))  # NFTA_SET_ELEM_DATA
    return nested(1, *attrs, *extra)  # NFTA_LIST_ELEM


def elements_message(*elems: bytes) -> bytes:
    return message(12, nested(3, *elems))  # NFT_MSG_NEWSETELEM, NFTA_SET_ELEM_LIST_ELEMENTS


def ip4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def mark(n: int) -> bytes:
    return n.to_bytes(4, sys.byteorder)


@pytest.fixture
def dumps(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The messages ``_dump`` answers with (and the requests it was sent, appended after)."""
    answer: list[bytes] = []

    def fake_dump(request: bytes) -> list[bytes]:
        out = list(answer)
        answer.append(request)
        return out

    monkeypatch.setattr(nftnetlink, "_dump", fake_dump)
    monkeypatch.setattr(nfthandle, "_handle", lambda terse=False: None)
    return answer


def read(decl: Mapping[str, Any]) -> list[tuple[str, str]]:
    return list(Libnftables().map_elements("inet", "portico", decl))


def test_map_elements_are_decoded_as_nft_lists_them(dumps: list[bytes]) -> None:
    slots = ["ipv4_addr", "inet_proto", "inet_service", "mark"]
    dumps.append(
        elements_message(
            element(
                pad(ip4("198.18.32.1")) + pad(b"\x06") + pad(b"\x00\x50") + mark(2097152),
                value(ip4("198.19.1.2")),
            ),
            element(
                pad(ip4("10.0.0.1")) + pad(b"\x84") + pad(b"\x1f\x90") + mark(7),
                value(ip4("10.0.0.2")),
            ),
        )
    )
    got = read({"name": "endpoint-addrs4", "type": slots, "map": "ipv4_addr"})
    assert got == [
        (canon({"concat": ["198.18.32.1", "tcp", 80, 2097152]}), canon("198.19.1.2")),
        (canon({"concat": ["10.0.0.1", "sctp", 8080, 7]}), canon("10.0.0.2")),
    ]
    request = dumps[-1]  # NFT_MSG_GETSETELEM, a dump, in the inet family, of this map
    assert struct.unpack_from("=HH", request, 4) == ((10 << 8) | 13, 0x301)
    assert request[16] == 1 and b"portico\0" in request and b"endpoint-addrs4\0" in request

    dumps.clear()
    dumps.append(
        elements_message(
            element(
                pad(ip6("fd00:18:32::1")) + pad(b"\x11") + pad(b"\x00\x35"), verdict(-4, "pick6-2")
            ),
            element(pad(ip6("::ffff:1.2.3.4")) + pad(b"\x21") + pad(b"\x00\x01"), verdict(0)),
            element(pad(ip6("fe80::1:0:0:1")) + pad(b"\x06") + pad(b"\x00\x01"), verdict(-3, "j")),
            element(pad(ip6("::1")) + pad(b"\x06") + pad(b"\x00\x02"), verdict(1)),
        )
    )
    got = read({"name": "vips6", "type": ["ipv6_addr", *slots[1:3]], "map": "verdict"})
    assert [json.loads(k) for k, _ in got] == [
        {"concat": ["fd00:18:32::1", "udp", 53]},
        {"concat": ["::ffff:1.2.3.4", 33, 1]},  # a protocol Portico does not use: its number
        {"concat": ["fe80::1:0:0:1", "tcp", 1]},
        {"concat": ["::1", "tcp", 2]},
    ]
    assert [json.loads(v) for _, v in got] == [
        {"goto": {"target": "pick6-2"}},
        {"drop": None},
        {"jump": {"target": "j"}},
        {"accept": None},
    ]
    dumps.clear()
    dumps.append(elements_message(element(mark(3), value(b"\x1f\x90"))))
    assert read({"name": "m", "type": "mark", "map": "inet_service"}) == [("3", "8080")]


def test_map_element_values_are_decoded_once_and_shared(dumps: list[bytes]) -> None:
    dumps.append(elements_message(*(element(mark(n), value(ip4("10.0.0.9"))) for n in range(3))))
    got = read({"name": "m", "type": "mark", "map": "ipv4_addr"})
    assert [k for k, _ in got] == ["0", "1", "2"]
    assert got[0][1] == '"10.0.0.9"' and got[0][1] is got[1][1] is got[2][1]


def test_what_portico_never_puts_in_an_element_makes_it_differ(dumps: list[bytes]) -> None:
    comment = nlattr(6, b"\x00\x02hi")  # NFTA_SET_ELEM_USERDATA
    no_flags = nlattr(3, struct.pack(">I", 0))  # NFTA_SET_ELEM_FLAGS, none: as usual
    dumps.append(
        elements_message(
            element(mark(1), value(mark(5)), no_flags),
            element(mark(2), value(mark(5)), comment),
            element(mark(3), value(b"\x01")),  # too short for a mark
        )
    )
    got = dict(read({"name": "m", "type": "mark", "map": "mark"}))
    assert got["1"] == "5"
    assert json.loads(got["2"]) == {"netlink": [6], "value": 5}
    assert json.loads(got["3"]) == {"netlink": "not a value"}


def test_maps_it_cannot_decode_are_listed_by_libnftables(
    dumps: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []

    def fake_list(cmd: str, terse: bool) -> dict[str, Any] | None:
        listed.append(cmd)
        elem = [[{"concat": ["a", 1]}, {"goto": {"target": "x"}}]]
        return {"nftables": [{"metainfo": {}}, {"map": {"name": "m", "elem": elem}}]}

    monkeypatch.setattr(nfthandle, "_list", fake_list)
    got = read({"name": "m", "type": ["ifname", "mark"], "map": "verdict"})
    assert got == [('{"concat":["a",1]}', '{"goto":{"target":"x"}}')]
    read({"name": "m", "type": "ipv4_addr", "map": "mark", "flags": ["interval"]})
    assert listed == ["list map inet portico m"] * 2 and not dumps  # netlink not asked


def test_a_map_that_is_gone_has_no_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(request: bytes) -> list[bytes]:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(nftnetlink, "_dump", gone)
    monkeypatch.setattr(nfthandle, "_handle", lambda terse=False: None)
    assert read({"name": "m", "type": "mark", "map": "mark"}) == []


def test_a_dump_a_transaction_interrupted_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([[(0, 0x10, b"old")], [(0, 0, b"new")]])

    def talk(request: bytes, dump: bool) -> Iterator[tuple[int, int, bytes]]:
        yield from next(answers)

    monkeypatch.setattr(nftnetlink, "_talk", talk)
    assert nftnetlink._dump(b"") == [b"new"]
    monkeypatch.setattr(nftnetlink, "_talk", lambda request, dump: iter([(0, 0x10, b"x")]))
    with pytest.raises(NftError, match="interrupted"):
        nftnetlink._dump(b"")


def test_the_generation_is_read_from_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nfthandle, "_handle", lambda terse=False: None)
    sent: list[bytes] = []

    def talk(request: bytes, dump: bool) -> Iterator[tuple[int, int, bytes]]:
        sent.append(request)
        yield (10 << 8) | 15, 0, message(15, nlattr(1, struct.pack(">I", 4242)))

    monkeypatch.setattr(nftnetlink, "_talk", talk)
    assert Libnftables().generation() == 4242
    assert struct.unpack_from("=HH", sent[0], 4) == ((10 << 8) | 16, 1)  # GETGEN, a request

    def refused(request: bytes, dump: bool) -> Iterator[tuple[int, int, bytes]]:
        raise PermissionError(1, "Operation not permitted")
        yield  # a generator

    monkeypatch.setattr(nftnetlink, "_talk", refused)
    assert Libnftables().generation() is None

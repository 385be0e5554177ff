"""What netlink gives more cheaply than libnftables (linux/netlink.h,
linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h), in the network namespace of the
calling thread:

* **the ruleset's generation** (``generation``, NFT_MSG_GETGEN): a counter of the network
  namespace that every committed transaction bumps, whatever table it changes; a refused
  (aborted) one does not, nor does one that changes nothing;
* **a map's elements** (``map_elements``), dumped (NFT_MSG_GETSETELEM) one map at a time and
  decoded here into the JSON nft lists them in: libnftables holds ~1.8 KiB for every element it
  lists (+141 MiB for one map of 60,000), this holds one map's netlink messages (~50 bytes an
  element). ``decodable`` says which maps it reads (``nfthandle`` lists the others);
* **a table's named counters** (``counters``, NFT_MSG_GETOBJ): libnftables' ``list counters
  table`` fetches the whole table first (seconds and 240 MiB for a table of 200,000 elements);
  this dumps the counter objects alone.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .nftresult import NftError

__all__ = ["canon", "counters", "decodable", "generation", "map_elements"]


NETLINK_NETFILTER = 12
_NFT = 10 << 8  # NFNL_SUBSYS_NFTABLES, the high byte of a message's type
_GETSETELEM, _NEWGEN, _GETGEN, _GETOBJ = 13, 15, 16, 19
_REQUEST, _DUMP = 0x1, 0x300  # NLM_F_REQUEST, NLM_F_ROOT | NLM_F_MATCH
_DUMP_INTR = 0x10  # NLM_F_DUMP_INTR: a transaction was committed while the dump ran
_ERROR, _DONE = 2, 3  # NLMSG_ERROR, NLMSG_DONE
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_NFGENMSG = _HEADER.size + 4  # where a message's attributes start (after struct nfgenmsg)
_GEN_ID = 1  # NFTA_GEN_ID
_SET_ELEM_LIST_TABLE, _SET_ELEM_LIST_SET, _SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_SET_ELEM_KEY, _SET_ELEM_DATA, _SET_ELEM_FLAGS = 1, 2, 3
_DATA_VALUE, _DATA_VERDICT = 1, 2
_VERDICT_CODE, _VERDICT_CHAIN = 1, 2
_OBJ_TABLE, _OBJ_NAME, _OBJ_TYPE, _OBJ_DATA, _OBJ_HANDLE = 1, 2, 3, 4, 6  # NFTA_OBJ_*
_OBJECT_COUNTER = 1  # NFT_OBJECT_COUNTER
_COUNTER_BYTES, _COUNTER_PACKETS = 1, 2  # NFTA_COUNTER_*
_FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
_DUMP_TRIES = 10


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + bytes(-size % 4)


def _request(kind: int, flags: int, family: int, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return _HEADER.pack(_HEADER.size + len(body), _NFT | kind, flags, 1, 0) + body


def _attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The attributes in ``buf[start:end]``: type (without the nested and byte order flags) ->
    where its payload is."""
    return {kind & 0x3FFF: (s, e) for kind, s, e in _walk(buf, start, end)}


def _nested(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Where the payloads of the attributes in ``buf[start:end]`` are, in order."""
    for _kind, s, e in _walk(buf, start, end):
        yield s, e


def _walk(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    while start + 4 <= end:
        size, kind = struct.unpack_from("=HH", buf, start)
        if size < 4:
            raise NftError("malformed netlink attribute")
        yield kind, start + 4, start + size
        start += (size + 3) & ~3


def _talk(request: bytes, dump: bool) -> Iterator[tuple[int, int, bytes]]:
    """Sends one request on a netlink socket of its own; yields the answer's messages (type,
    flags, the message) until its end (a dump's NLMSG_DONE, or the one answer). A kernel error
    is raised as OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.settimeout(10)
        s.send(request)
        while True:
            data = s.recv(1 << 16)  # a dump's messages come at most 32 KiB at a time
            at = 0
            while at + _HEADER.size <= len(data):
                size, kind, flags, _seq, _pid = _HEADER.unpack_from(data, at)
                if size < _HEADER.size:
                    raise NftError("malformed netlink message")
                if kind == _ERROR:
                    (code,) = struct.unpack_from("=i", data, at + _HEADER.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                if kind == _DONE:
                    return
                yield kind, flags, data[at : at + size]
                if not dump:
                    return
                at += (size + 3) & ~3


def _dump(request: bytes) -> list[bytes]:
    """A dump's messages, read whole; again when a transaction interrupted it."""
    for _ in range(_DUMP_TRIES):
        messages, interrupted = [], False
        for _kind, flags, msg in _talk(request, dump=True):
            interrupted |= bool(flags & _DUMP_INTR)
            messages.append(msg)
        if not interrupted:
            return messages
    raise NftError(f"a netlink dump was interrupted {_DUMP_TRIES} times by other transactions")


# -- decoding elements -------------------------------------------------------------------------
# A key or value as the kernel keeps it (a concatenation's fields each padded to 4 bytes;
# addresses and ports in network order, a mark in host order), in the JSON nft lists it in, as
# canonical text: what ``canon`` makes of that JSON, written directly.


def canon(value: Any) -> str:
    """JSON as canonical text: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _address(family: int, size: int) -> Callable[[bytes, int], str]:
    return lambda b, i: f'"{socket.inet_ntop(family, b[i : i + size])}"'


# /etc/protocols' names, as nft prints them (Portico's maps hold these three), else the number.
_PROTOCOLS = tuple(canon({6: "tcp", 17: "udp", 132: "sctp"}.get(n, n)) for n in range(256))
_FIELDS: dict[str, tuple[int, Callable[[bytes, int], str]]] = {
    "ipv4_addr": (4, _address(socket.AF_INET, 4)),
    "ipv6_addr": (16, _address(socket.AF_INET6, 16)),
    "inet_proto": (1, lambda b, i: _PROTOCOLS[b[i]]),
    "inet_service": (2, lambda b, i: str(b[i] << 8 | b[i + 1])),
    "mark": (4, lambda b, i: str(int.from_bytes(b[i : i + 4], sys.byteorder))),
}
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -5: "return"}  # NF_*, NFT_*
_JUMPS = {-3: "jump", -4: "goto"}  # NFT_JUMP, NFT_GOTO
_NOT_A_VALUE = canon({"netlink": "not a value"})


def _reader(typ: Any) -> Callable[[bytes], str] | None:
    """How to read a key or value of type ``typ`` (a listing's "type" or "map": a name, or a
    list of names for a concatenation) from its NFTA_DATA_* attribute; None when this module
    does not know the type."""
    if typ == "verdict":
        return _verdict
    if isinstance(typ, str) and typ in _FIELDS:
        size, field = _FIELDS[typ]

        def single(nest: bytes) -> str:
            data = _data_value(nest, size)
            return _NOT_A_VALUE if data is None else field(data, 0)

        return single
    if not isinstance(typ, list) or not typ or not all(t in _FIELDS for t in typ):
        return None
    fields, total = [], 0
    for t in typ:
        n, read = _FIELDS[t]
        fields.append((total, read))
        total += (n + 3) & ~3

    def concat(nest: bytes) -> str:
        data = _data_value(nest, total)
        if data is None:
            return _NOT_A_VALUE
        return '{"concat":[' + ",".join([read(data, at) for at, read in fields]) + "]}"

    return concat


def _data_value(nest: bytes, size: int) -> bytes | None:
    """The payload of an NFTA_DATA_VALUE attribute at the start of ``nest``, when it holds
    ``size`` bytes at least."""
    if len(nest) < 4:
        return None
    n, kind = struct.unpack_from("=HH", nest)
    if kind & 0x3FFF != _DATA_VALUE or n - 4 < size:
        return None
    return nest[4:n]


def _verdict(nest: bytes) -> str:
    where = _attrs(nest, 0, len(nest)).get(_DATA_VERDICT)
    if where is None:
        return _NOT_A_VALUE
    verdict = _attrs(nest, *where)
    if _VERDICT_CODE not in verdict:
        return _NOT_A_VALUE
    (code,) = struct.unpack_from(">i", nest, verdict[_VERDICT_CODE][0])
    if code in _JUMPS and _VERDICT_CHAIN in verdict:
        s, e = verdict[_VERDICT_CHAIN]
        target = nest[s:e].split(b"\0", 1)[0].decode()
        return canon({_JUMPS[code]: {"target": target}})
    return canon({_VERDICTS[code]: None} if code in _VERDICTS else {"verdict": code})


def generation() -> int | None:
    """The ruleset's generation (see the module docstring), or None when netlink does not
    give it (then nothing may be concluded from it)."""
    try:
        for kind, _flags, msg in _talk(_request(_GETGEN, _REQUEST, 0), dump=False):
            if kind == _NFT | _NEWGEN:
                where = _attrs(msg, _NFGENMSG, len(msg)).get(_GEN_ID)
                if where is not None:
                    return int.from_bytes(msg[where[0] : where[0] + 4], "big")
    except (OSError, NftError):
        pass
    return None


def counters(family: str, table: str) -> list[dict[str, Any]]:
    """The named counters of one table as nft lists them (name, handle, packets, bytes);
    none when the table does not exist. One dump of the counter objects alone."""
    attrs = _attr(_OBJ_TABLE, table.encode() + b"\0")
    attrs += _attr(_OBJ_TYPE, struct.pack("!I", _OBJECT_COUNTER))
    try:
        messages = _dump(_request(_GETOBJ, _REQUEST | _DUMP, _FAMILIES[family], attrs))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise NftError(f"listing the counters of {family} {table}: {e}") from e
    out = []
    for msg in messages:
        a = _attrs(msg, _NFGENMSG, len(msg))
        if not {_OBJ_TABLE, _OBJ_NAME, _OBJ_TYPE, _OBJ_DATA} <= set(a):
            continue

        def raw(where: tuple[int, int], buf: bytes = msg) -> bytes:
            return buf[where[0] : where[1]]

        if raw(a[_OBJ_TABLE]).split(b"\0", 1)[0].decode() != table:
            continue  # a kernel that ignores the dump's filter
        if int.from_bytes(raw(a[_OBJ_TYPE]), "big") != _OBJECT_COUNTER:
            continue
        data = _attrs(msg, *a[_OBJ_DATA])
        obj: dict[str, Any] = {
            "family": family,
            "name": raw(a[_OBJ_NAME]).split(b"\0", 1)[0].decode(),
            "table": table,
        }
        if _OBJ_HANDLE in a:
            obj["handle"] = int.from_bytes(raw(a[_OBJ_HANDLE]), "big")
        obj["packets"] = int.from_bytes(raw(data[_COUNTER_PACKETS]), "big")
        obj["bytes"] = int.from_bytes(raw(data[_COUNTER_BYTES]), "big")
        out.append(obj)
    return out


def decodable(decl: Mapping[str, Any]) -> bool:
    """Whether ``map_elements`` can read this map (its key and value types, not an interval)."""
    return (
        _reader(decl["type"]) is not None
        and _reader(decl["map"]) is not None
        and "interval" not in (decl.get("flags") or ())
    )


def map_elements(family: str, table: str, decl: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The elements of one map, ``decl`` being its object in a (terse) listing (name, type,
    map, flags), as (key, value) in the JSON nft lists them in, each as canonical text
    (``canon``); nothing when the map is not there. Read from netlink, the map's messages
    all at once (a dump that a transaction interrupts is read again), decoded as they are
    consumed."""
    key, value = _reader(decl["type"]), _reader(decl["map"])
    if key is None or value is None:
        raise ValueError(f"map {decl['name']}: types netlink decoding does not read")
    attrs = _attr(_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    attrs += _attr(_SET_ELEM_LIST_SET, str(decl["name"]).encode() + b"\0")
    request = _request(_GETSETELEM, _REQUEST | _DUMP, _FAMILIES[family], attrs)
    try:
        messages = _dump(request)
    except FileNotFoundError:
        return
    except OSError as e:
        raise NftError(f"listing the elements of {decl['name']}: {e}") from e
    values: dict[bytes, str] = {}  # values repeat: each decoded once
    unpack = struct.unpack_from
    for msg in messages:
        top = _attrs(msg, _NFGENMSG, len(msg)).get(_SET_ELEM_LIST_ELEMENTS)
        if top is None:
            continue
        for start, end in _nested(msg, *top):
            k, v, odd = None, "null", []
            while start + 4 <= end:  # the element's attributes
                size, kind = unpack("=HH", msg, start)
                if size < 4:
                    raise NftError("malformed netlink attribute")
                kind &= 0x3FFF
                raw = msg[start + 4 : start + size]
                if kind == _SET_ELEM_KEY:
                    k = key(raw)
                elif kind == _SET_ELEM_DATA:
                    v = values.get(raw) or values.setdefault(raw, value(raw))
                elif kind != _SET_ELEM_FLAGS or any(raw):
                    odd.append(kind)
                start += (size + 3) & ~3
            if k is None:
                raise NftError(f"an element of map {decl['name']} without a key")
            # Something Portico never puts in an element (a timeout, a comment, a counter,
            # an interval's end): a value no render has, so the element differs.
            yield k, (f'{{"netlink":{canon(sorted(odd))},"value":{v}}}' if odd else v)

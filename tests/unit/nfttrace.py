"""Where a packet goes through a table: a tracer over the fake kernel (``nftkernel.Kernel``), in
the spirit of kube-proxy's nftables proxier's tests (pkg/proxy/nftables/helpers_test.go), but
reading the libnftables JSON our renderers produce.

A :class:`Packet` (addresses, protocol, ports, mark, fragment offset, whether it is over every
``limit``; ``path`` "prerouting" for one arriving from outside, "output" for one the host sends)
is walked through the table's base chains hook by hook, each hook's chains in priority order,
with the routing decision between (a destination in ``local`` goes to input, any other is
forwarded and goes to postrouting; a locally sent packet goes through output, postrouting, and
input when it is for the host). A netdev table's ingress chains of the packet's device see it
first; ``fwd`` steals it, ``reject`` answers it from there. It is the first packet of a new
connection: conntrack state "new", conntrack mark 0; NAT chains run, and once one has set up a
hook's NAT the later NAT chains of that hook are skipped, as in the kernel.

Randomness is made explicit: a ``numgen random`` takes its value from ``choices`` (in the order
the packet meets them); :meth:`Tracer.traces` follows every choice and gives each path with its
probability. ``jhash`` is deterministic: the kernel's jhash (include/linux/jhash.h; it gives
lookup3's published test values) over the registers as nft_jhash reads them (each field of a
concatenation in network order, padded to 4 bytes), scaled by reciprocal_scale. That register
layout is read from the sources, not checked against a kernel here: tests should not depend on
which slot a given flow gets, only on what follows from the slot.

Only the forms our renderers emit are implemented (see ``_stmt`` and ``_eval``); anything else
raises :class:`UnknownExpression`, never passes silently. What the kernel would refuse at load
(a ``dnat`` reached from a filter chain, ``masquerade`` outside postrouting, ``reject`` in
postrouting, ``fwd`` outside netdev ingress, a jump to a base chain, a loop) raises
:class:`Invalid`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .nftkernel import Kernel, canon

Json = dict[str, Any]
_M32 = 0xFFFFFFFF
_PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite", "dccp")
_IP = {4: "ip", 6: "ip6"}
_NFPROTO = {4: "ipv4", 6: "ipv6"}
# The NAT a hook's nat chains set up: once one has, the hook's later nat chains are skipped.
_NAT_KIND = {"prerouting": "dst", "output": "dst", "postrouting": "src", "input": "src"}
_REJECT_HOOKS = ("prerouting", "input", "forward", "output", "ingress")
_IP_DF, _IP_MF = 0x4000, 0x2000
_MAX_JUMPS = 16  # NFT_JUMP_STACK_SIZE
_MAX_PATHS = 10_000


class UnknownExpression(ValueError):
    """A statement or expression form the tracer does not implement."""


class Invalid(AssertionError):
    """The kernel would refuse the ruleset (or loop on it)."""


class NeedsChoice(ValueError):
    """A ``numgen random`` was met with no choice left (pass ``choices`` or use ``traces``)."""

    def __init__(self, where: str, mod: int) -> None:
        super().__init__(f"{where}: numgen random mod {mod} needs a choice (0..{mod - 1})")
        self.mod = mod


class _Break(Exception):
    """The rule stops here (a match failed, a lookup missed, a field is absent)."""


@dataclass(frozen=True)
class Packet:
    saddr: str
    daddr: str
    l4proto: str = "tcp"
    sport: int = 40000
    dport: int = 80
    mark: int = 0
    path: str = "prerouting"  # "prerouting": arrives from outside; "output": sent by the host
    iif: str = "eth0"  # the device it arrives on (netdev ingress)
    # None: not a fragment (an IPv4 one has DF set, as Linux sends TCP); else the fragment's
    # offset in 8-byte units: 0 for the first fragment (IPv4: MF set; IPv6: a fragment header),
    # more for the others, which carry no transport header.
    frag_offset: int | None = None
    over_limit: bool = False  # every ``limit`` the packet meets is used up
    # A TCP packet's flags: a connection's first packet by default (the gateway's flow pinning
    # tells it from the later ones, which go through its flows maps).
    tcp_flags: tuple[str, ...] = ("syn",)

    def __post_init__(self) -> None:
        if self.path not in ("prerouting", "output"):
            raise ValueError(f"path {self.path!r} (want prerouting or output)")
        if self.frag_offset is not None and not 0 <= self.frag_offset < 0x2000:
            raise ValueError(f"fragment offset {self.frag_offset}")
        if ipaddress.ip_address(self.saddr).version != ipaddress.ip_address(self.daddr).version:
            raise ValueError("saddr and daddr of different families")

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.saddr).version


@dataclass(frozen=True)
class Outcome:
    """What happened to the packet, in short."""

    verdict: str  # accept | drop | reject | fwd
    dnat: tuple[str, int | None] | None = None  # the new destination (address, port)
    masquerade: bool = False
    fwd: str | None = None  # netdev fwd: the next hop's address (out of the device it came in)
    reject: str | None = None  # "tcp reset" | "icmpx port-unreachable" | ...


@dataclass
class Trace:
    outcome: Outcome
    fired: list[str]  # "<chain>[<rule>]: <what>", each verdict and effect in order
    mark: int  # the packet mark at the end
    ct_mark: int
    daddr: str  # the destination at the end (after DNAT)
    dport: int
    choices: tuple[tuple[int, int], ...]  # each numgen met: (mod, chosen)
    probability: Fraction
    hashes: list[tuple[bytes, int]]  # each jhash: the bytes hashed and the value it gave
    updates: list[tuple[str, str]]  # dynamic set updates: (set, canonical key)


@dataclass
class _State:
    pkt: Packet
    daddr: str
    dport: int
    mark: int
    ct_mark: int
    choices: Sequence[int]
    taken: list[tuple[int, int]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    nat: set[str] = field(default_factory=set)
    dnat: tuple[str, int | None] | None = None
    masquerade: bool = False
    fwd: str | None = None
    reject: str | None = None
    hashes: list[tuple[bytes, int]] = field(default_factory=list)
    updates: list[tuple[str, str]] = field(default_factory=list)
    base: Json = field(default_factory=dict)  # the base chain being run


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:  # __jhash_mix
    a = ((a - c) & _M32) ^ _rol(c, 4)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rol(a, 6)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rol(b, 8)
    b = (b + a) & _M32
    a = ((a - c) & _M32) ^ _rol(c, 16)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rol(a, 19)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rol(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:  # __jhash_final, giving c
    c = ((c ^ b) - _rol(b, 14)) & _M32
    a = ((a ^ c) - _rol(c, 11)) & _M32
    b = ((b ^ a) - _rol(a, 25)) & _M32
    c = ((c ^ b) - _rol(b, 16)) & _M32
    a = ((a ^ c) - _rol(c, 4)) & _M32
    b = ((b ^ a) - _rol(a, 14)) & _M32
    return ((c ^ b) - _rol(b, 24)) & _M32


def jhash(data: bytes, initval: int) -> int:
    """Linux's jhash() (Bob Jenkins' lookup3, include/linux/jhash.h), little-endian words."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    k = data
    while length > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _M32
        b = (b + int.from_bytes(k[4:8], "little")) & _M32
        c = (c + int.from_bytes(k[8:12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        length -= 12
        k = k[12:]
    if length == 0:
        return c
    tail = k + bytes(12 - length)  # the switch's fall-through adds, as zero-padded words
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


def _norm(value: Any) -> Any:
    """An address literal in canonical text (as the renderers write it); anything else as is."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value


def _one(d: Any, what: str) -> tuple[str, Any]:
    if not isinstance(d, dict) or len(d) != 1:
        raise UnknownExpression(f"{what}: {d!r}")
    ((k, v),) = d.items()
    return k, v


class Tracer:
    """Traces packets through ``ruleset``: a :class:`Kernel`, or a document it loads (a render's
    commands, a replace transaction, a listing). ``local``: the host's own addresses (where a
    destination is delivered rather than forwarded; loopback always is). Dynamic sets (affinity
    pins) start as the kernel holds them; a trace with ``commit=True`` adds its updates."""

    def __init__(
        self, ruleset: Kernel | Mapping[str, Any] | Iterable[Json], local: Iterable[str] = ()
    ) -> None:
        self.kernel = ruleset if isinstance(ruleset, Kernel) else Kernel.load(ruleset)
        if self.kernel.name is None:
            raise ValueError("no table to trace through")
        self.local = {str(ipaddress.ip_address(a)) for a in local}
        self.dynamic: dict[str, set[str]] = {}
        self._parsed: dict[str, list[Json]] = {}  # canonical rule -> its statements

    # -- entry points ------------------------------------------------------------------------
    def trace(self, pkt: Packet, choices: Sequence[int] = (), *, commit: bool = False) -> Trace:
        """One path: ``choices`` are the numgen values, in the order the packet meets them."""
        t = self._run(pkt, tuple(choices))
        if len(t.choices) != len(choices):
            raise ValueError(f"{len(choices)} choices given, {len(t.choices)} used")
        if commit:
            for name, key in t.updates:
                self.dynamic.setdefault(name, set()).add(key)
        return t

    def traces(self, pkt: Packet) -> list[Trace]:
        """Every path (each numgen choice followed), each with its probability."""
        out: list[Trace] = []
        pending: list[tuple[int, ...]] = [()]
        while pending:
            prefix = pending.pop()
            try:
                out.append(self._run(pkt, prefix))
            except NeedsChoice as n:
                pending += [(*prefix, c) for c in reversed(range(n.mod))]
            if len(out) + len(pending) > _MAX_PATHS:
                raise ValueError(f"more than {_MAX_PATHS} paths")
        return out

    def outcomes(self, pkt: Packet) -> dict[Outcome, Fraction]:
        """Each possible outcome and its probability."""
        out: dict[Outcome, Fraction] = {}
        for t in self.traces(pkt):
            out[t.outcome] = out.get(t.outcome, Fraction(0)) + t.probability
        return out

    # -- the walk ----------------------------------------------------------------------------
    def _run(self, pkt: Packet, choices: Sequence[int]) -> Trace:
        st = _State(pkt, _norm(pkt.daddr), pkt.dport, pkt.mark, 0, choices)
        verdict = self._walk(st)
        probability = Fraction(1)
        for mod, _ in st.taken:
            probability /= mod
        outcome = Outcome(verdict, st.dnat, st.masquerade, st.fwd, st.reject)
        return Trace(
            outcome,
            st.fired,
            st.mark,
            st.ct_mark,
            st.daddr,
            st.dport,
            tuple(st.taken),
            probability,
            st.hashes,
            st.updates,
        )

    def _walk(self, st: _State) -> str:
        if self.kernel.family == "netdev":
            if st.pkt.path != "prerouting":
                return "accept"  # a netdev ingress chain sees arriving packets only
            return self._hook(st, "ingress")
        if self.kernel.family not in ("inet", "ip", "ip6"):
            raise UnknownExpression(f"table family {self.kernel.family}")
        if st.pkt.path == "prerouting":
            hooks = ["prerouting", "ROUTE"]
        else:
            hooks = ["output", "postrouting", "LOCAL"]
        while hooks:
            hook = hooks.pop(0)
            if hook == "ROUTE":
                hooks = ["input"] if self._local(st.daddr) else ["forward", "postrouting"]
                continue
            if hook == "LOCAL":
                hooks = ["input"] if self._local(st.daddr) else []
                continue
            verdict = self._hook(st, hook)
            if verdict != "accept":
                return verdict
        return "accept"

    def _local(self, addr: str) -> bool:
        return addr in self.local or ipaddress.ip_address(addr).is_loopback

    def _hook(self, st: _State, hook: str) -> str:
        family = self.kernel.family
        if family in ("ip", "ip6") and family != _IP[st.pkt.family]:
            return "accept"
        bases = []
        for i, (name, c) in enumerate(self.kernel.chains.items()):
            if c.get("hook") != hook or (hook == "ingress" and self._device(name, c) != st.pkt.iif):
                continue
            if not isinstance(c.get("prio"), int):
                raise UnknownExpression(f"base chain {name}: priority {c.get('prio')!r}")
            bases.append((c["prio"], -i, name))
        # At equal priorities the chain registered last runs first.
        for _, _, name in sorted(bases):
            base = self.kernel.chains[name]
            if base.get("type") == "nat" and _NAT_KIND.get(hook) in st.nat:
                st.fired.append(f"{name}: skipped, NAT already set up")
                continue
            st.base = {**base, "name": name}
            verdict = self._chain(st, name)
            if verdict != "accept":
                return verdict
        return "accept"

    @staticmethod
    def _device(name: str, chain: Json) -> str:
        if "dev" not in chain:
            raise UnknownExpression(f"netdev base chain {name} without a device")
        return str(chain["dev"])

    def _rules(self, chain: str) -> list[list[Json]]:
        """The chain's rules as the kernel holds them now (it may have changed since)."""
        out = []
        for r in self.kernel.rules[chain]:
            if r not in self._parsed:
                self._parsed[r] = json.loads(r)
            out.append(self._parsed[r])
        return out

    def _chain(self, st: _State, base: str) -> str:
        stack: list[tuple[str, int]] = []
        chain, i = base, 0
        steps = 0
        while True:
            steps += 1
            if steps > 100_000:
                raise Invalid(f"{base}: loops")
            rules = self._rules(chain)
            if i >= len(rules):
                verdict: tuple[str, str | None] = ("return", None)
            else:
                verdict = self._rule(st, f"{chain}[{i}]", rules[i]) or ("continue", None)
                i += 1
            kind, target = verdict
            if kind == "continue":
                continue
            if kind == "return":
                if stack:
                    chain, i = stack.pop()
                    continue
                policy = str(self.kernel.chains[base].get("policy", "accept"))
                st.fired.append(f"{base}: policy {policy}")
                return policy
            if kind in ("jump", "goto"):
                assert target is not None
                if "hook" in self.kernel.chains[target]:
                    raise Invalid(f"{chain}: {kind} to base chain {target}")
                if kind == "jump":
                    if len(stack) >= _MAX_JUMPS:
                        raise Invalid(f"{chain}: jump stack over {_MAX_JUMPS}")
                    stack.append((chain, i))
                chain, i = target, 0
                continue
            return kind  # accept, drop, reject, fwd

    def _rule(self, st: _State, where: str, expr: list[Json]) -> tuple[str, str | None] | None:
        for stmt in expr:
            try:
                verdict = self._stmt(st, where, stmt)
            except _Break:
                return None
            if verdict is not None:
                return verdict
        return None

    # -- statements --------------------------------------------------------------------------
    def _stmt(self, st: _State, where: str, stmt: Json) -> tuple[str, str | None] | None:
        if isinstance(stmt, str) and stmt.split(" ", 1)[0] in ("add", "update"):
            # A map statement, which nft 1.0.6 lists as text: a dynamic map's update (the
            # gateway's flow pins); recorded by name, not modelled.
            name = stmt.split()[1].lstrip("@")
            st.updates.append((name, stmt))
            st.fired.append(f"{where}: {stmt}")
            return None
        k, v = _one(stmt, f"{where}: statement")
        if k == "match":
            left = self._eval(st, where, v["left"])
            if not self._compare(st, where, v["op"], left, v["right"]):
                raise _Break
            return None
        if k == "vmap":
            key = self._eval(st, where, v["key"])
            name = self._ref(where, v["data"])
            value = self._lookup(st, where, name, key)
            verdict = self._verdict(where, value)
            st.fired.append(f"{where}: vmap @{name} {canon(key)}: {self._show(value)}")
            return verdict
        if k in ("jump", "goto", "accept", "drop", "return"):
            verdict = self._verdict(where, stmt)
            st.fired.append(f"{where}: {self._show(stmt)}")
            return verdict
        if k == "mangle":
            value = self._eval(st, where, v["value"])
            if not isinstance(value, int) or not 0 <= value <= _M32:
                raise Invalid(f"{where}: mark value {value!r}")
            if v["key"] == {"meta": {"key": "mark"}}:
                st.mark = value
            elif v["key"] == {"ct": {"key": "mark"}}:
                st.ct_mark = value
            else:
                raise UnknownExpression(f"{where}: mangle of {v['key']!r}")
            return None
        if k == "reject":
            self._allowed(st, where, "reject", hooks=_REJECT_HOOKS)
            kind = v.get("type", "icmpx") if v else "icmpx"
            st.reject = f"{kind} {v['expr']}" if v and "expr" in v else kind
            if v and set(v) - {"type", "expr"}:
                raise UnknownExpression(f"{where}: reject {v!r}")
            st.fired.append(f"{where}: reject {st.reject}")
            return ("reject", None)
        if k == "dnat":
            self._allowed(st, where, "dnat", types=("nat",), hooks=("prerouting", "output"))
            if set(v) - {"family", "addr", "port"}:
                raise UnknownExpression(f"{where}: dnat {v!r}")
            addr = _norm(self._eval(st, where, v["addr"]))
            port = self._eval(st, where, v["port"]) if "port" in v else None
            if v.get("family", _IP[st.pkt.family]) != _IP[st.pkt.family]:
                return None  # nft_nat_inet_eval: another family's NAT does nothing
            if ipaddress.ip_address(addr).version != st.pkt.family:
                raise Invalid(f"{where}: dnat to {addr} for an IPv{st.pkt.family} packet")
            st.daddr = addr
            if port is not None:
                st.dport = port
            st.dnat = (addr, port)
            st.nat.add("dst")
            st.fired.append(f"{where}: dnat to {addr}" + (f" port {port}" if port else ""))
            return ("accept", None)
        if k == "masquerade":
            self._allowed(st, where, "masquerade", types=("nat",), hooks=("postrouting",))
            st.masquerade = True
            st.nat.add("src")
            st.fired.append(f"{where}: masquerade")
            return ("accept", None)
        if k == "set":
            if v.get("op") not in ("update", "add"):
                raise UnknownExpression(f"{where}: set {v!r}")
            name = self._ref(where, v["set"])
            key = canon(self._eval(st, where, v["elem"]))
            st.updates.append((name, key))
            st.fired.append(f"{where}: {v['op']} @{name} {key}")
            return None
        if k == "counter" and isinstance(v, str):  # a named counter (the gateway's per VIP)
            st.fired.append(f"{where}: counter name {v}")
            return None
        if k == "limit":
            if set(v) - {"rate", "burst", "per", "inv"}:  # a byte rate has "rate_unit"
                raise UnknownExpression(f"{where}: limit {v!r}")
            if st.pkt.over_limit != bool(v.get("inv", False)):
                raise _Break  # "limit rate": within; "limit rate over": over the limit
            return None
        if k == "fwd":
            self._allowed(st, where, "fwd", hooks=("ingress",))
            if set(v) != {"dev", "family", "addr"}:
                raise UnknownExpression(f"{where}: fwd {v!r}")
            dev = self._eval(st, where, v["dev"])
            addr = _norm(self._eval(st, where, v["addr"]))
            if v["family"] != _IP[st.pkt.family]:
                raise _Break  # nft_fwd_neigh_eval: another family's packet breaks
            st.fwd = addr
            st.fired.append(f"{where}: fwd {v['family']} to {addr} device {dev}")
            return ("fwd", None)
        raise UnknownExpression(f"{where}: statement {stmt!r}")

    @staticmethod
    def _allowed(
        st: _State, where: str, what: str, types: tuple[str, ...] = (), hooks: tuple[str, ...] = ()
    ) -> None:
        """The kernel's validation of NAT, reject and fwd: by the base chains that reach them."""
        base = st.base
        if types and base.get("type") not in types:
            raise Invalid(f"{where}: {what} reached from {base.get('type')} chain {base['name']}")
        if hooks and base.get("hook") not in hooks:
            raise Invalid(f"{where}: {what} reached from hook {base.get('hook')}")

    def _verdict(self, where: str, value: Any) -> tuple[str, str | None]:
        k, v = _one(value, f"{where}: verdict")
        if k in ("jump", "goto"):
            target = v["target"]
            if target not in self.kernel.chains:
                raise Invalid(f"{where}: {k} to missing chain {target}")
            return (k, str(target))
        if k in ("accept", "drop", "return", "continue") and v is None:
            return (k, None)
        raise UnknownExpression(f"{where}: verdict {value!r}")

    @staticmethod
    def _show(verdict: Any) -> str:
        if isinstance(verdict, dict) and len(verdict) == 1:
            ((k, v),) = verdict.items()
            if k in ("jump", "goto"):
                return f"{k} {v['target']}"
            if v is None:
                return str(k)
        return canon(verdict)

    # -- expressions -------------------------------------------------------------------------
    @staticmethod
    def _ref(where: str, data: Any) -> str:
        if not (isinstance(data, str) and data.startswith("@")):
            raise UnknownExpression(f"{where}: anonymous set or map {data!r}")
        return data[1:]

    def _eval(self, st: _State, where: str, e: Any) -> Any:
        if isinstance(e, bool):
            raise UnknownExpression(f"{where}: {e!r}")
        if isinstance(e, int):
            return e
        if isinstance(e, str):
            if e.startswith("@"):
                raise UnknownExpression(f"{where}: set {e} as a value")
            return _norm(e)
        k, v = _one(e, f"{where}: expression")
        if k == "payload":
            return self._payload(st, where, v)
        if k == "meta":
            key = v.get("key")
            if key == "l4proto":
                return st.pkt.l4proto
            if key == "mark":
                return st.mark
            if key == "nfproto":
                return _NFPROTO[st.pkt.family]
            if key in ("iif", "iifname"):
                return st.pkt.iif
            raise UnknownExpression(f"{where}: meta {key}")
        if k == "ct":
            if v == {"key": "state"}:
                return "new"
            if v == {"key": "mark"}:
                return st.ct_mark
            raise UnknownExpression(f"{where}: ct {v!r}")
        if k == "exthdr":
            if v != {"name": "frag", "field": "frag-off"}:
                raise UnknownExpression(f"{where}: exthdr {v!r}")
            if st.pkt.family != 6 or st.pkt.frag_offset is None:
                raise _Break  # no IPv6 fragment header: the expression breaks the rule
            return st.pkt.frag_offset
        if k == "fib":
            if v.get("result") != "type" or v.get("flags") != ["daddr"]:
                raise UnknownExpression(f"{where}: fib {v!r}")
            return "local" if self._local(st.daddr) else "unicast"
        if k == "concat":
            parts = [self._eval(st, where, x) for x in v]
            if any(isinstance(p, dict) for p in parts):
                raise UnknownExpression(f"{where}: nested concatenation {e!r}")
            return {"concat": parts}
        if k == "numgen":
            if v.get("mode") != "random" or set(v) - {"mode", "mod", "offset"}:
                raise UnknownExpression(f"{where}: numgen {v!r}")
            return self._choose(st, where, int(v["mod"])) + int(v.get("offset", 0))
        if k == "jhash":
            if set(v) - {"mod", "seed", "expr", "offset"}:
                raise UnknownExpression(f"{where}: jhash {v!r}")
            data = self._hash_input(st, where, v["expr"])
            h = (jhash(data, int(v.get("seed", 0))) * int(v["mod"])) >> 32  # reciprocal_scale
            st.hashes.append((data, h))
            return h + int(v.get("offset", 0))
        if k == "map":
            key = self._eval(st, where, v["key"])
            value = self._lookup(st, where, self._ref(where, v["data"]), key)
            return self._eval(st, where, value)
        if k == "&" and isinstance(v[1], list):  # TCP flags & a list of flags
            a = self._eval(st, where, v[0])
            return tuple(f for f in a if f in v[1])
        if k in ("&", "|", "^"):
            a, b = (self._eval(st, where, x) for x in v)
            if not (isinstance(a, int) and isinstance(b, int)):
                raise UnknownExpression(f"{where}: {k} of {a!r} and {b!r}")
            return a & b if k == "&" else a | b if k == "|" else a ^ b
        raise UnknownExpression(f"{where}: expression {e!r}")

    def _payload(self, st: _State, where: str, v: Json) -> Any:
        proto, fld = v.get("protocol"), v.get("field")
        if set(v) != {"protocol", "field"}:
            raise UnknownExpression(f"{where}: raw payload {v!r}")
        if proto in ("ip", "ip6") and fld in ("saddr", "daddr"):
            if proto != _IP[st.pkt.family]:
                raise _Break  # the implicit "meta nfproto" dependency fails
            return _norm(st.pkt.saddr) if fld == "saddr" else st.daddr
        if proto == "th" and fld in ("sport", "dport"):
            if st.pkt.l4proto not in _PORT_PROTOCOLS or st.pkt.frag_offset:
                raise _Break  # no transport header ports to load (nor in a later fragment)
            return st.pkt.sport if fld == "sport" else st.dport
        if proto == "tcp" and fld in ("sport", "dport", "flags"):
            if st.pkt.l4proto != "tcp" or st.pkt.frag_offset:
                raise _Break
            if fld == "flags":
                return tuple(sorted(st.pkt.tcp_flags))
            return st.pkt.sport if fld == "sport" else st.dport
        if proto == "ip" and fld == "frag-off":
            if st.pkt.family != 4:
                raise _Break
            off = st.pkt.frag_offset
            return _IP_DF if off is None else _IP_MF | off
        raise UnknownExpression(f"{where}: payload {proto} {fld}")

    def _hash_input(self, st: _State, where: str, e: Json) -> bytes:
        """The registers jhash reads: each field in network order, padded to 4 bytes."""
        parts = e["concat"] if isinstance(e, dict) and "concat" in e else [e]
        out = b""
        for p in parts:
            k, v = _one(p, f"{where}: jhash input")
            value = self._payload(st, where, v) if k == "payload" else None
            if isinstance(value, str):
                out += ipaddress.ip_address(value).packed
            elif isinstance(value, int) and v["protocol"] in ("th", "tcp"):
                out += value.to_bytes(2, "big") + bytes(2)
            else:
                raise UnknownExpression(f"{where}: jhash of {p!r}")
        return out

    def _choose(self, st: _State, where: str, mod: int) -> int:
        n = len(st.taken)
        if n >= len(st.choices):
            raise NeedsChoice(where, mod)
        c = st.choices[n]
        if not 0 <= c < mod:
            raise ValueError(f"{where}: choice {c} for numgen mod {mod}")
        st.taken.append((mod, c))
        return c

    def _compare(self, st: _State, where: str, op: str, left: Any, right: Any) -> bool:
        if isinstance(left, tuple):  # TCP flags
            flags = right if isinstance(right, list) else [right]
            if op == "==":
                return left == tuple(sorted(flags))
            if op in ("!", "in"):  # none of them set / any of them set
                return any(f in left for f in flags) == (op == "in")
            raise UnknownExpression(f"{where}: flags {op} {right!r}")
        if op == "in":  # flags: ct state
            flags = right if isinstance(right, list) else [right]
            if not isinstance(left, str) or not all(isinstance(f, str) for f in flags):
                raise UnknownExpression(f"{where}: {left!r} in {right!r}")
            return left in flags
        if op not in ("==", "!="):
            raise UnknownExpression(f"{where}: operator {op}")
        if isinstance(right, str) and right.startswith("@"):
            found = self._member(st, where, right[1:], left)
        elif isinstance(right, dict) and "set" in right:
            found = any(self._element_matches(where, left, x) for x in right["set"])
        elif isinstance(right, dict) and "prefix" in right:
            found = self._element_matches(where, left, right)
        elif isinstance(right, (str, int)) and not isinstance(right, bool):
            found = left == _norm(right)
        else:
            raise UnknownExpression(f"{where}: match against {right!r}")
        return found if op == "==" else not found

    @staticmethod
    def _element_matches(where: str, left: Any, element: Any) -> bool:
        """``left`` against one element of an interval set or an anonymous set."""
        if isinstance(element, (str, int)) and not isinstance(element, bool):
            return bool(left == _norm(element))
        k, v = _one(element, f"{where}: set element")
        if k == "prefix":
            if isinstance(v["addr"], int):  # a mark's top bits
                if not isinstance(left, int):
                    raise UnknownExpression(f"{where}: {left!r} against {element!r}")
                shift = 32 - int(v["len"])
                return left >> shift == v["addr"] >> shift
            if not isinstance(left, str):
                raise UnknownExpression(f"{where}: {left!r} against {element!r}")
            net = ipaddress.ip_network(f"{v['addr']}/{v['len']}")
            addr = ipaddress.ip_address(left)
            return addr.version == net.version and addr in net
        if k == "range":
            lo, hi = (ipaddress.ip_address(a) for a in v)
            addr = ipaddress.ip_address(left)
            return addr.version == lo.version and lo <= addr <= hi  # type: ignore[operator]
        raise UnknownExpression(f"{where}: set element {element!r}")

    def _coll(self, where: str, name: str) -> Json:
        if name not in self.kernel.colls:
            raise Invalid(f"{where}: no set or map {name}")
        return self.kernel.colls[name]

    def _member(self, st: _State, where: str, name: str, key: Any) -> bool:
        coll = self._coll(where, name)
        if "interval" in (coll.get("flags") or ()):
            return any(
                self._element_matches(where, key, json.loads(k)) for k in self.kernel.elems[name]
            )
        c = canon(key)
        return (
            c in self.kernel.elems[name]
            or c in self.dynamic.get(name, ())
            or (name, c) in st.updates
        )

    def _lookup(self, st: _State, where: str, name: str, key: Any) -> Any:
        coll = self._coll(where, name)
        if "map" not in coll or "interval" in (coll.get("flags") or ()):
            raise UnknownExpression(f"{where}: lookup in {name} ({coll})")
        value = self.kernel.elems[name].get(canon(key))
        if value is None:
            raise _Break  # a miss: the rule stops
        return json.loads(value)

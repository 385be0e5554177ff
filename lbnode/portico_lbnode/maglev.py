"""Maglev consistent hashing: which backend node each slot of a Service's lookup table names.

The gateway hashes a flow to one of the table's M slots and forwards to the node in that slot.
Maglev (Eisenbud et al., NSDI 2016, "Maglev: A Fast and Reliable Software Network Load
Balancer", section 3.4) fills the table so that every backend gets an (almost) equal share of
slots and a change of the backend set reassigns few slots besides those of the backend that
left or the share given to the one that came. Weights follow Katran's ``MaglevHashV2``: each
round a backend adds its weight to a credit and takes a turn when the credit reaches the largest
weight, so turns - and slots - come out proportional to weight.

Pure: no I/O, and the same inputs give the same table in every process and on every machine
(names are hashed with blake2b, never Python's salted ``hash()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

# Maglev needs M prime (so every skip in 1..M-1 is coprime with M and each backend's probe
# sequence is a full permutation of the slots) and M >> N. With equal weights every backend gets
# floor(M/N) or ceil(M/N) slots, so the imbalance is at most N/M; the paper (section 3.4) asks for
# M > 100 * N for at most 1%, and a larger M also lowers the extra churn on a backend change
# (section 5.3). 4093, the largest prime below 4096, serves up to ~40 nodes per Service with
# <= ~1% imbalance; removing one of 10 nodes moves at worst ~1.15/N of the flows, one of 20
# ~1.4/N (bench/gateway_maglev.py). M also bounds kernel memory: every Service-port's backend
# set becomes an nftables map of M elements.
# Measured on Linux 6.18, nft 1.0.6 (25 maps `type mark : ipv4_addr` of 4093 elements in a
# scratch netns, /proc/meminfo Slab before/after): ~95 bytes per element, ~380 KiB per map.
DEFAULT_TABLE_SIZE = 4093

Backends = Mapping[str, int] | Sequence[tuple[str, int]]


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _checked(backends: Backends) -> list[tuple[str, int]]:
    """(name, weight) pairs sorted by name, so that the table does not depend on input order."""
    pairs: Iterable[tuple[str, int]] = (
        backends.items() if isinstance(backends, Mapping) else backends
    )
    out: dict[str, int] = {}
    for name, weight in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"backend name must be a non-empty string: {name!r}")
        # bool is an int subclass; True as a weight is a caller's bug, not "weight 1".
        if not isinstance(weight, int) or isinstance(weight, bool) or weight <= 0:
            raise ValueError(f"backend {name!r}: weight must be a positive int, got {weight!r}")
        if name in out:
            raise ValueError(f"backend {name!r} given twice")
        out[name] = weight
    return sorted(out.items())


def permutation_start(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of the backend's probe sequence ``offset + j * skip mod size``."""
    digest = hashlib.blake2b(name.encode(), digest_size=16, person=b"portico-maglev").digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def maglev_table(backends: Backends, size: int = DEFAULT_TABLE_SIZE) -> tuple[str, ...]:
    """The Maglev lookup table: slot i holds the name of the backend that slot i's flows go to.

    `backends` are (name, weight) with distinct non-empty names and positive int weights; `size`
    must be prime. No backends give an empty tuple.
    """
    if not is_prime(size):
        raise ValueError(f"Maglev table size must be prime, got {size}")
    pairs = _checked(backends)
    if not pairs:
        return ()
    names = [name for name, _ in pairs]
    if len(pairs) == 1:
        return (names[0],) * size

    weights = [w for _, w in pairs]
    max_weight = max(weights)
    starts = [permutation_start(name, size) for name in names]
    # Where each backend's probe sequence stands (the next slot it will try), and its step.
    cursor = [offset for offset, _ in starts]
    skips = [skip for _, skip in starts]
    credit = [0] * len(pairs)
    owner = [-1] * size
    filled = 0
    # Hot loop: locals only, one modulo per probe (cur + skip < 2 * size, so a subtraction).
    while True:
        for i, weight in enumerate(weights):
            c = credit[i] + weight
            if c < max_weight:
                credit[i] = c
                continue
            credit[i] = c - max_weight
            cur = cursor[i]
            skip = skips[i]
            while owner[cur] >= 0:
                cur += skip
                if cur >= size:
                    cur -= size
            owner[cur] = i
            cur += skip
            cursor[i] = cur - size if cur >= size else cur
            filled += 1
            if filled == size:
                return tuple(names[i] for i in owner)


def modulo_table(names: Iterable[str], size: int = DEFAULT_TABLE_SIZE) -> tuple[str, ...]:
    """BASELINE for comparison only, not used by the gateway: plain ``hash mod N`` hashing, slot
    i -> sorted(names)[i % N]. Removing one of N backends moves about (N-1)/N of the flows."""
    ordered = sorted(set(names))
    if not ordered:
        return ()
    return tuple(ordered[i % len(ordered)] for i in range(size))


def moved_share(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of slots whose backend differs between two tables of the same size."""
    if len(before) != len(after):
        raise ValueError(f"tables differ in size: {len(before)} != {len(after)}")
    if not before:
        return 0.0
    return sum(1 for a, b in zip(before, after, strict=True) if a != b) / len(before)

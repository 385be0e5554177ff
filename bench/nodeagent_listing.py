"""What reading the node's table back costs at 10,000 Services: the agent's verify (every 5 s)
and its start on a node that has the table both list it and read the listing into a
RulesIndex. The whole table as one libnftables JSON listing (what NftTable did) against
leaner ways to the same index: the rules, chains and map definitions from a terse listing
(``list ruleset inet`` without elements, which nft 1.0.6 then does not fetch) and each map's
elements from a listing of that map alone, each command in a libnftables context of its own,
freed after it (a context keeps its cache of everything it listed until its next command);
and what the agent does now (NftTable.current, at a restart; NftTable.kernel_holds, verify's
comparison): the terse listing, then each map's elements dumped from netlink and decoded,
one map at a time (read into the index, or compared as they come and kept nowhere).
Runs in a network namespace of its own (root needed), no lab.

    .venv/bin/python bench/nodeagent_listing.py [--services 10000]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeagent_apply import NODE, peak_mib, reset_peak, services
from portico_nodeagent import nftnames as N
from portico_nodeagent.incremental import NodeRenderer
from portico_nodeagent.rulesindex import RulesIndex, index_rules

NETNS = "ptc-bench-nodeagent-listing"
LIBC = ctypes.CDLL("libc.so.6")


def handle() -> Any:
    import nftables  # Debian's python3-nftables, on the venv's path

    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


def run(nft: Any, cmd: str) -> dict[str, Any]:
    rc, out, err = nft.cmd(cmd)
    if rc != 0:
        raise SystemExit(f"{cmd}: {err}")
    return json.loads(out)  # type: ignore[no-any-return]


def whole(nft: Any) -> RulesIndex:
    """What NftTable did: one JSON listing of the table, read into an index."""
    return index_rules(run(nft, f"list table {N.FAMILY} {N.TABLE}"))


def lean(_: Any) -> RulesIndex:
    """The same index from a terse listing and one listing per map, each in a context of its
    own: at most one map's elements in memory at a time."""
    nft = handle()
    nft.set_terse_output(True)
    skeleton = run(nft, f"list ruleset {N.FAMILY}")
    del nft
    items = skeleton["nftables"]
    maps = [i["map"]["name"] for i in items if "map" in i and i["map"]["table"] == N.TABLE]
    # The terse listing's maps are declarations; their elements come from the listings below.
    idx = index_rules({"nftables": [i for i in items if "map" not in i]})
    for m in maps:
        part = run(handle(), f"list map {N.FAMILY} {N.TABLE} {m}")
        sub = index_rules(part)
        idx.maps.update(sub.maps)
        idx.elements.update(sub.elements)
    return idx


def agent_current(_: Any) -> RulesIndex:
    """NftTable.current: the terse listing, then each map's elements from netlink."""
    render = TABLE.current()
    assert render is not None
    return render.index


def agent_compare(_: Any) -> RulesIndex:
    """NftTable.kernel_holds (verify): compared as they come; the index returned is the
    applied one when it holds."""
    applied = TABLE.applied
    assert applied is not None
    if not TABLE.kernel_holds(applied):
        raise SystemExit("the kernel's table differs from what was applied")
    return applied.index


def measure(label: str, read: Callable[[Any], RulesIndex], want: RulesIndex, fresh: bool) -> None:
    nft = handle() if fresh else SHARED
    gc.collect()
    LIBC.malloc_trim(0)
    start = reset_peak()
    t0 = time.perf_counter()
    idx = read(nft)
    seconds = time.perf_counter() - t0
    peak = peak_mib()
    if not idx.same_as(want):
        raise SystemExit(f"{label}: {idx.differences(want)}")
    del idx, nft
    gc.collect()
    LIBC.malloc_trim(0)
    kept = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]
    print(
        f"| {label} | {seconds * 1000:.0f} ms | {peak:.0f} MiB (+{peak - start:.0f}) "
        f"| {int(kept) / 1024 - start:+.0f} MiB |"
    )


SHARED: Any = None
TABLE: Any = None


def main() -> int:
    global SHARED, TABLE
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            argv = [sys.executable, __file__, "--inside", "--services", str(args.services)]
            return subprocess.run(["ip", "netns", "exec", NETNS, *argv]).returncode
        finally:
            subprocess.run(["ip", "netns", "del", NETNS])
    from portico_nodeagent.nft import NftTable

    table = TABLE = NftTable()
    render = NodeRenderer().render(services(args.services), NODE)
    table.apply(render)
    SHARED = table._nft._nft  # the handle the agent's transactions go through
    print(f"{args.services} Services, {render.index.counts()['elements']} elements")
    print("| how | time | peak RSS (+ over start) | kept after, trimmed |")
    print("|---|---|---|---|")
    measure(
        "whole table, JSON, a long-lived handle (the agent's before)",
        whole,
        render.index,
        fresh=False,
    )
    measure("whole table, JSON, a fresh handle (freed)", whole, render.index, fresh=True)
    measure("terse ruleset + one map at a time", lean, render.index, fresh=True)
    measure(
        "the agent's: terse ruleset + netlink, into an index", agent_current, render.index, True
    )
    measure(
        "the agent's verify: terse ruleset + netlink, compared", agent_compare, render.index, True
    )
    table.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

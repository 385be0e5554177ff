"""One node's table at scale: what an endpoint change costs the agent with 10 vs 10,000
LoadBalancer Services loaded, where the time goes (render, diff, the nftables transaction), and
the agent's memory: its peak RSS while it loads the table and applies changes, and during the
jobs it runs besides (verify, every 5 s: one that reads the table back, one that finds the
ruleset's generation unchanged; the read of the kernel's table when an agent restarts on a node
that has it; the render check, every 60 s; a full replace, the fallback when a change is
refused). Runs in a network namespace of its own (root needed), no lab. Each job is run as the
agent runs it (NodeRenderer, NftTable.apply / verify / rebuild, render_drift), in one process,
in that order; its peak is the process's own (VmHWM, reset before each job), so it includes
what the jobs before it left behind. ``--no-trim``: without giving freed memory back to the
system after big operations (``portico_common.nfthandle.trim``), to see what that does.

    .venv/bin/python bench/nodeagent_apply.py [--services 10 10000] [--changes 20] [--no-trim]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from portico_common import nfttable
from portico_common.model import Endpoint, EndpointPort, LBService, NodeInfo, ServicePort
from portico_nodeagent.drift import render_drift
from portico_nodeagent.incremental import NodeRenderer, Render

NETNS = "ptc-bench-nodeagent"
NODE = NodeInfo("node-1", "zone-a", ("198.18.0.10",))
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def services(n: int) -> list[LBService]:
    ports = tuple(ServicePort(f"p{k}", "TCP", 80 + k, None, 8080) for k in range(3))
    eps = tuple(
        Endpoint(
            f"198.19.{node}.{2 + k}",
            f"node-{node}",
            "zone-a",
            ports=(EndpointPort("p0", "TCP", 8080),),
        )
        for node in (1, 2, 3)
        for k in range(2)
    )
    out = []
    for i in range(n):
        vip = f"198.18.{32 + i // 250}.{1 + i % 250}"
        out.append(LBService("bench", f"s{i}", (vip,), ports, eps))
    return out


def ms(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def _status(field: str) -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def peak_mib() -> float:
    """The process's peak RSS since the last ``reset_peak`` (VmHWM), in MiB."""
    return _status("VmHWM")


def reset_peak() -> float:
    """Starts a new peak (proc(5): VmHWM := VmRSS); returns the RSS it starts from, in MiB."""
    CLEAR_REFS.write_text("5")
    return _status("VmRSS")


def rss_mib() -> float:
    return _status("VmRSS")


def measure(n: int, changes: int) -> dict[str, float]:
    from portico_nodeagent.nft import NftTable

    table = NftTable()
    renderer = NodeRenderer()
    svcs = services(n)
    reset_peak()
    # The agent's start on a node without the table: a full render, the table built from it.
    t0 = time.perf_counter()
    render = renderer.render(svcs, NODE)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.apply(render)
    first_s = time.perf_counter() - t0
    del render
    renders, diffs, txns, wholes = [], [], [], []
    for c in range(changes):
        # One endpoint of one Service goes not-ready, then ready again.
        i = (c // 2) % n
        eps = list(svcs[i].endpoints)
        eps[0] = replace(eps[0], ready=c % 2 == 1, serving=c % 2 == 1)
        svcs[i] = replace(svcs[i], endpoints=tuple(eps))
        t0 = time.perf_counter()
        render = renderer.render(svcs, NODE)  # as the agent does: cached per Service
        renders.append(time.perf_counter() - t0)
        result = table.apply(render)
        diffs.append(result.seconds - result.transaction_seconds)
        txns.append(result.transaction_seconds)
        wholes.append(renders[-1] + result.seconds)
        del render
    main_peak = peak_mib()
    kept = rss_mib()
    # verify: the kernel's table read back and compared; False = it holds exactly what was
    # applied (which also checks the table built in steps). The first verify after a start
    # reads it: no read has yet found the table as applied at a known generation.
    verify_from = reset_peak()
    t0 = time.perf_counter()
    if table.verify():
        raise SystemExit("the table in the kernel differs from what was applied")
    verify_s = time.perf_counter() - t0
    verify_peak = peak_mib()
    assert table.reads == 1, "the verify did not read the table"
    # The next one finds the ruleset's generation unchanged: nothing read.
    t0 = time.perf_counter()
    if table.verify():
        raise SystemExit("the table in the kernel differs from what was applied")
    unchanged_s = time.perf_counter() - t0
    assert table.skips == 1, "the verify read the table although nothing changed"
    applied = table.applied
    assert applied is not None
    # An agent restarting on a node that has the table: the kernel's table read into an index
    # and diffed from (nothing to change).
    restart_from = reset_peak()
    t0 = time.perf_counter()
    mode = NftTable().apply(Render(applied.index, applied.document)).mode
    restart_s = time.perf_counter() - t0
    restart_peak = peak_mib()
    if mode != "none":
        raise SystemExit(f"a restart changed the table ({mode})")
    check_from = reset_peak()
    t0 = time.perf_counter()
    if render_drift(applied.index, svcs, NODE):
        raise SystemExit("the incremental render differs from a render from scratch")
    check_s = time.perf_counter() - t0
    check_peak = peak_mib()
    # The fallback: one transaction that replaces the whole table (as the agent's apply and
    # verify run it, then give memory back).
    reload_from = reset_peak()
    t0 = time.perf_counter()
    replacement = table.rebuild(applied, lambda: None)
    commands = replacement.commands
    table.run(replacement)
    del replacement
    nfttable.trim()
    reload_s = time.perf_counter() - t0
    reload_peak = peak_mib()
    reload_kept = rss_mib()
    table._held_at = None  # read it back (run outside apply, which would have forgotten it)
    if table.verify():
        raise SystemExit("the full replace left another table than was applied")
    table.cleanup()
    return {
        "commands": commands,
        "render_full": render_s,
        "first": first_s,
        "reload": reload_s,
        "render50": ms(renders, 50),
        "whole50": ms(wholes, 50),
        "whole99": ms(wholes, 99),
        "diff50": ms(diffs, 50),
        "txn50": ms(txns, 50),
        "txn99": ms(txns, 99),
        "main_peak": main_peak,
        "kept": kept,
        "unchanged": unchanged_s,
        "restart": restart_s,
        "restart_peak": restart_peak,
        "restart_from": restart_from,
        "verify": verify_s,
        "verify_peak": verify_peak,
        "verify_from": verify_from,
        "check_from": check_from,
        "reload_from": reload_from,
        "reload_kept": reload_kept,
        "check": check_s,
        "check_peak": check_peak,
        "reload_peak": reload_peak,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--services", type=int, nargs="+", default=[10, 10000])
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--no-trim", action="store_true", help="never give freed memory back")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        try:
            argv = [sys.executable, __file__, "--inside", "--changes", str(args.changes)]
            argv += ["--services", *map(str, args.services)]
            argv += ["--no-trim"] if args.no_trim else []
            return subprocess.run(["ip", "netns", "exec", NETNS, *argv]).returncode
        finally:
            subprocess.run(["ip", "netns", "del", NETNS])
    if args.no_trim:
        nfttable.trim = lambda: None
    results = {n: measure(n, args.changes) for n in args.services}
    print(
        "| Services (x3 ports, 6 endpoints) | commands | full render | first load | full replace "
        "| one endpoint change: transaction p50 / p99 | render | diff "
        "| render + diff + transaction p50 / p99 | peak RSS: load + changes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(
            f"| {n} | {r['commands']} | {r['render_full'] * 1000:.0f} ms "
            f"| {r['first'] * 1000:.0f} ms | {r['reload'] * 1000:.0f} ms "
            f"| {r['txn50']:.1f} / {r['txn99']:.1f} ms | {r['render50']:.1f} ms "
            f"| {r['diff50']:.1f} ms | {r['whole50']:.1f} / {r['whole99']:.1f} ms "
            f"| {r['main_peak']:.0f} MiB |"
        )
    print()
    print(
        "| Services | peak RSS: load + changes (RSS after) "
        "| verify (every 5 s) reading the table: time, peak RSS (from) "
        "| verify, generation unchanged: time "
        "| a restart's read of the table: time, peak RSS (from) "
        "| render check (every 60 s): time, peak RSS (from) "
        "| full replace (fallback): time, peak RSS (from), RSS after | max RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(
            f"| {n} | {r['main_peak']:.0f} ({r['kept']:.0f}) MiB "
            f"| {r['verify'] * 1000:.0f} ms, {r['verify_peak']:.0f} ({r['verify_from']:.0f}) MiB "
            f"| {r['unchanged'] * 1000:.2f} ms "
            f"| {r['restart'] * 1000:.0f} ms, "
            f"{r['restart_peak']:.0f} ({r['restart_from']:.0f}) MiB "
            f"| {r['check'] * 1000:.0f} ms, {r['check_peak']:.0f} ({r['check_from']:.0f}) MiB "
            f"| {r['reload'] * 1000:.0f} ms, {r['reload_peak']:.0f} ({r['reload_from']:.0f}) MiB, "
            f"{r['reload_kept']:.0f} MiB "
            f"| {r['rss']:.0f} MiB |"
        )
    print("goal: one endpoint change at 10,000 Services, transaction < 20 ms; the agent's peak")
    print("RSS in every job <= 256 MiB (DaemonSet limit: 1 GiB), but the full replace: one")
    print("transaction, which libnftables holds whole (~2.3 KiB an element)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

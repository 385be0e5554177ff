"""The gateway end to end, in the real lab (operator, node agents and lbnode from install()):

A. Service created -> first successful request from client-1 through the gateway (the client
   ARPs for a VIP it never used), p50 / p99 over N Services created one at a time
   (externalTrafficPolicy Cluster by default; goal <= 250 / <= 500 ms), and the median of each
   stage: operator (create -> ingress IP), ingress -> lbnode saw the CR, -> healthy,
   -> programmed, -> announced, -> the client's first answer (the gateway's log line
   "serving ..." gives the lbnode stages).
B. node-2's link down -> no new flows to it: an ETP Local Service (the echo's node is the
   node the gateway chose), a client opening ~200 new connections/s (0.5 s timeout each);
   detection = the start of the last connection after t0 that failed or reached node-2,
   p50 / p99 over --trials, with the default probes and again with the gateway restarted
   with --probe-interval/--probe-timeout 0.2.
C. throughput and connection rate via the gateway vs direct to a node (gateway_throughput.py).

With --floor, part A interleaves (one Service at a time, alternating which goes first) each
Portico Service with a floor Service, and prints how far Portico is from that floor, stage by
stage. The floor is what no load balancer can beat in this lab:
  - a zero-work controller (a process: one raw watch on the namespace's Services; on the ADDED
    event of a Service of its class it PATCHes status.loadBalancer.ingress, nothing else), and
  - a pre-programmed path: the address it writes is a VIP the gateway already announces and
    forwards, and the nodes already DNAT to the echo pods (a Portico Service holding that VIP,
    made before the measurements), so what is left is the Service's own endpoints: the floor's
    first answer is client-1's first request (ARPing again: its neighbour entry is flushed
    before each create) once its ingress IP and a ready endpoint in its EndpointSlice are
    seen.
For Portico's Services the same watches give created -> EndpointSlice ready and created ->
NodeRules entry with a ready endpoint (what the node agents program from).

  .venv/bin/python bench/gateway_e2e.py [--n 100] [--etp Cluster|Local] [--trials 5]
                                        [--parts ABC] [--reps 3] [--floor] [--gap 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import gateway_throughput
from _common import (
    FirstWatch,
    IngressWatch,
    noderules_services,
    pct,
    ready_slice_services,
    service,
    wait_until,
)
from dataplane import Prober
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import install, start_gateway
from portico_lab.procs import Proc, netns_argv

NS = "default"
GATEWAY = "gw-1"
LBNODE_PROC = f"portico-lbnode-{GATEWAY}"
STAGES = [
    ("create -> ingress IP (operator)", "created", "ingress"),
    ("ingress IP -> lbnode CR seen", "ingress", "cr_seen"),
    ("CR seen -> first healthy probe", "cr_seen", "healthy"),
    ("healthy -> programmed", "healthy", "programmed"),
    ("programmed -> announced", "programmed", "announced"),
    ("announced -> first answer at client-1", "announced", "answered"),
]


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def served_timings(lab: Lab) -> dict[str, dict[str, float]]:
    """The gateway's "serving ns/name" timing records, by Service key (the last one wins)."""
    out = {}
    for line in (lab.workdir / "logs" / f"lbnode-{GATEWAY}.log").read_text().splitlines():
        if '"timing"' not in line:
            continue
        try:
            t = json.loads(line)["timing"]
        except (ValueError, KeyError):
            continue
        if "service" in t:  # other records carry a timing too (the ARP verdicts')
            out[t["service"]] = t
    return out


def gateway_starts(lab: Lab) -> int:
    return gateway_log(lab).count("portico-lbnode gw-1 starting")


def programmed_since_start(lab: Lab, starts_before: int) -> bool:
    """True once the gateway started after the ``starts_before``-th start programmed a table."""
    parts = gateway_log(lab).split("portico-lbnode gw-1 starting")
    return len(parts) > starts_before + 1 and '"forwarding: ' in parts[-1]


def gateway_log(lab: Lab) -> str:
    return (lab.workdir / "logs" / f"lbnode-{GATEWAY}.log").read_text()


def served_timings_has(lab: Lab, name: str) -> bool:
    return f"{NS}/{name}" in served_timings(lab)


def lb_status(lab: Lab, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(lab.api)
    try:
        obj = custom.get_namespaced_custom_object(
            "portico.dev", "v1alpha1", NS, "loadbalancers", name
        )
    except ApiException:
        return {}
    return obj.get("status") or {}


def healthy_nodes(lab: Lab, name: str) -> set[str]:
    return {n["node"] for n in lb_status(lab, name).get("nodes") or [] if n.get("healthy")}


def delete_services(core: client.CoreV1Api, names: list[str]) -> None:
    for n in names:
        try:
            core.delete_namespaced_service(n, NS)
        except ApiException as e:
            if e.status != 404:
                raise


# ---------------------------------------------------------------------------------------------
# the floor: a zero-work controller and a pre-programmed path
# ---------------------------------------------------------------------------------------------
FLOOR_CLASS = "bench.portico.dev/floor"  # a class Portico does not serve
FLOOR_HOLDER = "gwb-floor-path"  # the Portico Service that keeps the floor's VIP programmed

# One raw watch on the namespace's Services; the ADDED event of a Service of class CLS without
# an ingress -> one merge PATCH of its status with IP. Nothing else (no cache, no queue).
_ZERO_WORK_CONTROLLER = r"""
import json, ssl, sys, httpx
server, ca, cert, key, ns, cls, ip = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
watch = httpx.Client(base_url=server, verify=ctx, timeout=httpx.Timeout(10, read=None))
write = httpx.Client(base_url=server, verify=ctx, timeout=10)
path = f"/api/v1/namespaces/{ns}/services"
body = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
headers = {"Content-Type": "application/merge-patch+json"}
rv = watch.get(path).json()["metadata"]["resourceVersion"]
print("watching", flush=True)
while True:
    params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
    with watch.stream("GET", path, params=params) as r:
        for line in r.iter_lines():
            if not line:
                continue
            ev = json.loads(line)
            if ev["type"] == "ERROR":
                rv = watch.get(path).json()["metadata"]["resourceVersion"]
                break
            obj = ev["object"]
            rv = obj["metadata"].get("resourceVersion", rv)
            if ev["type"] != "ADDED" or obj["spec"].get("loadBalancerClass") != cls:
                continue
            if ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                continue
            r2 = write.patch(f"{path}/{obj['metadata']['name']}/status", content=body,
                             headers=headers)
            print(obj["metadata"]["name"], r2.status_code, flush=True)
"""


def start_floor(lab: Lab, core: client.CoreV1Api, etp: str) -> str:
    """The floor's VIP programmed on the gateway and the nodes (a Portico Service holding it,
    answering client-1), and the zero-work controller writing it; returns the VIP."""
    vip = str(lab.plan.vip_range_v4[-2])
    body = service(
        FLOOR_HOLDER,
        NS,
        annotations={"portico.dev/load-balancer-ips": vip},
        externalTrafficPolicy=etp,
    )
    core.create_namespaced_service(NS, body)
    prober = Prober(lab, "client-1")
    try:
        if prober.ask(f"tcp {vip}")["t"] is None:
            raise RuntimeError(f"the floor's VIP {vip} never answered client-1")
    finally:
        prober.close()
    cp = lab.control_plane
    assert cp is not None and cp.files is not None
    log = lab.workdir / "logs" / "floor-controller.log"
    argv = [
        sys.executable,
        "-c",
        _ZERO_WORK_CONTROLLER,
        cp.server,
        str(cp.files.ca),
        str(cp.files.admin.cert),
        str(cp.files.admin.key),
        NS,
        FLOOR_CLASS,
        vip,
    ]
    lab.procs.append(Proc("floor-controller", argv, log).start())
    wait_until(lambda: "watching" in log.read_text(), "the zero-work controller", 30)
    return vip


# ---------------------------------------------------------------------------------------------
# A. Service created -> first answer
# ---------------------------------------------------------------------------------------------
def lb_gone(lab: Lab, name: str) -> bool:
    try:
        client.CustomObjectsApi(lab.api).get_namespaced_custom_object(
            "portico.dev", "v1alpha1", NS, "loadbalancers", name
        )
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def part_a(
    lab: Lab,
    core: client.CoreV1Api,
    n: int,
    etp: str,
    churn: bool = False,
    floor_vip: str | None = None,
    floor_rows: list[dict[str, float]] | None = None,
    gap: float = 0.0,
) -> list[dict[str, float]]:
    """``churn``: each Service is deleted (and its LoadBalancer gone) before the next is made,
    so the gateway serves one Service at a time; the client's neighbour table is flushed
    before each create, as the allocator may hand out the freed VIP again. ``floor_vip``:
    each round also times a floor Service (see start_floor), appended to ``floor_rows``.
    ``gap``: seconds of quiet before each create (the last Service's aftermath settles)."""
    watch = IngressWatch(lab, NS)
    slices = FirstWatch(
        lab, f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", ready_slice_services
    )
    rules = FirstWatch(lab, "/apis/portico.dev/v1alpha1/noderules", noderules_services)
    # Without the floor, only the watch part A always had (the same load as before).
    watches: list[IngressWatch | FirstWatch] = [watch, slices, rules] if floor_vip else [watch]
    for w in watches:
        w.start()
        w.ready.wait(30)
    prober = Prober(lab, "client-1")
    names: list[str] = []
    floor_names: list[str] = []
    rows: list[dict[str, float]] = []

    def one_floor(i: int) -> None:
        assert floor_vip is not None and floor_rows is not None
        name = f"gwb-f-{i}"
        floor_names.append(name)
        # As for a new VIP: the client has no neighbour entry for it, its first packet ARPs.
        lab.exec("client-1", ["ip", "neigh", "flush", "to", floor_vip, "dev", "eth0"], check=True)
        time.sleep(gap)
        created = time.time()
        body = service(name, NS, lb_class=FLOOR_CLASS, externalTrafficPolicy=etp)
        core.create_namespaced_service(NS, body)
        ingress = watch.wait(name, 30)
        ready = slices.wait(f"{NS}/{name}", 30)
        got = prober.ask(f"tcp {floor_vip}")
        if got["t"] is None:
            raise RuntimeError(f"{name} ({floor_vip}) never answered client-1")
        floor_rows.append(
            {"created": created, "ingress": ingress, "slice": ready, "answered": got["t"]}
        )

    try:
        for i in range(n):
            if floor_vip is not None and i % 2 == 1:
                one_floor(i)
            name = f"gwb-a-{i}"
            names.append(name)
            if churn:
                lab.exec("client-1", ["ip", "neigh", "flush", "dev", "eth0"], check=True)
            time.sleep(gap)
            created = time.time()
            core.create_namespaced_service(NS, service(name, NS, externalTrafficPolicy=etp))
            ingress = watch.wait(name, 30)
            vip = watch.current[name][0]
            # A VIP the client never used: its first packet makes it ARP (no neighbour entry).
            got = prober.ask(f"tcp {vip}")
            if got["t"] is None:
                raise RuntimeError(f"{name} ({vip}) never answered client-1")
            row = {"name_i": i, "created": created, "ingress": ingress, "answered": got["t"]}
            if floor_vip is not None:
                row["slice"] = slices.wait(f"{NS}/{name}", 30)
                row["noderules"] = rules.wait(f"{NS}/{name}", 30)
            rows.append(row)
            if churn:
                wait_until(
                    lambda nm=name: served_timings_has(lab, nm), f"{name}'s serving line", 10
                )
                delete_services(core, [name])
                wait_until(
                    lambda nm=name: lb_gone(lab, nm), f"{name}'s LoadBalancer gone", 30, 0.02
                )
            if floor_vip is not None and i % 2 == 0:
                one_floor(i)
        # The gateway logs "serving" just after it announced, so the lines are there by now;
        # give the last one a moment. A CR the gateway first sees in a (re)list gets no line
        # (seen after its watch was refused with a 429 at start): such rows count in the total
        # but not in the stages.
        want = {f"{NS}/{nm}" for nm in names}
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: want <= set(served_timings(lab)), "serving log lines", 5)
        timings = served_timings(lab)
        for row, name in zip(rows, names, strict=True):
            t = timings.get(f"{NS}/{name}")
            if t is None:
                continue
            row["cr_seen"] = t["cr_seen"]
            # Node-level health (Cluster) may be known before the CR exists: the stage is
            # then zero, the node was already healthy when the Service came.
            row["healthy_raw"] = t["first_healthy"]
            row["healthy"] = max(t["first_healthy"], t["cr_seen"])
            row["programmed"] = t["programmed"]
            row["announced"] = t["announced"]
            for k in ("pass", "thread", "rendered", "applied"):  # the serving pass's own steps
                if k in t:
                    row[k] = t[k]
    finally:
        prober.close()
        for w in watches:
            w.close()
        delete_services(core, names + floor_names)
    gone = set(names + floor_names)
    wait_until(
        lambda: not [s for s in core.list_namespaced_service(NS).items if s.metadata.name in gone],
        "part A's Services gone",
        120,
        0.5,
    )
    return rows


def print_a(rows: list[dict[str, float]], etp: str) -> None:
    total = [r["answered"] - r["created"] for r in rows]
    print(
        f"| A. Service created → first answer via the gateway (ETP {etp}, n={len(rows)}) "
        "| p50 | p99 | goal |"
    )
    print("|---|---|---|---|")
    print(
        f"| create → first answer at client-1 | {ms(pct(total, 50))} | {ms(pct(total, 99))} "
        "| ≤ 250 / ≤ 500 ms |"
    )
    print()
    timed = [r for r in rows if "cr_seen" in r]
    print(f"| stage ({len(timed)} with a gateway timing line) | median | p99 |\n|---|---|---|")
    for label, a, b in STAGES:
        xs = [r[b] - r[a] for r in timed]
        print(f"| {label} | {ms(statistics.median(xs))} | {ms(pct(xs, 99))} |")
    steps = [r for r in timed if "applied" in r and r["pass"] >= r["healthy"]]
    if steps:
        # The programming pass that served the Service, step by step.
        for label, a, b in (
            ("  healthy -> its pass starts", "healthy", "pass"),
            ("  pass start -> worker thread", "pass", "thread"),
            ("  worker thread -> rendered", "thread", "rendered"),
            ("  rendered -> applied (nft)", "rendered", "applied"),
            ("  applied -> programmed (back in the event loop)", "applied", "programmed"),
        ):
            xs = [r[b] - r[a] for r in steps]
            print(f"| {label} ({len(steps)}) | {ms(statistics.median(xs))} | {ms(pct(xs, 99))} |")
    early = sum(1 for r in timed if r["healthy_raw"] <= r["cr_seen"])
    print(f"| (nodes already healthy when the CR was seen: {early}/{len(timed)}) | | |")
    medians = [statistics.median([r[b] - r[a] for r in timed]) for _, a, b in STAGES]
    print(f"| sum of stage medians | {ms(sum(medians))} | |")
    # The cost of a change may grow with what the gateway already serves: the total by how
    # many Services existed before this one.
    print()
    print("| Services created before | create → first answer, median | healthy → programmed |")
    print("|---|---|---|")
    step = max(1, len(rows) // 5)
    for k in range(0, len(rows), step):
        chunk = rows[k : k + step]
        tot = statistics.median([r["answered"] - r["created"] for r in chunk])
        progs = [r["programmed"] - r["healthy"] for r in chunk if "cr_seen" in r]
        prog = ms(statistics.median(progs)) if progs else "-"
        print(f"| {k} to {k + len(chunk) - 1} | {ms(tot)} | {prog} |")


def print_floor(rows: list[dict[str, float]], floor: list[dict[str, float]], etp: str) -> None:
    """Portico beside the floor, from each Service's create (medians and p99 over the Services;
    Portico's gateway stages from its timing lines)."""

    def since(rs: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] - r["created"] for r in rs if key in r]

    def cell(xs: list[float]) -> str:
        return f"{ms(statistics.median(xs))} / {ms(pct(xs, 99))}" if xs else "-"

    def ratio(a: list[float], b: list[float], p: float) -> str:
        return f"{pct(a, p) / pct(b, p):.2f}" if a and b and pct(b, p) > 0 else "-"

    tot_p, tot_f = since(rows, "answered"), since(floor, "answered")
    print(
        f"| floor (ETP {etp}, interleaved; Portico n={len(rows)}, floor n={len(floor)}) "
        "| Portico p50 / p99 | floor p50 / p99 | Portico / floor p50 | p99 | goal |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| created → first answer at client-1 | {cell(tot_p)} | {cell(tot_f)} "
        f"| {ratio(tot_p, tot_f, 50)} | {ratio(tot_p, tot_f, 99)} | ≤ 2 |"
    )
    ing_p, ing_f = since(rows, "ingress"), since(floor, "ingress")
    print(
        "| created → ingress IP seen (operator / zero-work controller) "
        f"| {cell(ing_p)} | {cell(ing_f)} | {ratio(ing_p, ing_f, 50)} | {ratio(ing_p, ing_f, 99)} "
        "| |"
    )
    sl_p, sl_f = since(rows, "slice"), since(floor, "slice")
    print(
        "| created → EndpointSlice with a ready endpoint seen (kube-controller-manager) "
        f"| {cell(sl_p)} | {cell(sl_f)} | {ratio(sl_p, sl_f, 50)} | {ratio(sl_p, sl_f, 99)} | |"
    )
    both_f = [max(r["ingress"], r["slice"]) - r["created"] for r in floor]
    print(
        "| created → both of those seen (floor: when its client may ask) "
        f"| | {cell(both_f)} | | | |"
    )
    print(
        "| created → NodeRules entry with a ready endpoint seen (operator) "
        f"| {cell(since(rows, 'noderules'))} | - | | | |"
    )
    for label, key in (
        ("lbnode saw the CR", "cr_seen"),
        ("gateway programmed", "programmed"),
        ("gateway announced", "announced"),
    ):
        print(f"| created → {label} | {cell(since(rows, key))} | (already) | | | |")
    timed = [r for r in rows if "announced" in r and "noderules" in r]
    last = [r["answered"] - max(r["announced"], r["noderules"]) for r in timed]
    print(
        "| last of (announced, NodeRules) → first answer (agents apply, client ARPs, RTT) "
        f"| {cell(last)} | - | | | |"
    )
    after = [r["answered"] - max(r["ingress"], r["slice"]) for r in floor]
    print(
        "| floor: both seen → first answer (client ARPs, RTT via the pre-programmed path) "
        f"| - | {cell(after)} | | | |"
    )
    first_p = [r["answered"] - r["created"] for r in rows if r["name_i"] % 2 == 0]
    second_p = [r["answered"] - r["created"] for r in rows if r["name_i"] % 2 == 1]
    print(
        f"| (Portico created → first answer when first / second in its round: "
        f"{ms(statistics.median(first_p))} / "
        f"{ms(statistics.median(second_p)) if second_p else '-'}) | | | | | |"
    )


# ---------------------------------------------------------------------------------------------
# B. node failure -> no new flows to it
# ---------------------------------------------------------------------------------------------
# New short connections at a fixed rate from client-1 (kernel-chosen source ports, all distinct):
# prints {"started": t} at once and, at the end, [[t_start, node or null], ...].
_FLOW_LOOP = r"""
import asyncio, json, sys, time
ip, rate, secs, tmo = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
async def ask():
    r, w = await asyncio.open_connection(ip, 80)
    try:
        w.write(b"GET /b HTTP/1.0\r\n\r\n")
        data = await r.read()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])["node"]
    finally:
        w.close()
async def one(t):
    try:
        return [t, await asyncio.wait_for(ask(), tmo)]
    except Exception:
        return [t, None]
async def main():
    print(json.dumps({"started": time.time()}), flush=True)
    tasks, start = [], time.monotonic()
    for k in range(int(rate * secs)):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(time.time())))
    print(json.dumps(await asyncio.gather(*tasks)), flush=True)
asyncio.run(main())
"""


def one_failure(
    lab: Lab, vip: str, *, rate: float, seconds: float, lead: float
) -> dict[str, float]:
    p = subprocess.Popen(
        netns_argv(
            lab.netns_of("client-1"),
            [sys.executable, "-S", "-c", _FLOW_LOOP, vip, str(rate), str(seconds), "0.5"],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        started = json.loads(p.stdout.readline())["started"]
        # The failure comes `lead` s into the loop: enough flows before it to see node-2 served.
        time.sleep(max(0.0, started + lead - time.time()))
        t0 = time.time()
        lab.fail_node("node-2", stop_heartbeat=False)
        t0_done = time.time()
        out, _ = p.communicate(timeout=seconds + 15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        lab.restore_node("node-2")
    flows = json.loads(out.strip().splitlines()[-1])
    before = [n for t, n in flows if t < t0]
    bad_after = [t for t, n in flows if t >= t0 and n in (None, "node-2")]
    detection = (max(bad_after) - t0) if bad_after else 0.0
    window = [n for t, n in flows if t0 <= t <= t0 + detection]
    first_bad = (min(bad_after) - t0) if bad_after else float("nan")
    return {
        "detection": detection,
        "failed_share": (sum(1 for n in window if n is None) / len(window)) if window else 0.0,
        "window_flows": float(len(window)),
        "node2_before": float(sum(1 for n in before if n == "node-2")),
        "before": float(len(before)),
        "failed_before_t0": float(sum(1 for n in before if n is None)),
        "failed_total": float(sum(1 for _, n in flows if n is None)),
        "flows": float(len(flows)),
        "first_bad": first_bad,
        "fail_call": t0_done - t0,
    }


def wait_three_healthy(lab: Lab, name: str, timeout: float = 60) -> None:
    wait_until(
        lambda: healthy_nodes(lab, name) == {"node-1", "node-2", "node-3"},
        f"{name}: node-1..3 healthy in the LB status",
        timeout,
        0.1,
    )


def part_b(
    lab: Lab, name: str, vip: str, trials: int, rate: float, seconds: float, lead: float
) -> list[dict[str, float]]:
    out = []
    for _ in range(trials):
        wait_three_healthy(lab, name)
        out.append(one_failure(lab, vip, rate=rate, seconds=seconds, lead=lead))
    wait_three_healthy(lab, name)
    return out


def restart_gateway(lab: Lab, *extra: str) -> None:
    """Stops the lbnode install() started (or the last restart) and starts one with ``extra``."""
    old = next(p for p in lab.procs if p.name == LBNODE_PROC)
    old.stop()
    lab.procs.remove(old)
    lab.procs.append(start_gateway(lab, GATEWAY, *extra))


def print_b(label: str, rows: list[dict[str, float]], interval: float, timeout: float) -> None:
    det = [r["detection"] for r in rows]
    share = [r["failed_share"] for r in rows]
    fall = 2
    # The first probe after t0 comes within one interval; a timed-out probe counts toward fall
    # only after its timeout; the fall-th one then flips the node and the table is rewritten.
    lo, hi = (fall - 1) * interval + timeout, fall * interval + timeout
    print(f"| B. {label} (trials={len(rows)}) | p50 | p99 | goal |")
    print("|---|---|---|---|")
    print(
        f"| t0 → last new flow to node-2 / failed | {ms(pct(det, 50))} | {ms(pct(det, 99))} "
        f"| ≤ 1 s (model: {lo:.1f} to {hi:.1f} s) |"
    )
    print(
        f"| share failed in [t0, t0+detection] | {pct(share, 50):.0%} | {pct(share, 99):.0%} "
        "| (≈ node-2's share, 1/3) |"
    )
    for k, r in enumerate(rows):
        print(
            f"|   trial {k + 1}: detection {ms(r['detection'])}, first bad flow at "
            f"+{ms(r['first_bad'])}, {r['window_flows']:.0f} flows in window, failed "
            f"{r['failed_total']:.0f}/{r['flows']:.0f} total ({r['failed_before_t0']:.0f} before "
            f"t0), node-2 served {r['node2_before']:.0f}/{r['before']:.0f} before t0, "
            "fail_node call "
            f"{ms(r['fail_call'])} | | | |"
        )


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--etp", choices=["Cluster", "Local"], default="Cluster")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--rate", type=float, default=200.0, help="B: new connections per second")
    ap.add_argument("--seconds", type=float, default=7.0, help="B: length of each client loop")
    ap.add_argument("--lead", type=float, default=1.5, help="B: seconds of flows before t0")
    ap.add_argument("--reps", type=int, default=3, help="C: gateway/direct rounds")
    ap.add_argument("--parts", default="ABC")
    ap.add_argument(
        "--churn", action="store_true", help="A: delete each Service before creating the next"
    )
    ap.add_argument("--floor", action="store_true", help="A: interleave floor Services (see above)")
    ap.add_argument("--gap", type=float, default=0.0, help="A: seconds of quiet before a create")
    args = ap.parse_args()
    cfg = LabConfig(nodes=3, pods_per_node=2, zones=2, gateways=1, clients=2)
    results: dict[str, Any] = {}
    t_start = time.time()
    lab = Lab.up(cfg)
    try:
        install(lab)
        oplog = lab.workdir / "logs" / "operator.log"
        wait_until(lambda: "first full listing" in oplog.read_text(), "the operator", 60, 0.2)
        core = client.CoreV1Api(lab.api)
        print(f"lab up and Portico installed in {time.time() - t_start:.0f} s", flush=True)
        if "A" in args.parts:
            t = time.time()
            floor_vip = start_floor(lab, core, args.etp) if args.floor else None
            floor_rows: list[dict[str, float]] = []
            results["A"] = part_a(
                lab, core, args.n, args.etp, args.churn, floor_vip, floor_rows, args.gap
            )
            if floor_vip is not None:
                delete_services(core, [FLOOR_HOLDER])
            print(f"part A took {time.time() - t:.0f} s", flush=True)
            print_a(results["A"], args.etp + (", one Service at a time" if args.churn else ""))
            if floor_vip is not None:
                print()
                print_floor(results["A"], floor_rows, args.etp)
        if "B" in args.parts:
            t = time.time()
            name = "gwb-b"
            core.create_namespaced_service(NS, service(name, NS, externalTrafficPolicy="Local"))
            try:
                vip = wait_until(
                    lambda: (
                        (s := core.read_namespaced_service(name, NS).status.load_balancer)
                        and s.ingress
                        and s.ingress[0].ip
                    ),
                    "gwb-b ingress",
                    30,
                )
                b_default = part_b(lab, name, vip, args.trials, args.rate, args.seconds, args.lead)
                print_b("node-2 link down, default probes (1 s / 1 s, fall 2)", b_default, 1, 1)
                starts = gateway_starts(lab)
                restart_gateway(lab, "--probe-interval", "0.2", "--probe-timeout", "0.2")
                # The LB status still says what the old gateway wrote: wait until the new one
                # has written its first forwarding table (it logs no "serving" line for CRs it
                # finds at start).
                wait_until(
                    lambda: programmed_since_start(lab, starts), "the new gateway programs", 60
                )
                b_fast = part_b(lab, name, vip, args.trials, args.rate, args.seconds, args.lead)
                print_b(
                    "node-2 link down, --probe-interval 0.2 --probe-timeout 0.2", b_fast, 0.2, 0.2
                )
                results["B"] = (b_default, b_fast)
            finally:
                delete_services(core, [name])
            print(f"part B took {time.time() - t:.0f} s", flush=True)
        if "C" in args.parts:
            t = time.time()
            results["C"] = gateway_throughput.run(lab, args.reps)
            print(f"part C took {time.time() - t:.0f} s", flush=True)
            gateway_throughput.print_table(results["C"])
    finally:
        lab.down()
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

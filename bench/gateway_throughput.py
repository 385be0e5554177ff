"""Throughput and connection rate through the gateway vs straight to a node.

One selector-less ETP Local Service whose only endpoint is pod echo-1-1 (an EndpointSlice written
here): port 80 -> the echo (8080), port 5201 -> an iperf3 server run in that pod (8081). With one
endpoint, the gateway's only healthy node is node-1, so "via the gateway" (client-1 ARPs for the
VIP) and "direct" (client-1 routes the VIP to node-1) end at the same node and the same server
process: the difference is the gateway's hop alone. iperf3 1 stream and 4 streams, and wrk with
`Connection: close` (each request a new connection), 5 s each, interleaved gateway/direct. The
gateway keeps flow state (``flowrules``: every non-SYN packet looks its flow up, every new flow
is pinned), so the ratios are those of the stateful path. Last, wrk again while client-2 floods
the VIP with SYNs (``portico_lab.synflood``, bounded in count and time): the new-connection rate
under a flood, and the pins the flood left (none is the goal: SYNs are never pinned).

    .venv/bin/python bench/gateway_throughput.py [--reps 3] [--seconds 5] [--pins 1000000]
    .venv/bin/python bench/gateway_throughput.py --counting-ab [--reps 5] [--seconds 3]
(``--pins``: the flows map holds that many pins of made-up clients first: the path with a
full-sized map.) ``--counting-ab`` measures instead what the per-VIP counter costs
(``vipstats``): iperf3 and wrk through the gateway with the VIP's counter rules, and with them
deleted by hand just before the run (interleaved; a run during which the gateway's verify put
them back is done again, bounded).
(gateway_e2e.py runs this as its part C in its own lab.)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from _common import wait_until
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab import synflood
from portico_lab.lab import Lab
from portico_lab.procs import Proc
from portico_lbnode.vipstats import counter_name

NS = "default"
NAME = "gwb-tput"
IPERF_PORT = 5201  # the Service's port
IPERF_TARGET = 8081  # where iperf3 listens in the pod
POD = "echo-1-1"
FLOOD_MAX = 5_000_000  # SYNs per flood run, at most (each run lasts the wrk run)


def _service_and_slice(lab: Lab) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = lab.pod(POD)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": False,
            "externalTrafficPolicy": "Local",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_TARGET},
            ],
        },
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{NAME}-1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": NAME},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "iperf", "port": IPERF_TARGET, "protocol": "TCP"},
        ],
        "endpoints": [
            {"addresses": [str(pod.ipv4)], "conditions": {"ready": True}, "nodeName": pod.node}
        ],
    }
    return svc, eps


def iperf_bps(lab: Lab, vip: str, streams: int, seconds: int) -> float:
    """Receiver-side bits/s of one iperf3 run from client-1 (raises on failure)."""
    argv = ["iperf3", "-c", vip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if streams > 1:
        argv += ["-P", str(streams)]
    res = lab.exec("client-1", argv, timeout=seconds + 20)
    doc = json.loads(res.stdout or "{}")
    if res.returncode != 0 or "error" in doc:
        raise RuntimeError(f"iperf3 to {vip} failed: {doc.get('error') or res.stderr[-300:]}")
    return float(doc["end"]["sum_received"]["bits_per_second"])


def wrk_rps(lab: Lab, vip: str, seconds: int) -> tuple[float, int]:
    """Requests/s of wrk with a new connection per request, and its error count."""
    argv = ["wrk", "-t2", "-c16", f"-d{seconds}s", "-H", "Connection: close", f"http://{vip}:80/"]
    res = lab.exec("client-1", argv, timeout=seconds + 20)
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk to {vip} failed: {res.stdout[-300:]} {res.stderr[-300:]}")
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", res.stdout
    )
    return float(m.group(1)), sum(int(x) for x in errs.groups()) if errs else 0


def flow_pins(lab: Lab, client: str) -> int:
    """The gateway's pinned IPv4 TCP flows from ``client`` (an address)."""
    argv = ["nft", "-j", "list", "map", "netdev", "portico-gw", "flows4-tcp"]
    out = lab.exec(lab.plan.gateway(1).name, argv, check=True).stdout
    (m,) = [i["map"] for i in json.loads(out)["nftables"] if "map" in i]
    return sum(1 for e in m.get("elem") or () if json.dumps(e).find(f'"{client}"') >= 0)


def prefill(lab: Lab, vip: str, n: int) -> float:
    """``n`` pins of made-up clients (10.0.0.0/8, which sends nothing) in the gateway's
    flows4-tcp, to measure the path with a full-sized map; the seconds it took."""
    gw = lab.plan.gateway(1).name
    ids = [str(int(ipaddress.ip_address(str(lab.host(f"node-{i}").ipv4)))) for i in (1, 2, 3)]
    t0 = time.perf_counter()
    for at in range(0, n, 100_000):
        elems = ", ".join(
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . {1024 + i % 60000} . {vip} . 80"
            f" : {ids[i % 3]}"
            for i in range(at, min(n, at + 100_000))
        )
        text = f"add element netdev portico-gw flows4-tcp {{ {elems} }}\n"
        path = lab.workdir / "gwb-prefill.nft"
        path.write_text(text)
        lab.exec(gw, ["nft", "-f", str(path)], check=True, timeout=300)
        path.unlink()
    return time.perf_counter() - t0


def _last_int(log: Any) -> int:
    """The count the flood printed last in its log (0 when it printed none)."""
    lines = [ln for ln in log.read_text().splitlines() if ln.strip().isdigit()]
    return int(lines[-1]) if lines else 0


def _answers_from(lab: Lab, vip: str) -> str | None:
    """The node of one echo answer to client-1 on port 80, or None."""
    code = (
        "import json,socket,sys\n"
        "s=socket.create_connection((sys.argv[1],80),timeout=1)\n"
        "s.sendall(b'hi\\n'); print(json.loads(s.makefile().readline())['node'])\n"
    )
    res = lab.exec("client-1", [sys.executable, "-S", "-c", code, vip], timeout=10)
    return res.stdout.strip() if res.returncode == 0 else None


@contextmanager
def served_target(lab: Lab) -> Iterator[str]:
    """iperf3 in the pod, the Service and its slice; yields the VIP once it answers through the
    gateway. The Service, the slice and iperf3 go in a finally."""
    core = client.CoreV1Api(lab.api)
    disc = client.DiscoveryV1Api(lab.api)
    svc, eps = _service_and_slice(lab)
    iperf = Proc(
        "gwb-iperf3",
        ["iperf3", "-s", "-p", str(IPERF_TARGET)],
        lab.workdir / "logs" / "gwb-iperf3.log",
        netns=lab.netns_of(POD),
    ).start()
    core.create_namespaced_service(NS, svc)
    disc.create_namespaced_endpoint_slice(NS, eps)
    try:

        def ingress() -> str:
            st = core.read_namespaced_service(NAME, NS).status.load_balancer
            return st.ingress[0].ip if st and st.ingress else ""

        vip = wait_until(ingress, f"{NAME} ingress", 30)
        wait_until(lambda: _answers_from(lab, vip) == "node-1", "the VIP answers via gw", 30, 0.2)
        yield vip
    finally:
        iperf.stop()
        for delete in (
            lambda: disc.delete_namespaced_endpoint_slice(f"{NAME}-1", NS),
            lambda: core.delete_namespaced_service(NAME, NS),
        ):
            try:
                delete()
            except ApiException as e:
                if e.status != 404:
                    raise


def run(
    lab: Lab, reps: int = 3, seconds: int = 5, pins: int = 0
) -> dict[str, dict[str, list[float]]]:
    """Measures; returns {test: {"gateway": [...], "direct": [...]}} (bits/s or requests/s).
    Leaves nothing behind: the Service, the slice, iperf3 and the route go in a finally."""
    node1 = str(lab.host("node-1").ipv4)
    with served_target(lab) as vip:
        try:
            return _measure(lab, vip, node1, reps, seconds, pins)
        finally:
            lab.exec("client-1", ["ip", "route", "del", f"{vip}/32"])


def _measure(
    lab: Lab, vip: str, node1: str, reps: int, seconds: int, pins: int
) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {
        k: {"gateway": [], "direct": []}
        for k in ("iperf3 -P 1", "iperf3 -P 4", "wrk conn/s", "wrk conn/s, SYN flood")
    }
    flood_src = str(lab.plan.client(2).ipv4)
    if pins:
        took = prefill(lab, vip, pins)
        print(f"({pins:,} pins written into flows4-tcp in {took:.0f} s)")
    # Listing a map of a million pins takes nft minutes: the flood's pins are counted only
    # without --pins.
    pins_before = 0 if pins else flow_pins(lab, flood_src)
    flood_sent = 0
    errors = {"gateway": 0, "direct": 0}
    route = ["ip", "route", "replace", f"{vip}/32", "via", node1]
    for _ in range(reps):
        for path in ("gateway", "direct"):  # ABAB: the machine's noise hits both alike
            if path == "direct":
                lab.exec("client-1", route, check=True)
            try:
                out["iperf3 -P 1"][path].append(iperf_bps(lab, vip, 1, seconds))
                out["iperf3 -P 4"][path].append(iperf_bps(lab, vip, 4, seconds))
                rps, errs = wrk_rps(lab, vip, seconds)
                out["wrk conn/s"][path].append(rps)
                errors[path] += errs
                argv = [sys.executable, "-S", "-c", synflood.SCRIPT, flood_src, vip]
                argv += [str(FLOOD_MAX), str(seconds + 1)]
                log = lab.workdir / "logs" / "gwb-flood.log"
                log.unlink(missing_ok=True)
                flood = Proc("gwb-flood", argv, log, netns=lab.netns_of("client-2")).start()
                try:
                    rps, errs = wrk_rps(lab, vip, seconds)
                    assert flood.popen is not None
                    flood.popen.wait(timeout=seconds + 30)  # it prints its count at the end
                finally:
                    flood.stop()
                flood_sent += _last_int(log)
                out["wrk conn/s, SYN flood"][path].append(rps)
            finally:
                lab.exec("client-1", ["ip", "route", "del", f"{vip}/32"])
                # Back on-link: the next gateway run must ARP the gateway again.
                lab.exec("client-1", ["ip", "neigh", "flush", "to", vip])
    out["_wrk_socket_errors"] = {k: [float(v)] for k, v in errors.items()}
    out["_flood"] = {
        "sent": [float(flood_sent)],
        "pins": [float(flow_pins(lab, flood_src) - pins_before) if not pins else -1.0],
    }
    return out


def counter_rules(lab: Lab, vip: str) -> list[tuple[str, int]]:
    """The (chain, handle) of each rule of the gateway's table that is only the VIP's counter."""
    argv = ["nft", "-a", "-j", "list", "table", "netdev", "portico-gw"]
    out = lab.exec(lab.plan.gateway(1).name, argv, check=True).stdout
    want = [{"counter": counter_name(ipaddress.ip_address(vip))}]
    return [
        (r["chain"], int(r["handle"]))
        for r in (i["rule"] for i in json.loads(out)["nftables"] if "rule" in i)
        if r["expr"] == want
    ]


def counting_ab(lab: Lab, reps: int, seconds: int) -> dict[str, dict[str, list[float]]]:
    """iperf3 -P 1 and wrk through the gateway, with and without the VIP's counter rules."""
    gw = lab.plan.gateway(1).name
    out: dict[str, dict[str, list[float]]] = {
        k: {"counted": [], "uncounted": []} for k in ("iperf3 -P 1", "wrk conn/s")
    }
    with served_target(lab) as vip:
        wait_until(lambda: counter_rules(lab, vip), "the counter rules", 30, 0.2)
        for _ in range(reps):
            for mode in ("counted", "uncounted"):
                for _attempt in range(5):  # the verify puts deleted rules back within 10 s
                    if mode == "uncounted":
                        for chain, handle in counter_rules(lab, vip):
                            argv = ["nft", "delete", "rule", "netdev", "portico-gw", chain]
                            lab.exec(gw, [*argv, "handle", str(handle)], check=True)
                    bps = iperf_bps(lab, vip, 1, seconds)
                    rps, _errs = wrk_rps(lab, vip, seconds)
                    present = bool(counter_rules(lab, vip))
                    if present == (mode == "counted"):
                        out["iperf3 -P 1"][mode].append(bps)
                        out["wrk conn/s"][mode].append(rps)
                        break
                wait_until(lambda: counter_rules(lab, vip), "the counter rules back", 30, 0.2)
    return out


def print_ab_table(res: dict[str, dict[str, list[float]]]) -> None:
    print("| per-VIP counter | with (median) | without (median) | with / without |")
    print("|---|---|---|---|")
    for test, unit in (
        ("iperf3 -P 1", lambda x: f"{x / 1e9:.2f} Gbit/s"),
        ("wrk conn/s", lambda x: f"{x:.0f}/s"),
    ):
        c, u = res[test]["counted"], res[test]["uncounted"]
        if not c or not u:
            print(f"| {test} | {len(c)} runs | {len(u)} runs | |")
            continue
        mc, mu = statistics.median(c), statistics.median(u)
        print(f"| {test} | {unit(mc)} | {unit(mu)} | {mc / mu:.3f} |")
        runs = ", ".join(map(unit, c)) + " | " + ", ".join(map(unit, u))
        print(f"|   runs (with / without) | {runs} | |")


def print_table(res: dict[str, dict[str, list[float]]]) -> None:
    print(
        "| C. through the gateway vs direct to node-1 | gateway (median) | direct (median) "
        "| ratio | goal |"
    )
    print("|---|---|---|---|---|")
    for test, goal in (
        ("iperf3 -P 1", 0.95),
        ("iperf3 -P 4", 0.95),
        ("wrk conn/s", 0.9),
        ("wrk conn/s, SYN flood", 0.9),
    ):
        g, d = statistics.median(res[test]["gateway"]), statistics.median(res[test]["direct"])
        unit = (
            (lambda x: f"{x / 1e9:.2f} Gbit/s")
            if test.startswith("iperf")
            else (lambda x: f"{x:.0f}/s")
        )
        runs = (
            ", ".join(unit(x) for x in res[test]["gateway"])
            + " | "
            + ", ".join(unit(x) for x in res[test]["direct"])
        )
        print(f"| {test} | {unit(g)} | {unit(d)} | {g / d:.3f} | ≥ {goal} |")
        print(f"|   runs (gateway / direct) | {runs} | | |")
    flood = res.get("_flood")
    if flood:
        left = f"{flood['pins'][0]:,.0f}" if flood["pins"][0] >= 0 else "not counted"
        print(
            f"| SYN flood from client-2: SYNs sent / pins left | {flood['sent'][0]:,.0f} "
            f"| {left} | | 0 pins |"
        )
    errs = res.get("_wrk_socket_errors", {})
    print(
        f"| wrk socket errors (gateway / direct) | {errs.get('gateway', [0])[0]:.0f} "
        f"| {errs.get('direct', [0])[0]:.0f} | | |"
    )


def main() -> int:
    from portico_lab.lab import LabConfig
    from portico_lab.portico import install

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pins", type=int, default=0, help="pins written in the map first")
    ap.add_argument("--counting-ab", action="store_true", help="the per-VIP counter's cost instead")
    args = ap.parse_args()
    cfg = LabConfig(nodes=3, pods_per_node=2, zones=2, gateways=1, clients=2)
    with Lab.up(cfg) as lab:
        install(lab)
        wait_until(
            lambda: "first full listing" in (lab.workdir / "logs" / "operator.log").read_text(),
            "the operator",
            60,
            0.2,
        )
        t = time.time()
        if args.counting_ab:
            ab = counting_ab(lab, args.reps, args.seconds)
            print(f"(took {time.time() - t:.0f} s)")
            print_ab_table(ab)
            return 0
        res = run(lab, args.reps, args.seconds, args.pins)
        print(f"(part C took {time.time() - t:.0f} s)")
    print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Established connections through a rolling replacement of every pod, in the Kubernetes e2e's
delete-first order, ETP Local and ETP Cluster: the share of connections that last until their
own pod exits (goal 100 %), and the new connections refused meanwhile.

A lab with one echo pod per node (so that with ETP Local a node's only pod terminating makes
the node drain: its health check says 503 and the gateway takes it out of the Maglev table).
``--conns`` long-lived connections from client-1 each send a line every 100 ms; a second
client process opens a new connection every 20 ms. Then, pod after pod: the pod terminates
(ready=false, serving=true, terminating=true), a new pod starts on its node, and after
``--grace`` seconds the old pod exits. A connection *survives* when it got every answer until
its pod exited (a connection to a pod that exits ends with it); one that fails earlier was
broken by the path.

    .venv/bin/python bench/gateway_drain.py [--conns 30] [--grace 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from _common import wait_until
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab, LabConfig
from portico_lab.portico import install
from portico_lab.procs import Proc

NS = "default"

# ``n`` connections, a line every 100 ms each, for at most ``seconds``: one JSON line per event
# ("up" with the pod, "error" with the time and the error).
_HOLD = r"""
import json, socket, sys, threading, time
host, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
def say(**kw):
    with lock:
        print(json.dumps({"t": time.time(), **kw}), flush=True)
def one(i):
    pod = None
    try:
        s = socket.create_connection((host, 80), timeout=3)
        s.settimeout(3)
        f = s.makefile("rwb")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            f.write(b"ping\n"); f.flush()
            line = f.readline()
            if not line:
                say(i=i, error="closed", pod=pod); return
            if pod is None:
                pod = json.loads(line)["pod"]; say(i=i, up=pod)
            time.sleep(0.1)
        say(i=i, done=pod)
    except OSError as e:
        say(i=i, error=f"{type(e).__name__} {e}", pod=pod)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start(); time.sleep(0.02)
for t in threads:
    t.join()
"""

# A new connection every 20 ms for ``seconds``: how many were answered, how many failed.
_NEW = r"""
import json, socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
ok = failed = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s = socket.create_connection((host, 80), timeout=2)
        s.sendall(b"hi\n"); json.loads(s.makefile().readline()); s.close(); ok += 1
    except (OSError, ValueError):
        failed += 1
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"""


def service(name: str, policy: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": policy,
            "selector": {"app": "echo"},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
        },
    }


def events(log: Any) -> list[dict[str, Any]]:
    try:
        text = log.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def roll(lab: Lab, policy: str, conns: int, grace: float) -> dict[str, Any]:
    core = client.CoreV1Api(lab.api)
    name = f"drain-{policy.lower()}"
    core.create_namespaced_service(NS, service(name, policy))
    logs = lab.workdir / "logs"
    held_log, new_log = logs / f"drain-held-{name}.log", logs / f"drain-new-{name}.log"
    for f in (held_log, new_log):
        f.unlink(missing_ok=True)
    procs: list[Proc] = []
    try:

        def ingress() -> str:
            st = core.read_namespaced_service(name, NS).status.load_balancer
            return st.ingress[0].ip if st and st.ingress else ""

        vip = wait_until(ingress, f"{name} ingress", 60)
        pods = sorted(p.name for p in lab.pods())
        budget = 30 + len(pods) * (grace + 12)
        held = Proc(
            "drain-held",
            [sys.executable, "-S", "-c", _HOLD, vip, str(conns), str(budget)],
            held_log,
            netns=lab.netns_of("client-1"),
        )
        # answered at all before the roll (the gateway and the nodes are programmed)
        wait_until(lambda: _one_answer(lab, vip), f"{name} answers", 60, 0.2)
        procs.append(held.start())
        wait_until(lambda: sum("up" in e for e in events(held_log)) == conns, "all up", 60)
        new = Proc(
            "drain-new",
            [sys.executable, "-S", "-c", _NEW, vip, str(budget - 10)],
            new_log,
            netns=lab.netns_of("client-2"),
        )
        procs.append(new.start())
        removed: dict[str, float] = {}
        t0 = time.time()
        for old in pods:  # delete-first: the old pod terminates before its successor starts
            node = lab.pod(old).node
            lab.terminate_pod(old)
            time.sleep(grace / 2)
            lab.add_pod(node)
            time.sleep(grace / 2)
            removed[old] = time.time()
            lab.remove_pod(old)
            time.sleep(2.0)
        rolled = time.time() - t0
        held.stop()
        assert new.popen is not None
        new.popen.wait(timeout=budget + 30)
    finally:
        for p in procs:
            p.stop()
        try:
            core.delete_namespaced_service(name, NS)
        except ApiException as e:
            if e.status != 404:
                raise
    evs = events(held_log)
    pod_of = {e["i"]: e["up"] for e in evs if "up" in e}
    broke = []
    for e in evs:
        if "error" in e:
            pod = pod_of.get(e["i"])
            gone = removed.get(pod or "", float("inf"))
            if e["t"] < gone - 0.05:  # failed while its pod still ran
                broke.append(e)
    counts = json.loads(new_log.read_text().strip().splitlines()[-1])
    return {
        "policy": policy,
        "conns": len(pod_of),
        "broken": len(broke),
        "broken_detail": broke[:5],
        "new_ok": counts["ok"],
        "new_failed": counts["failed"],
        "seconds": rolled,
    }


def _one_answer(lab: Lab, vip: str) -> bool:
    code = (
        "import json,socket,sys\n"
        "s=socket.create_connection((sys.argv[1],80),timeout=1)\n"
        "s.sendall(b'hi\\n'); print(json.loads(s.makefile().readline())['node'])\n"
    )
    return lab.exec("client-1", [sys.executable, "-S", "-c", code, vip], timeout=10).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--conns", type=int, default=30)
    ap.add_argument("--grace", type=float, default=4.0)
    args = ap.parse_args()
    cfg = LabConfig(nodes=3, pods_per_node=1, zones=1, gateways=1, clients=2)
    results = []
    with Lab.up(cfg) as lab:
        install(lab)
        wait_until(
            lambda: "first full listing" in (lab.workdir / "logs" / "operator.log").read_text(),
            "the operator",
            60,
            0.2,
        )
        for policy in ("Local", "Cluster"):
            results.append(roll(lab, policy, args.conns, args.grace))
    print(
        f"| rolling replacement, delete-first, {args.conns} connections | ETP | lasted until "
        "their pod exited | broken earlier | new connections failed | roll |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        share = 100.0 * (r["conns"] - r["broken"]) / max(1, r["conns"])
        print(
            f"| | {r['policy']} | {share:.1f} % ({r['conns'] - r['broken']}/{r['conns']}) "
            f"| {r['broken']} | {r['new_failed']} of {r['new_ok'] + r['new_failed']} "
            f"| {r['seconds']:.0f} s |"
        )
        for b in r["broken_detail"]:
            print(f"|   broken: {b} | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

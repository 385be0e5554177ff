"""Flow state at the gateway, with real connections: a long-lived TCP connection to a node whose
last pod starts terminating keeps its node (and its pod) until the pod exits, across a restart
of the gateway, while new connections go elsewhere; a node whose link goes down loses its
pinned flows at once; a SYN flood from one client pins nothing and breaks no other client's
connection."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from portico_lab import synflood
from portico_lab.lab import Lab
from portico_lab.portico import start_gateway
from portico_lab.procs import Proc

from .dataplane_harness import (
    FAMILIES,
    addr,
    create,
    deleting_services,
    family_spec,
    http,
    named,
    running_agents,
    running_operator,
)
from .operator_harness import Api, OperatorProcess, wait_for
from .test_gateway import flows, healthy_nodes

GATEWAY = "gw-1"


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "flows", 232, "op-flows") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab) as procs:
        yield procs


class Gateway:
    """The gateway process, which a test may restart."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.proc = start_gateway(lab, GATEWAY)
        self._log_from = 0

    def restart(self) -> None:
        self.proc.stop()
        self._log_from = self.proc.log.stat().st_size  # the log is appended to
        self.proc = start_gateway(self.lab, GATEWAY)

    def programmed(self) -> bool:
        """The process started last has applied its first forwarding table (a replace)."""
        with self.proc.log.open("rb") as f:
            f.seek(self._log_from)
            return b"(replace)" in f.read()


@pytest.fixture(scope="module")
def gateway(lab: Lab, agents: list[Proc]) -> Iterator[Gateway]:
    gw = Gateway(lab)
    try:
        yield gw
    finally:
        gw.proc.stop()
        lab.exec(GATEWAY, [sys.executable, "-m", "portico_lbnode", "--cleanup"])


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


# One TCP connection from a fixed source port, a line every 50 ms, each answer (or the error
# that ends it) as a JSON line on stdout; at most ``seconds`` long.
_HOLD = r"""
import json, socket, sys, time
host, src, sport, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def say(**kw):
    print(json.dumps({"t": time.time(), **kw}), flush=True)
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(2.0)
try:
    s.bind((src, sport))
    s.connect((host, 80))
    f = s.makefile("rwb")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        f.write(b"ping\n"); f.flush()
        line = f.readline()
        if not line:
            say(error="closed"); break
        d = json.loads(line)
        say(node=d["node"], pod=d["pod"])
        time.sleep(0.05)
    else:
        say(error="done")
except OSError as e:
    say(error=f"{type(e).__name__} {e}")
"""


class Held:
    """A long-lived connection from ``client``, running in the background."""

    def __init__(self, lab: Lab, client: str, src: str, ip: str, sport: int) -> None:
        self.log = lab.workdir / "logs" / f"held-{client}-{sport}.log"
        self.log.unlink(missing_ok=True)
        argv = [sys.executable, "-S", "-c", _HOLD, ip, src, str(sport), "120"]
        self.proc = Proc(f"held-{sport}", argv, self.log, netns=lab.netns_of(client)).start()

    def answers(self) -> list[dict[str, Any]]:
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

    def since(self, t: float) -> list[dict[str, Any]]:
        return [a for a in self.answers() if a["t"] >= t]

    def errors(self) -> list[dict[str, Any]]:
        return [a for a in self.answers() if "error" in a]

    def first(self) -> dict[str, Any]:
        return wait_for(lambda: next(iter(self.answers()), None), "the connection answers")

    def keeps_answering(self, after: float, pod: str, what: str) -> None:
        """Answers keep coming from ``pod`` after ``after`` (a second of them), and no error."""
        wait_for(lambda: len(self.since(after)) >= 10 or self.errors(), what, 15)
        assert not self.errors(), self.answers()[-5:]
        assert {a.get("pod") for a in self.since(after)} == {pod}, self.since(after)[:5]

    def stop(self) -> None:
        self.proc.stop()


def sport_on(lab: Lab, ip: str, src: str, node: str, first: int) -> int:
    """A source port whose flow the gateway sends to ``node`` (and now pins there)."""
    seen = flows(lab, ip, [src], first, 40)
    for key, got in seen.items():
        if got == node:
            return int(key.rsplit(":", 1)[1])
    raise AssertionError(f"no flow of 40 went to {node}: {seen}")


# ==============================================================================================
@pytest.mark.parametrize("family", FAMILIES)
def test_a_draining_nodes_connection_lasts_until_its_pod_exits_and_a_restart(
    lab: Lab, api: Api, gateway: Gateway, services: list[str], family: int
) -> None:
    name = named("fl-drain", family)
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(family))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"}, "3 nodes")
    src = addr(lab.plan.client(1), family)
    # node-3's only ready pod is a new one, so the connection's pod is known and the lab's own
    # pods are left as they were
    extra = lab.add_pod("node-3")
    lab.set_pod_ready("echo-3-1", False)
    lab.set_pod_ready("echo-3-2", False)
    held: Held | None = None
    try:
        hcnp = api.service(name).spec.health_check_node_port
        node3 = str(lab.host("node-3").ipv4)

        def local_endpoints() -> int:
            hz = http(lab, "client-1", node3, hcnp)
            return int(json.loads(hz.get("body") or "{}").get("localEndpoints", -1))

        wait_for(lambda: local_endpoints() == 1, "node-3's agent: the new pod alone is ready")
        sport = sport_on(lab, ip, src, "node-3", 43000)
        held = Held(lab, "client-1", src, ip, sport)
        assert held.first()["pod"] == extra.name, held.answers()

        # The pod terminates (ready=false, serving=true, terminating=true): node-3's health
        # check fails (503), the gateway drains it.
        lab.terminate_pod(extra.name)
        wait_for(lambda: healthy_nodes(api, name) == {"node-1", "node-2"}, "node-3 drains")
        held.keeps_answering(time.time(), extra.name, "the connection through the drain")
        fresh = flows(lab, ip, [src], 44000, 30)
        assert None not in fresh.values() and "node-3" not in fresh.values(), fresh

        # The gateway restarts: the pins live in the kernel, and a node that answers 503 is
        # draining for the new process too.
        gateway.restart()
        wait_for(gateway.programmed, "the restarted gateway programs its table")
        held.keeps_answering(time.time(), extra.name, "the connection across the restart")
        assert "node-3" not in flows(lab, ip, [src], 44100, 20).values()

        # The pod exits: its connection ends with it.
        lab.remove_pod(extra.name)
        wait_for(held.errors, "the connection ends with its pod")
    finally:
        if held is not None:
            held.stop()
        lab.set_pod_ready("echo-3-1", True)
        lab.set_pod_ready("echo-3-2", True)
        if extra.netns in {p.netns for p in lab.pods()}:
            lab.remove_pod(extra.name)


# One UDP datagram from (src, sport) to the VIP, up to ``tries`` times: the node that answered.
_UDP = r"""
import json, socket, sys
host, src, sport, tries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport)); s.settimeout(0.3)
for _ in range(tries):
    s.sendto(b"ping", (host, 80))
    try:
        print(json.loads(s.recv(65536))["node"]); break
    except OSError:
        pass
else:
    print("none")
"""


def udp_node(lab: Lab, ip: str, src: str, sport: int, tries: int = 3) -> str:
    argv = [sys.executable, "-S", "-c", _UDP, ip, src, str(sport), str(tries)]
    res = lab.exec("client-1", argv, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_a_dead_nodes_pinned_flows_move_at_once(
    lab: Lab, api: Api, gateway: Gateway, services: list[str]
) -> None:
    name = "fl-dead"
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(4))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: healthy_nodes(api, name) == {"node-1", "node-2", "node-3"}, "3 nodes")
    src = addr(lab.plan.client(1), 4)
    # UDP flows pinned to node-2 (each first datagram pins its flow)
    pinned = [p for p in range(45000, 45040) if udp_node(lab, ip, src, p) == "node-2"][:3]
    assert pinned, "no UDP flow went to node-2"
    lab.fail_node("node-2", stop_heartbeat=False)
    try:
        wait_for(lambda: "node-2" not in healthy_nodes(api, name), "node-2 found dead")
        # The next datagram of each goes elsewhere and is answered: no drain for a dead node.
        t0 = time.monotonic()
        moved = {p: udp_node(lab, ip, src, p, tries=10) for p in pinned}
        assert all(n in ("node-1", "node-3") for n in moved.values()), moved
        assert time.monotonic() - t0 < 5 * len(pinned)  # no drain timeout (30 s) waited out
    finally:
        lab.restore_node("node-2")
        wait_for(lambda: "node-2" in healthy_nodes(api, name), "node-2 back")


def flow_pins(lab: Lab) -> int:
    out = lab.exec(
        GATEWAY, ["nft", "-j", "list", "map", "netdev", "portico-gw", "flows4-tcp"], check=True
    ).stdout
    (m,) = [i["map"] for i in json.loads(out)["nftables"] if "map" in i]
    return len(m.get("elem") or ())


def test_a_syn_flood_pins_nothing_and_breaks_no_other_clients_flows(
    lab: Lab, api: Api, gateway: Gateway, services: list[str]
) -> None:
    name = "fl-flood"
    create(api, services, name, externalTrafficPolicy="Local", **family_spec(4))
    ip = api.wait_ips(name)[0]
    wait_for(lambda: len(healthy_nodes(api, name)) == 3, "3 nodes")
    src = addr(lab.plan.client(1), 4)
    held = Held(lab, "client-1", src, ip, 46000)
    try:
        pod = held.first()["pod"]
        before = flow_pins(lab)
        t0 = time.time()
        flood_src = addr(lab.plan.client(2), 4)
        argv = [sys.executable, "-S", "-c", synflood.SCRIPT, flood_src, ip, "20000", "60"]
        res = lab.exec("client-2", argv, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() == "20000", res.stderr
        # Neither the SYNs nor the RSTs client-2 answers their SYN-ACKs with are pinned.
        assert flow_pins(lab) - before < 100, flow_pins(lab) - before
        held.keeps_answering(t0, pod, "the other client's connection through the flood")
        fresh = flows(lab, ip, [src], 46100, 20)
        assert None not in fresh.values(), fresh
    finally:
        held.stop()

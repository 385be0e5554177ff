"""Flow pinning at the gateway (``flowrules`` in ``fwdrules``' table), traced packet by packet
through the rendered table (``nfttrace``): a pinned flow keeps its node while the node may
carry established flows, whatever the Maglev table says; a SYN is never pinned; a node that
left the port's est set (dead, drained) loses its flows to the hash at once. And the pure
classification of a node (``flowstate``): serving, draining or out."""

from __future__ import annotations

import ipaddress
from typing import Any

from portico_lbnode.flowrules import FLOW_MAP, helper_rules, helpers, node_ids
from portico_lbnode.flowstate import Standing, next_drain_end, standing
from portico_lbnode.fwdrules import FwdPort, render_fwd
from portico_lbnode.healthstate import Probe, TargetHealth, observe
from portico_lbnode.model import Backend, GatewayService, Port, service_from_cr
from portico_lbnode.plan import MaglevCache, forwarding_and_nat

from ..nftkernel import canon
from ..nfttrace import Packet, Tracer

ip = ipaddress.ip_address
A, B, C = (ip(f"198.18.210.{i}") for i in (11, 12, 13))
A6, B6 = (ip(f"fd00:210::{i}") for i in (11, 12))
VIP, VIP6 = ip("198.18.211.10"), ip("fd00:211::10")
CLIENT, CLIENT6 = "203.0.113.5", "2001:db8::5"
ACK = ("ack",)


def gateway(*ports: FwdPort, local: frozenset[Any] = frozenset()) -> Tracer:
    """The table as ``FwdTable`` leaves it after a replace: the JSON, then the helper chains.
    ``local``: the gateway host's own addresses (a gateway on a node)."""
    cmds = render_fwd(ports, ["eth0"], 3, local_nodes=local).to_json_replace()["nftables"]
    w = {"family": "netdev", "table": "portico-gw"}
    cmds += [
        {"add": {"rule": {**w, "chain": c, "expr": list(r)}}}
        for c in helpers()
        for r in helper_rules(c)
    ]
    return Tracer(cmds)


def pin(t: Tracer, proto: str, sport: int, node: Any, vip: Any = VIP, client: str = CLIENT) -> None:
    """A pin as the packet path leaves it (``add`` in a helper chain)."""
    (nid,) = node_ids([node]).values()
    if vip.version == 4:
        key = canon({"concat": [client, sport, str(vip), 80]})
    else:  # the key's first field is the jhash of the addresses: the tracer computes it
        t.kernel.elems[FLOW_MAP[(6, proto)]] = {}
        probe = t.trace(Packet(client, str(vip), l4proto=proto, sport=sport, tcp_flags=ACK))
        (h, _), *_ = [(v, d) for d, v in probe.hashes if len(d) == 32]
        key = canon({"concat": [h, sport, 80]})
    t.kernel.elems[FLOW_MAP[(vip.version, proto)]][key] = canon(nid)


def port(slots: tuple[Any, ...], established: tuple[Any, ...] = (), **kw: Any) -> FwdPort:
    vip = kw.pop("vip", VIP)
    return FwdPort(
        "ns/web", vip, kw.pop("protocol", "TCP"), 80, False, (), slots, established=established
    )


def test_a_pinned_flow_keeps_its_draining_node_and_new_ones_avoid_it() -> None:
    # A drains: out of the Maglev table (slots), still in the port's established nodes.
    t = gateway(port((B, C, B), established=(A,)))
    pin(t, "tcp", 40000, A)
    for flags in (ACK, ("ack", "psh"), ("fin", "ack")):
        tr = t.trace(Packet(CLIENT, str(VIP), sport=40000, tcp_flags=flags))
        assert tr.outcome.fwd == str(A), tr.fired
        kind = "close" if "fin" in flags else "refresh"
        assert any(f"goto pin-{kind}4-tcp" in f for f in tr.fired), tr.fired
    # a new connection never lands on it, and its SYN stores nothing
    for sport in range(41000, 41100):
        tr = t.trace(Packet(CLIENT, str(VIP), sport=sport))
        assert tr.outcome.fwd in (str(B), str(C)) and tr.updates == [], tr.fired
    # an unpinned RST (a client answering a SYN-ACK it did not ask for) stores nothing
    rst = t.trace(Packet(CLIENT, str(VIP), sport=41000, tcp_flags=("rst",)))
    assert rst.outcome.fwd in (str(B), str(C)) and rst.updates == []
    # its first ACK is pinned where the hash sent the SYN
    tr = t.trace(Packet(CLIENT, str(VIP), sport=41000, tcp_flags=ACK))
    syn = t.trace(Packet(CLIENT, str(VIP), sport=41000))
    assert tr.outcome.fwd == syn.outcome.fwd
    assert [n for n, _ in tr.updates] == ["flows4-tcp"]


def test_a_node_out_of_the_est_set_loses_its_pinned_flows_to_the_hash() -> None:
    t = gateway(port((B, C, B)))  # A is dead or drained: in no set of the port
    pin(t, "tcp", 40000, A)
    tr = t.trace(Packet(CLIENT, str(VIP), sport=40000, tcp_flags=ACK))
    assert tr.outcome.fwd in (str(B), str(C)), tr.fired
    assert not any("pin-refresh" in f for f in tr.fired)  # the dead pin is not renewed


def test_a_syn_follows_a_live_pin_of_its_port() -> None:
    # a client reusing a source port: its SYN goes where its ACKs will (the pinned node)
    t = gateway(port((B, C, B), established=(A,)))
    pin(t, "tcp", 40000, A)
    assert t.trace(Packet(CLIENT, str(VIP), sport=40000)).outcome.fwd == str(A)


def test_pins_survive_a_new_maglev_table() -> None:
    # C's slot went to A (a new weight, say); C still carries established flows
    t = gateway(port((A, B, A), established=(C,)))
    pin(t, "tcp", 40000, C)
    assert t.trace(Packet(CLIENT, str(VIP), sport=40000, tcp_flags=ACK)).outcome.fwd == str(C)


def test_udp_and_ipv6_pin_too_and_a_port_without_new_flow_nodes_keeps_its_pins() -> None:
    t = gateway(port((B, B, B), established=(A,), protocol="UDP"))
    pin(t, "udp", 5353, A)
    assert t.trace(Packet(CLIENT, str(VIP), "udp", 5353)).outcome.fwd == str(A)
    miss = t.trace(Packet(CLIENT, str(VIP), "udp", 5354))
    assert miss.outcome.fwd == str(B) and [n for n, _ in miss.updates] == ["flows4-udp"]
    t6 = gateway(port((B6, B6, B6), established=(A6,), vip=VIP6))
    pin(t6, "tcp", 40000, A6, VIP6, CLIENT6)
    tr = t6.trace(Packet(CLIENT6, str(VIP6), sport=40000, tcp_flags=ACK))
    assert tr.outcome.fwd == str(A6), tr.fired
    # every node draining: new flows are dropped, pinned ones still reach their node
    only = gateway(port((), established=(A,)))
    pin(only, "tcp", 40000, A)
    assert only.trace(Packet(CLIENT, str(VIP), sport=40000, tcp_flags=ACK)).outcome.fwd == str(A)
    assert only.trace(Packet(CLIENT, str(VIP), sport=40001)).outcome.verdict == "drop"


def test_a_gateway_on_a_node_hands_that_nodes_flows_to_its_own_stack() -> None:
    """``fwd`` cannot reach the host the gateway runs on (hostNetwork on a node): every flow
    the hash or a pin gives to that node is accepted into the host's stack, mark cleared (the
    node's NAT rules take the VIP there), in every path: SYN, unpinned FIN, first ACK (pinned
    to it), pinned packets, UDP, IPv6; the other nodes' flows are forwarded as before."""
    local = frozenset({A, A6})
    t = gateway(port((A, B, C)), local=local)
    seen = {"accept": 0, "fwd": 0}
    for sport in range(40000, 40060):
        syn = t.trace(Packet(CLIENT, str(VIP), sport=sport))
        ack = t.trace(Packet(CLIENT, str(VIP), sport=sport, tcp_flags=ACK), commit=True)
        fin = t.trace(Packet(CLIENT, str(VIP), sport=sport, tcp_flags=("fin", "ack")))
        for tr in (syn, ack, fin):
            assert tr.outcome.verdict == syn.outcome.verdict, (syn.fired, tr.fired)
            if tr.outcome.verdict == "accept":
                assert tr.outcome.fwd is None and tr.mark == 0, tr.fired
            else:
                assert tr.outcome.fwd in (str(B), str(C)) and tr.outcome.fwd == syn.outcome.fwd
        assert syn.updates == [] and [n for n, _ in ack.updates] == ["flows4-tcp"]
        seen[syn.outcome.verdict] += 1
    assert seen["accept"] and seen["fwd"], seen  # the hash gave A some flows, B and C others
    # a pinned flow of the own node keeps it, and a pin of another node is forwarded
    pin(t, "tcp", 41000, A)
    pin(t, "tcp", 41001, B)
    assert t.trace(Packet(CLIENT, str(VIP), sport=41000, tcp_flags=ACK)).outcome.verdict == "accept"
    assert t.trace(Packet(CLIENT, str(VIP), sport=41001, tcp_flags=ACK)).outcome.fwd == str(B)
    # UDP and IPv6 the same way
    u = gateway(port((A, A, A), protocol="UDP"), local=local)
    assert u.trace(Packet(CLIENT, str(VIP), "udp", 5353)).outcome.verdict == "accept"
    t6 = gateway(port((A6, A6, A6), vip=VIP6), local=local)
    tr6 = t6.trace(Packet(CLIENT6, str(VIP6), sport=40000))
    assert tr6.outcome.verdict == "accept" and tr6.mark == 0, tr6.fired
    # a gateway of its own: the same table forwards to A (the rules stay, the set is empty)
    apart = gateway(port((A, A, A)))
    assert apart.trace(Packet(CLIENT, str(VIP), sport=40000)).outcome.fwd == str(A)


def test_node_ids_are_stable_distinct_and_never_zero() -> None:
    ids = node_ids([A, B, A6, B6])
    assert ids[A] == int(A) and len(set(ids.values())) == 4 and 0 not in ids.values()
    assert node_ids([B6, A6]) == {a: ids[a] for a in (A6, B6)}


# ==============================================================================================
# flowstate: serving, draining, out
# ==============================================================================================
def health(*probes: tuple[bool, bool, float]) -> TargetHealth:
    h = None
    for ok, definitive, at in probes:
        h = observe(h, Probe(ok, definitive, "x" if ok else "no", at), rise=2, fall=2)
    assert h is not None
    return h


def test_a_node_that_answers_no_drains_and_one_that_does_not_answer_is_out() -> None:
    assert standing(None, 0, 300) is Standing.OUT
    assert standing(health((True, True, 0)), 1, 300) is Standing.SERVING
    draining = health((True, True, 0), (False, True, 10))  # HTTP 503: alive, drain
    assert standing(draining, 20, 300) is Standing.DRAINING
    assert standing(draining, 309.9, 300) is Standing.DRAINING
    assert standing(draining, 310, 300) is Standing.OUT  # drain timeout over
    assert standing(draining, 20, 0) is Standing.OUT  # a zero timeout: no drain
    dead = health((True, True, 0), (False, False, 10), (False, False, 11))  # timeouts
    assert not dead.healthy and standing(dead, 12, 300) is Standing.OUT
    # a draining node that stops answering is out at once
    gone = health((True, True, 0), (False, True, 10), (False, False, 11))
    assert standing(gone, 12, 300) is Standing.OUT
    # one timeout does not make a healthy node unhealthy (fall 2)
    assert standing(health((True, True, 0), (False, False, 1)), 2, 300) is Standing.SERVING
    # never seen healthy (a gateway restarted while the node drains): its pins are kept
    assert standing(health((False, True, 0)), 1, 300) is Standing.DRAINING
    # the faster signal: a node whose neighbour entry failed is out whatever it said before
    assert standing(draining, 20, 300, reachable=False) is Standing.OUT


def svc(*backends: str, drain: int = 300) -> GatewayService:
    return GatewayService(
        "ns/web",
        "uid",
        (VIP,),
        (Port("TCP", 80, 30080),),
        True,
        31000,
        False,
        0,
        (),
        False,
        tuple(
            Backend(n, ip(a), None, "", 1, 1, 0)
            for n, a in zip(backends, ("198.18.210.11", "198.18.210.12"), strict=False)
        ),
        drain,
    )


def test_the_plan_keeps_draining_nodes_for_established_flows_only() -> None:
    s = svc("n1", "n2")
    states = {"n1": health((True, True, 0), (False, True, 10)), "n2": health((True, True, 0))}
    now = 20.0

    def healthy(node: str, key: str) -> bool:
        return states[node].healthy

    def keeps(node: str, key: str) -> bool:
        return standing(states[node], now, s.drain_timeout) is not Standing.OUT

    ports, _ = forwarding_and_nat([s], healthy, MaglevCache(7), "", keeps)
    (p,) = ports
    assert set(p.slots) == {B} and p.established == (A,)
    assert next_drain_end([s], lambda n, k: states[n], now) == 310
    now = 311.0
    (p,) = forwarding_and_nat([s], healthy, MaglevCache(7), "", keeps)[0]
    assert p.established == ()
    assert next_drain_end([s], lambda n, k: states[n], now) is None


def test_the_cr_carries_the_drain_timeout() -> None:
    cr = {"metadata": {"namespace": "ns", "name": "web"}, "spec": {"vips": [str(VIP)]}}
    assert service_from_cr(cr).drain_timeout == 300
    cr["spec"]["drainTimeoutSeconds"] = 30
    assert service_from_cr(cr).drain_timeout == 30
    cr["spec"]["drainTimeoutSeconds"] = "soon"  # the CRD refuses it; the default, not a crash
    assert service_from_cr(cr).drain_timeout == 300

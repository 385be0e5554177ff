"""The ARP signal's verdicts: out after ``misses`` unanswered requests, back after ``rise``
answers, no verdict for a node that never answered; answers late but waiting in the socket
count (the caller reads before it judges)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from portico_lbnode.neighbours import (
    Neighbour,
    NeighbourSettings,
    NodeVerdict,
    answered,
    judge,
    probe_targets,
    report_status,
    sent,
    unreachable,
)

S = NeighbourSettings(interval=0.1, timeout=0.15, misses=3, rise=3)


def run(
    ticks: list[bool], s: NeighbourSettings = S, start: Neighbour | None = None
) -> list[Neighbour]:
    """One tick per entry: read (the previous request answered when True), judge, send."""
    state = start or Neighbour()
    out = []
    for i, answer in enumerate(ticks):
        now = round(i * s.interval, 6)
        if answer and i:
            state = answered(state, now)
        state = judge(state, now, s)
        out.append(state)
        state = sent(state, now, s)
    return out


def test_a_node_never_answering_gets_no_verdict() -> None:
    states = run([False] * 50)
    assert all(s.reachable is None for s in states)
    assert len(states[-1].outstanding) <= 3 + 2 + 1  # bounded


def test_first_answer_makes_reachable_then_three_misses_make_unreachable() -> None:
    states = run([True] * 5 + [False] * 10)
    assert states[1].reachable is True
    # Answers stop after tick 4 (its request, sent at 0.4, is never answered): requests of
    # 0.4, 0.5, 0.6 are missed by 0.6 + 0.15 -> judged at tick 8 (0.8 s).
    flips = [i for i, s in enumerate(states) if s.reachable is False]
    assert flips[0] == 8
    assert states[8].since == 0.8


def test_rise_answers_bring_it_back() -> None:
    states = run([True] * 3 + [False] * 6 + [True] * 5)
    back = [i for i in range(9, 14) if states[i].reachable]
    assert back[0] == 11  # answers at ticks 9, 10, 11
    assert states[11].since == 1.1


def test_one_or_two_misses_are_forgiven() -> None:
    pattern = [True] * 3 + [False, False, True] * 10
    assert all(s.reachable for s in run(pattern)[1:])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_never_unreachable_without_misses_in_a_row(answers: list[bool]) -> None:
    ticks = [True, *answers]
    states = run(ticks)
    for i, s in enumerate(states):
        if s.reachable is False and states[i - 1].reachable:
            # The requests of ticks i-4, i-3, i-2 (answers read at i-3 .. i-1) and the one of
            # i-1 (read at i, before judging) all went unanswered.
            assert i >= 4 and not any(ticks[i - 3 : i + 1]), (i, ticks)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=40), st.integers(min_value=0, max_value=10))
def test_a_silent_node_is_out_within_the_bound(up: int, extra: int) -> None:
    states = run([True] * up + [False] * (10 + extra))
    first = next(i for i, s in enumerate(states) if s.reachable is False)
    # The last answered request was sent at tick up - 1; out at most 4 ticks after the next.
    assert first - up <= 4


def test_a_duplicate_answer_counts_once() -> None:
    s = Neighbour(reachable=False, since=0.0, outstanding=(1.0,), answers=0)
    s = answered(answered(s, 1.05), 1.06)
    assert s.answers == 1


def test_report_status_lists_unreachable_nodes() -> None:
    status = report_status(
        [
            NodeVerdict("node-2", False, "2026-01-01T00:00:00Z", "no ARP answer"),
            NodeVerdict("node-1", True, "2026-01-01T00:00:00Z", ""),
        ],
        ["eth0"],
        "2026-01-01T00:00:05Z",
    )
    assert status["unreachableNodes"] == ["node-2"]
    assert status["probedNodes"] == 2
    assert [n["node"] for n in status["nodes"]] == ["node-1", "node-2"]  # type: ignore[index]
    assert unreachable({"a": Neighbour(False), "b": Neighbour(True), "c": Neighbour()}) == {"a"}


def test_arp_probe_frames_and_replies() -> None:

    from portico_lbnode.arpprobe import BROADCAST, probe_frame, reply_sender

    mac, node_mac = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    ip = ipaddress.IPv4Address("198.18.0.11")
    frame = probe_frame(mac, ip, BROADCAST)
    assert frame[:6] == BROADCAST and frame[12:14] == b"\x08\x06" and len(frame) == 42
    assert frame[28:32] == b"\0\0\0\0" and frame[38:42] == ip.packed  # RFC 5227: no sender IP
    assert reply_sender(frame) is None  # a request is no answer
    # The node's reply: op 2, its MAC and address as sender.
    reply = mac + node_mac + b"\x08\x06" + frame[14:20] + b"\x00\x02" + node_mac + ip.packed
    reply += mac + b"\0\0\0\0"
    assert reply_sender(reply) == (ip, node_mac)
    assert reply_sender(reply[:30]) is None


def test_verdicts_carry_over_a_restart() -> None:
    from portico_lbnode.arpprobe import NeighbourProber
    from portico_lbnode.neighbours import carried_over

    status = {
        "nodes": [
            {"node": "node-2", "reachable": False, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"node": "node-1", "reachable": True, "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"node": "node-3", "reachable": False, "lastTransitionTime": "yesterday"},
            {"node": 4, "reachable": False},
        ]
    }
    carried = carried_over(status)
    assert set(carried) == {"node-1", "node-2"}
    assert carried["node-2"].reachable is False and carried["node-1"].reachable is True
    assert carried_over(None) == {} and carried_over({"nodes": "x"}) == {}
    # Before its targets are known, and after: either way node-2 starts unreachable.
    early = NeighbourProber(S, ["eth0"])
    early.carry_over(carried)
    early.set_targets({"node-1": "198.18.0.10", "node-2": "198.18.0.11"})
    late = NeighbourProber(S, ["eth0"])
    late.set_targets({"node-1": "198.18.0.10", "node-2": "198.18.0.11"})
    late.carry_over(carried)
    for p in (early, late):
        assert p.unreachable("node-2") and not p.unreachable("node-1")
    # A verdict of this run wins over a carried one.
    late.carry_over({"node-2": Neighbour(reachable=True)})
    assert late.unreachable("node-2")
    # A run that does not ask could never take a carried verdict back: none is carried.
    off = NeighbourProber(NeighbourSettings(interval=0), ["eth0"])
    off.carry_over(carried)
    off.set_targets({"node-2": "198.18.0.11"})
    assert not off.unreachable("node-2") and not off.states()


def test_carried_verdicts_are_reported_until_the_targets_are_known() -> None:
    from portico_lbnode.arpprobe import NeighbourProber

    p = NeighbourProber(S, ["eth0"])
    p.carry_over({"node-2": Neighbour(reachable=False), "node-9": Neighbour(reachable=False)})
    assert set(p.states()) == {"node-2", "node-9"}  # the first report keeps them
    p.set_targets({"node-2": "198.18.0.11"})
    assert set(p.states()) == {"node-2"} and p.unreachable("node-2")
    p.carry_over({"node-9": Neighbour(reachable=False)})  # late, and not a backend: ignored
    assert set(p.states()) == {"node-2"}


def test_ndp_solicitations_and_advertisements() -> None:

    from portico_lbnode.arpprobe import advertised_target, solicitation, solicited_node

    mac = bytes.fromhex("020000000001")
    target = ipaddress.IPv6Address("fd00:18::c")
    assert solicited_node(target) == ipaddress.IPv6Address("ff02::1:ff00:c")
    ns = solicitation(mac, target)
    assert ns[0] == 135 and ns[8:24] == target.packed and ns[24:] == b"\x01\x01" + mac
    assert advertised_target(ns) is None  # a solicitation is no answer
    na = bytes([136, 0, 0, 0, 0x60, 0, 0, 0]) + target.packed + b"\x02\x01" + mac
    assert advertised_target(na) == target
    assert advertised_target(na[:20]) is None


def test_the_gateway_host_itself_is_never_probed() -> None:
    """A gateway on a node (hostNetwork) never hears its own ARP or NDP probe: its own
    addresses, either family, are left out of the targets; every other node stays."""
    own = {ipaddress.ip_address("198.18.0.11"), ipaddress.ip_address("fd00::11")}
    nodes = {"node-1": "198.18.0.11", "node-2": "198.18.0.12", "node-6": "fd00::11"}
    assert probe_targets(nodes, own) == {"node-2": "198.18.0.12"}
    assert probe_targets(nodes, ()) == nodes

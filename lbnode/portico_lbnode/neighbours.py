"""The gateway's second health signal, as data: does a node still answer ARP (or NDP)? (pure)

The HTTP probe needs ``fall`` (2) timeouts of ``timeout`` (1 s) each at a 1 s interval to call a
silent node down: 2.3-2.7 s. A node that dropped off the LAN gives no answer at all, and the
cheapest question it would answer is an ARP request: its kernel answers in softirq, whatever
its CPUs and its user space are doing, so a busy node does not look dead (a node whose agent
hangs is the HTTP probe's to judge). ``arpprobe`` asks every ``interval`` (0.1 s) and feeds
this module; a node whose last ``misses`` (3) requests went unanswered for ``timeout`` (0.15 s)
each is unreachable, 0.4-0.5 s after its last answer. ``rise`` (3) answers in a row make it
reachable again.

A node that has never answered gets no verdict (``reachable`` None): a node that is not on the
gateway's segment (reached through a router) never answers ARP and must not be called dead.
A restarted gateway starts from the verdicts of its previous run (``carried_over``, from its
GatewayReport): a node that died before the restart would otherwise have no verdict, and its
endpoints would return to every node's rules while it is still gone. The reachable ones come
along too: a report naming only the dead would look like a gateway cut off from most nodes.
ARP replies carry no request id, so any answer from the node's address clears every request
outstanding.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

UNREACHABLE_MESSAGE = "no ARP/NDP answer"


@dataclass(frozen=True)
class NeighbourSettings:
    interval: float = 0.1  # one request per node per interval; 0 turns the signal off
    timeout: float = 0.15  # a request unanswered this long is missed (read a tick later)
    misses: int = 3  # missed requests in a row that make a node unreachable
    rise: int = 3  # answers in a row that make an unreachable node reachable again


@dataclass(frozen=True)
class Neighbour:
    reachable: bool | None = None  # None: never answered, no verdict
    since: float = 0.0  # when ``reachable`` took its value
    outstanding: tuple[float, ...] = ()  # send times of the requests not answered yet
    answers: int = 0  # requests answered in a row


def sent(state: Neighbour, at: float, settings: NeighbourSettings) -> Neighbour:
    """A request went out at ``at``. Only the newest outstanding ones are kept: as many as can
    be missed at once (``misses``) plus those still within their ``timeout``."""
    keep = max(settings.misses, 1) + 1
    if settings.interval > 0:
        keep += math.ceil(settings.timeout / settings.interval)
    return replace(state, outstanding=(*state.outstanding, at)[-keep:])


def answered(state: Neighbour, at: float) -> Neighbour:
    """An answer came at ``at``: the outstanding requests are answered (a duplicate answer,
    with nothing outstanding, counts once)."""
    if not state.outstanding and state.answers:
        return state
    return replace(state, outstanding=(), answers=state.answers + 1)


def judge(state: Neighbour, now: float, settings: NeighbourSettings) -> Neighbour:
    """The verdict at ``now``, after the answers received up to ``now`` were given to
    ``answered``: the caller reads its socket before it judges, so a gateway that was itself
    slow to run does not count answers waiting in its buffer as missed."""
    missed = sum(1 for t in state.outstanding if now - t >= settings.timeout)
    answers = 0 if missed else state.answers
    reachable = state.reachable
    if reachable and missed >= settings.misses:
        reachable = False
    elif (reachable is None and answers) or (reachable is False and answers >= settings.rise):
        reachable = True  # a first answer gives a verdict; a return takes ``rise`` of them
    since = now if reachable != state.reachable else state.since
    if (reachable, since, answers) == (state.reachable, state.since, state.answers):
        return state
    return replace(state, reachable=reachable, since=since, answers=answers)


def carried_over(status: object) -> dict[str, Neighbour]:
    """The verdicts of a previous run's report status (see ``report_status``); anything
    malformed is left out (such a node starts without a verdict)."""
    nodes = status.get("nodes") if isinstance(status, dict) else None
    out: dict[str, Neighbour] = {}
    for n in nodes if isinstance(nodes, list) else []:
        if not isinstance(n, dict) or not isinstance(n.get("reachable"), bool):
            continue
        name, since = n.get("node"), n.get("lastTransitionTime")
        if not isinstance(name, str) or not isinstance(since, str):
            continue
        try:
            at = dt.datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        out[name] = Neighbour(reachable=n["reachable"], since=at.timestamp())
    return out


def probe_targets(
    addresses: Mapping[str, str], own: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> dict[str, str]:
    """The nodes to probe (node -> address), by name: every node but the gateway host itself
    (a gateway with hostNetwork on a node), which never hears its own probe. Probed, it would
    be judged unreachable, or alive only when the host happened to send ARP of its own."""
    mine = set(own)
    return {node: a for node, a in addresses.items() if ipaddress.ip_address(a) not in mine}


def unreachable(states: Mapping[str, Neighbour]) -> frozenset[str]:
    """The nodes judged unreachable."""
    return frozenset(n for n, s in states.items() if s.reachable is False)


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    reachable: bool
    since: str  # RFC 3339
    message: str


def report_status(
    verdicts: Iterable[NodeVerdict], interfaces: Iterable[str], heartbeat: str
) -> dict[str, object]:
    """The status of the gateway's ``GatewayReport``: every node with a verdict (nodes never
    answered are left out: the gateway has nothing to say of them), the unreachable ones by
    name, and when the gateway last wrote (the operator ignores a report that stops changing:
    ``portico_operator.reachability``). ``stoppedTime`` is null: the status is written as a
    merge patch, where null deletes the mark a previous run left when it stopped."""
    nodes = sorted(verdicts, key=lambda v: v.node)
    return {
        "heartbeatTime": heartbeat,
        "stoppedTime": None,
        "interfaces": list(interfaces),
        "probedNodes": len(nodes),
        "unreachableNodes": [v.node for v in nodes if not v.reachable],
        "nodes": [
            {
                "node": v.node,
                "reachable": v.reachable,
                "lastTransitionTime": v.since,
                "message": v.message,
            }
            for v in nodes
        ],
    }


def stopped_status(stopped: str) -> dict[str, object]:
    """What a gateway adds to its report when it stops cleanly (its announcements withdrawn):
    that it is gone, for ``kubectl portico status``. The verdicts stay, for the next run to
    read back; the operator keeps honouring them until the heartbeat is 30 s old."""
    return {"stoppedTime": stopped}

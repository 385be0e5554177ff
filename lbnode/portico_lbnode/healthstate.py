"""The gateway's view of one health-check target (a node for a Service): a rise/fall state
machine over probe results, and the reading of the node agent's aggregate answer.

Pure: no I/O and no clock; every time is passed in. ``prober`` does the HTTP.

Choices:
  * A target starts unknown (``None``), which counts as not healthy. A target that has never been
    healthy becomes healthy on its first good answer, without waiting for ``rise``: a brand-new
    Service (whose first probes may well be 503s because the node agent has not programmed it
    yet) is then served one probe after the node is ready, not ``rise`` intervals later. ``rise``
    guards recovery, once a target has been healthy and failed.
  * A definitive bad answer (an HTTP answer such as 503: the node itself says "not me") takes a
    healthy target out at once; only timeouts and connection errors have to add up to ``fall``.
  * In aggregate mode a Local Service is healthy on a node when the node agent's rules are current
    and the Service has local ready endpoints of the family the gateway probes the node over
    (``prober`` passes the family of the node address it uses, so the answer is the one the
    Service's own ``healthCheckNodePort`` listener of that family would give). ``family=None``
    accepts any family.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Probe:
    """One probe's result. ``definitive`` is True for an answer from the node (HTTP 503, a node
    agent listing without the Service), False for a timeout or a connection error."""

    ok: bool
    definitive: bool
    message: str  # stable text (no latencies), so repeated equal results compare equal
    at: float


@dataclass(frozen=True)
class TargetHealth:
    healthy: bool
    since: float  # when ``healthy`` took its present value (or the target was first probed)
    message: str  # of the latest probe that agrees with ``healthy``: the reason for the state
    oks: int  # consecutive good probes, up to the latest
    fails: int  # consecutive bad probes, up to the latest
    ever_healthy: bool  # False until the first flip to healthy: then a single ok suffices
    last_probe: float
    # The latest probe got an answer from the node (an ok or a definitive no): a node that
    # says no is alive and may drain; one that does not answer is dead (``flowstate``).
    answered: bool = True


def observe(state: TargetHealth | None, probe: Probe, rise: int, fall: int) -> TargetHealth:
    """The target's state after ``probe``; ``state`` None is a target never probed."""
    if state is None:
        return TargetHealth(
            healthy=probe.ok,
            since=probe.at,
            message=probe.message,
            oks=1 if probe.ok else 0,
            fails=0 if probe.ok else 1,
            ever_healthy=probe.ok,
            last_probe=probe.at,
            answered=probe.ok or probe.definitive,
        )
    oks = state.oks + 1 if probe.ok else 0
    fails = 0 if probe.ok else state.fails + 1
    if state.healthy:
        flip = not probe.ok and (probe.definitive or fails >= fall)
    else:
        flip = probe.ok and (oks >= rise or not state.ever_healthy)
    healthy = state.healthy != flip
    agrees = probe.ok == healthy
    return TargetHealth(  # not dataclasses.replace: this runs once per Service per node per tick
        healthy=healthy,
        since=probe.at if flip else state.since,
        message=probe.message if agrees else state.message,
        oks=oks,
        fails=fails,
        ever_healthy=state.ever_healthy or healthy,
        last_probe=probe.at,
        answered=probe.ok or probe.definitive,
    )


def worth_reporting(old: TargetHealth | None, new: TargetHealth) -> bool:
    """Whether the caller should hear of ``new``: the first state, a flip, or a new reason for
    being unhealthy (a healthy target's message changing is no news)."""
    if old is None or old.healthy != new.healthy:
        return True
    return not new.healthy and old.message != new.message


def classify_http(status: int, body: bytes) -> tuple[bool, str]:
    """(ok, message) of a kube-proxy-style ``/healthz`` answer: 200 is good, anything else is
    the node saying no. The message names kube-proxy's ``localEndpoints`` when the body has it."""
    message = f"HTTP {status}"
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        count = doc.get("localEndpoints")
        if isinstance(count, int) and not isinstance(count, bool):
            message += f", {count} local endpoints"
    return status == 200, message


# ---------------------------------------------------------------------------------------------
# the node agent's aggregate answer: GET :10256/portico/v1/services
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AggregateService:
    health_check_node_port: int
    local_endpoints: Mapping[int, int]  # family (4, 6) -> local ready endpoints


@dataclass(frozen=True)
class AggregateAnswer:
    node: str
    rules_current: bool
    last_applied: str
    services: Mapping[str, AggregateService]  # "namespace/name" -> counts
    # False while the node is being deleted or drained by the autoscaler (kube-proxy's
    # nodeEligible): it keeps serving Local Services' own pods but takes no Cluster traffic.
    node_eligible: bool = True
    # The agent lists every Service in force, Cluster ones too (older agents list only Local
    # ones): a Service it does not list is not programmed on the node yet.
    all_services: bool = False
    # The agent's round counter (None from older agents): a long poll waits for it to move.
    generation: int | None = None


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: not a count: {value!r}")
    return value


def parse_aggregate(body: bytes | str) -> AggregateAnswer:
    """The node agent's answer; ValueError naming the bad part when it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"aggregate answer is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError("aggregate answer is not a JSON object")
    rules_current = doc.get("rulesCurrent")
    if not isinstance(rules_current, bool):
        raise ValueError(f"aggregate answer: rulesCurrent is not a boolean: {rules_current!r}")
    eligible = doc.get("nodeEligible", True)  # absent from older agents' answers
    if not isinstance(eligible, bool):
        raise ValueError(f"aggregate answer: nodeEligible is not a boolean: {eligible!r}")
    all_services = doc.get("allServices", False)
    if not isinstance(all_services, bool):
        raise ValueError(f"aggregate answer: allServices is not a boolean: {all_services!r}")
    generation = doc.get("generation")
    if generation is not None:
        generation = _count(generation, "generation")
    raw_services = doc.get("services")
    if raw_services is None:
        raw_services = {}
    if not isinstance(raw_services, dict):
        raise ValueError("aggregate answer: services is not an object")
    services: dict[str, AggregateService] = {}
    for key, entry in raw_services.items():
        if not isinstance(entry, dict):
            raise ValueError(f"aggregate answer: services[{key!r}] is not an object")
        counts = entry.get("localEndpoints")
        if not isinstance(counts, dict):
            raise ValueError(f"aggregate answer: services[{key!r}].localEndpoints is no object")
        local: dict[int, int] = {}
        for name, value in counts.items():
            if name not in ("IPv4", "IPv6"):
                continue  # a family we do not know of: not ours to judge
            local[int(name[3:])] = _count(value, f"services[{key!r}].localEndpoints.{name}")
        port = entry.get("healthCheckNodePort", 0)
        services[str(key)] = AggregateService(
            health_check_node_port=_count(port, f"services[{key!r}].healthCheckNodePort"),
            local_endpoints=local,
        )
    return AggregateAnswer(
        node=str(doc.get("node") or ""),
        rules_current=rules_current,
        last_applied=str(doc.get("lastApplied") or ""),
        services=services,
        node_eligible=eligible,
        all_services=all_services,
        generation=generation,
    )


def node_healthy_from_aggregate(answer: AggregateAnswer) -> tuple[bool, str]:
    """For a Cluster Service: the node forwards it when its rules are current."""
    if not answer.rules_current:
        return False, "node agent: rules not current"
    if not answer.node_eligible:
        return False, "node agent: node is being deleted or drained"
    return True, "node agent: rules current"


def cluster_healthy_from_aggregate(answer: AggregateAnswer, key: str) -> tuple[bool, str]:
    """For a Cluster Service ``key``: the node forwards it when its rules are current and, from
    an agent that lists every Service, they carry it (a new Service's CR may reach the gateway
    before the node has applied its rules)."""
    ok, msg = node_healthy_from_aggregate(answer)
    if ok and answer.all_services and key not in answer.services:
        return False, NOT_APPLIED_MESSAGE
    return ok, msg


NOT_APPLIED_MESSAGE = "node agent: service not programmed yet"


def not_applied(answer: AggregateAnswer, keys: Iterable[str]) -> bool:
    """Whether some of ``keys`` is not in force on the node yet (by an agent that lists every
    Service and says its generation): the gateway then waits for the agent's next round."""
    return (
        answer.all_services
        and answer.generation is not None
        and answer.rules_current
        and any(k not in answer.services for k in keys)
    )


def service_healthy_from_aggregate(
    answer: AggregateAnswer, key: str, family: int | None
) -> tuple[bool, str]:
    """For a Local Service ``key``: current rules and local ready endpoints of ``family``
    (any family when None). A Service the agent does not list has none on the node, or is too
    new for the agent to have programmed it: unhealthy either way."""
    if not answer.rules_current:
        return False, "node agent: rules not current"
    svc = answer.services.get(key)
    if svc is None and answer.all_services:
        return False, NOT_APPLIED_MESSAGE
    if svc is None:
        return False, "node agent: service not listed (no local endpoints or not yet programmed)"
    if family is None:
        count = sum(svc.local_endpoints.values())
        fam = "any family"
    else:
        count = svc.local_endpoints.get(family, 0)
        fam = f"IPv{family}"
    if count > 0:
        return True, f"node agent: local endpoints ({fam})"
    return False, f"node agent: 0 local endpoints ({fam})"

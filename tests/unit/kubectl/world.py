"""A Service and the objects around it, written by Portico's own writers: the operator's
allocator, Service status, LoadBalancer spec and conditions, NodeRules entry and NodesReachable
condition; the gateway's LoadBalancer status and GatewayReport; the node agents' NodeAgent
status; the VIPPool status. Only the Kubernetes objects (Service, Node, EndpointSlice) are
written here, in the API's shape. Each test changes one thing and looks at the verdict."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from portico_common.conditions import condition
from portico_common.rulesdoc import shard_name
from portico_kubectl.snapshot import Snapshot
from portico_lbnode.lbstatus import NodeReport, Report, render_status
from portico_lbnode.neighbours import (
    UNREACHABLE_MESSAGE,
    NodeVerdict,
    report_status,
    stopped_status,
)
from portico_nodeagent.kubeagent import agent_status
from portico_operator import decisions, ipam
from portico_operator.lbspec import lb_conditions, parse_node, render_pool_status, render_spec
from portico_operator.lbspec import service_status as operator_service_status
from portico_operator.noderules_push import lagging_nodes, node_rules_entry, programmed
from portico_operator.pools import parse_pool
from portico_operator.reachability import decide, parse_report, reachable_condition
from portico_operator.service import parse_service
from portico_operator.slices import endpoints_from_slices

NOW = datetime(2026, 12, 5, 20, 0, 0, tzinfo=UTC)
T = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
NS, NAME = "shop", "web"
KEY = f"{NS}/{NAME}"
SHARD = shard_name(KEY)
SHARD_GENERATION = 7
NODES = ("node-1", "node-2", "node-3")


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class World:
    policy: str = "Cluster"
    ranges: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pools: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": "lab", "spec": {"addresses": ["198.18.32.0/27"]}}]
    )
    taken: int = 0  # addresses other Services hold first
    pods: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NODES, 2))
    not_ready: set[str] = field(default_factory=set)  # nodes whose pods are not ready
    excluded: set[str] = field(default_factory=set)  # nodes with the exclude label
    gateway: str | None = "gw-1"  # None: no gateway runs
    heartbeat_age: float = 3.0
    report_kept: bool = True  # False: the gateway's GatewayReport is gone
    stopped_age: float | None = None  # the gateway stopped cleanly this long ago
    unhealthy: dict[str, str] = field(default_factory=dict)  # node -> probe message
    unreachable: set[str] = field(default_factory=set)  # nodes without ARP answer
    lagging: set[str] = field(default_factory=set)  # nodes whose agent did not apply
    no_agent: set[str] = field(default_factory=set)
    agent_error: dict[str, str] = field(default_factory=dict)
    input_error_after_allocation: str | None = None

    # -- the Kubernetes objects ----------------------------------------------------------------
    def service_obj(self, status: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "uid": "uid-web",
                "resourceVersion": "10",
                "generation": 2,
                "annotations": dict(self.annotations),
                "labels": dict(self.labels),
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "externalTrafficPolicy": self.policy,
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                **({"loadBalancerSourceRanges": list(self.ranges)} if self.ranges else {}),
            },
            "status": status or {},
        }

    def node_objs(self) -> list[dict[str, Any]]:
        out = []
        for i, n in enumerate(NODES, 1):
            labels = {"topology.kubernetes.io/zone": "zone-a"}
            if n in self.excluded:
                labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            out.append(
                {
                    "metadata": {"name": n, "labels": labels},
                    "status": {
                        "addresses": [{"type": "InternalIP", "address": f"198.18.0.{10 + i}"}],
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
        return out

    def slices(self) -> list[dict[str, Any]]:
        endpoints = []
        for i, n in enumerate(NODES, 1):
            for k in range(self.pods.get(n, 0)):
                ready = n not in self.not_ready
                endpoints.append(
                    {
                        "addresses": [f"198.19.{i}.{10 + k}"],
                        "nodeName": n,
                        "zone": "zone-a",
                        "targetRef": {"kind": "Pod", "name": f"web-{i}-{k}", "namespace": NS},
                        "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    }
                )
        if not endpoints:
            return []  # the EndpointSlice controller leaves an empty slice; none is as good
        return [
            {
                "metadata": {
                    "name": "web-abcde",
                    "namespace": NS,
                    "labels": {"kubernetes.io/service-name": NAME},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": endpoints,
            }
        ]

    # -- Portico's objects, by Portico's writers -----------------------------------------------
    def snapshot(self, **override: Any) -> Snapshot:
        view = parse_service(self.service_obj())
        pools = [parse_pool(p["name"], p["spec"]) for p in self.pools]
        alloc = ipam.Allocator()
        alloc.set_pools(pools)
        for k in range(self.taken):
            alloc.assign(ipam.Claim(service=f"other/svc-{k}"))
        error = view.input_error()
        outcome: decisions.Outcome
        if error is not None:
            outcome = decisions.failed("DSR", ipam.INVALID_REQUEST, error, error)
        else:
            try:
                result = alloc.assign(view.claim({}))
                names = sorted(set(result.pools))
                message = decisions.allocation_message(result.ips, names, ())
                outcome = decisions.allocated(result.ips, names, "DSR", message)
            except ipam.AllocationError as e:
                outcome = decisions.failed("DSR", e.reason, str(e))
        if self.input_error_after_allocation and outcome.allocated:
            # An edit to bad input after the Service was allocated: what stage one keeps.
            kept = decisions.kept_on_bad_input(
                outcome.vips,
                alloc.holds(KEY),
                outcome,
                outcome.mode,
                self.input_error_after_allocation,
                alloc.pool_of,
            )
            assert kept is not None
            outcome = kept
        status = operator_service_status(
            view,
            outcome.vips,
            outcome.mode,
            outcome.allocated,
            outcome.reason,
            outcome.message,
            T,
            outcome.input_error,
        )
        svc = self.service_obj(status)
        slices = self.slices()
        endpoints = list(endpoints_from_slices(slices))
        reports = self.reports()
        reach = decide([(parse_report(r), 0.0) for r in reports], now=1.0)
        endpoints = [
            dataclasses.replace(e, unreachable=True) if e.node in reach.unreachable else e
            for e in endpoints
        ]
        nodes = [parse_node(n) for n in self.node_objs()]
        spec = render_spec(view, outcome.vips, outcome.pool, outcome.mode, nodes, endpoints)
        backends = [b["node"] for b in spec["backends"]]
        agents = self.agents()
        applied = {a["metadata"]["name"]: a["status"]["applied"] for a in agents if a.get("status")}
        prog = programmed(lagging_nodes(backends, SHARD, SHARD_GENERATION, applied))
        conds = lb_conditions(
            view,
            outcome.allocated,
            outcome.reason,
            outcome.message,
            outcome.input_error,
            outcome.mode,
            1,
            T,
            [],
            condition("Programmed", prog[0], prog[1], prog[2], 1, T) if outcome.vips else None,
        )
        ok, reason, message = reachable_condition(reach, (e.node for e in endpoints))
        conds.append(condition("NodesReachable", ok, reason, message, 1, T))
        lb_status: dict[str, Any] = {"observedGeneration": 1, "conditions": conds}
        if self.gateway is not None:
            gw = render_status(self.gateway_report(backends, bool(outcome.vips)), 1, T, {})
            lb_status = {**gw, **lb_status, "conditions": conds + gw["conditions"]}
        lb = {
            "metadata": {"name": NAME, "namespace": NS, "generation": 1},
            "spec": spec,
            "status": lb_status,
        }
        rules: dict[str, Any] = {
            "metadata": {"name": SHARD, "generation": SHARD_GENERATION},
            "spec": {"services": {}},
        }
        if outcome.vips:
            entry = node_rules_entry(view, outcome.vips, outcome.mode, endpoints)
            rules["spec"]["services"][KEY] = entry
        pool_objs = []
        for p, obj in zip(pools, self.pools, strict=True):
            used = {f: alloc.used(p, f) for f in (4, 6)}
            pool_objs.append(
                {
                    "metadata": {"name": p.name, "generation": 1},
                    "spec": obj["spec"],
                    "status": render_pool_status(p, {"metadata": {"generation": 1}}, used, [], T),
                }
            )
        fields: dict[str, Any] = {
            "namespace": NS,
            "name": NAME,
            "service": svc,
            "lb": lb,
            "slices": tuple(slices),
            "rules": rules,
            "pools": tuple(pool_objs),
            "agents": tuple(agents),
            "reports": tuple(reports),
        }
        fields.update(override)
        return Snapshot(**fields)

    def gateway_report(self, backends: list[str], announced: bool) -> Report:
        assert self.gateway is not None
        nodes = []
        for n in backends:
            if n in self.unreachable:
                nodes.append(NodeReport(n, False, UNREACHABLE_MESSAGE, T))
            elif n in self.unhealthy:
                nodes.append(NodeReport(n, False, self.unhealthy[n], T))
            else:
                nodes.append(NodeReport(n, True, "HTTP 200", T))
        return Report(
            gateway=self.gateway,
            announced=announced,
            announce_reason="Announced" if announced else "NotAnnounced",
            announce_message=f"{self.gateway} answers ARP/NDP" if announced else "no VIP",
            nodes=tuple(nodes),
            fail_closed=announced,
        )

    def reports(self) -> list[dict[str, Any]]:
        if self.gateway is None or not self.report_kept:
            return []
        verdicts = [
            NodeVerdict(
                n,
                n not in self.unreachable,
                T,
                UNREACHABLE_MESSAGE if n in self.unreachable else "",
            )
            for n in NODES
        ]
        beat = rfc3339(NOW - timedelta(seconds=self.heartbeat_age))
        status = report_status(verdicts, ["eth0"], beat)
        if self.stopped_age is not None:
            status |= stopped_status(rfc3339(NOW - timedelta(seconds=self.stopped_age)))
        return [
            {
                "metadata": {"name": self.gateway},
                "spec": {"gateway": self.gateway},
                "status": status,
            }
        ]

    def agents(self) -> list[dict[str, Any]]:
        out = []
        for n in NODES:
            if n in self.no_agent:
                continue
            gen = (
                SHARD_GENERATION - 2
                if n in self.lagging or n in self.agent_error
                else SHARD_GENERATION
            )
            status = agent_status(
                {SHARD: gen},
                {},
                services=1,
                counts={},
                error=self.agent_error.get(n),
                bad={},
                conflicts={},
                applied_at=T,
            )
            out.append({"metadata": {"name": n}, "spec": {"node": n}, "status": status})
        return out


def vip_of(snap: Snapshot) -> str:
    ip = snap.lb["spec"]["vips"][0] if snap.lb else ""
    ipaddress.ip_address(ip)
    return str(ip)

"""`kubectl portico status` against the lab: the real plugin (its console entry point's module)
run with the lab's kubeconfig, over the objects the real operator, node agents and gateway
wrote, for a Service that works and for each reason one does not that the lab can make: no
pool matches, bad input, source ranges that exclude the client, no endpoints, a node whose
agent stopped (its rules not applied), a node cut off the LAN, a gateway that stopped. The
exit status says whether the Service is reachable, and the healthy case is checked against a
real request."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.portico import node_agent_argv, start_gateway
from portico_lab.procs import Proc

from .dataplane_harness import (
    answered,
    create,
    deleting_services,
    running_agents,
    running_operator,
)
from .operator_harness import NS, Api, OperatorProcess, wait_for

GATEWAY = "gw-1"
BLOCK = 176  # this module's /27 of the lab's VIP range (dataplane_harness.running_operator)


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api) -> Iterator[OperatorProcess]:
    with running_operator(lab, api, "kubectl", BLOCK, "op-kubectl") as op:
        yield op


@pytest.fixture(scope="module")
def agents(lab: Lab, operator: OperatorProcess) -> Iterator[list[Proc]]:
    with running_agents(lab) as procs:
        yield procs


@pytest.fixture(scope="module")
def gateways(lab: Lab, agents: list[Proc]) -> Iterator[list[Proc]]:
    """The gateway, in a list a test may put a restarted one into (stopped at the end)."""
    procs = [start_gateway(lab, GATEWAY)]
    try:
        yield procs
    finally:
        procs[0].stop()
        lab.exec(GATEWAY, [sys.executable, "-m", "portico_lbnode", "--cleanup"])


@pytest.fixture()
def gateway(gateways: list[Proc]) -> Proc:
    return gateways[0]


@pytest.fixture()
def services(api: Api) -> Iterator[list[str]]:
    with deleting_services(api) as names:
        yield names


def status(lab: Lab, name: str, *extra: str, output: str = "json") -> tuple[int, Any]:
    """`kubectl portico status NAME` (as kubectl would run kubectl-portico): exit status and
    the JSON report (or the text)."""
    argv = [sys.executable, "-m", "portico_kubectl", "status", "-n", NS, name, "-o", output]
    res = subprocess.run(
        [*argv, "--kubeconfig", str(lab.kubeconfig), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout) if output == "json" else res.stdout


def codes(report: dict[str, Any], blocking: bool | None = None) -> list[str]:
    return [f["code"] for f in report["findings"] if blocking is None or f["blocking"] == blocking]


def wait_report(lab: Lab, name: str, ok: Any, what: str, *extra: str) -> dict[str, Any]:
    """Runs the plugin until ``ok(exit status, report)``; returns that report."""
    seen: list[Any] = []

    def check() -> dict[str, Any] | None:
        rc, report = status(lab, name, *extra)
        seen[:] = [rc, report.get("findings")]
        return report if ok(rc, report) else None

    try:
        return wait_for(check, what, timeout=20)
    except AssertionError as e:
        raise AssertionError(f"{e}; last exit status and findings: {seen}") from None


def node(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in report["nodes"] if n["node"] == name)


def unreachable_endpoints(report: dict[str, Any]) -> set[str]:
    return {e["node"] for e in report["endpoints"] if e["unreachable"]}


def reachable_everywhere(rc: int, report: dict[str, Any]) -> bool:
    return rc == 0 and not report["findings"] and len(report["nodes"]) == 3


def test_a_working_service_names_its_whole_path(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    create(api, services, "kp-ok", externalTrafficPolicy="Cluster")
    report = wait_report(lab, "kp-ok", reachable_everywhere, "kp-ok reachable")
    (vip,) = report["vips"]["IPv4"]
    assert api.ingress_ips("kp-ok") == [vip]
    assert report["gateway"] == GATEWAY and report["verdict"] == "REACHABLE"
    for n in report["nodes"]:
        assert (n["usable"], n["health"], n["rules"], n["arp"]) == (
            True,
            "healthy",
            "applied",
            "reachable",
        ), n
    pods = {p.name for p in lab.pods()}
    assert {e["pod"] for e in report["endpoints"] if e["ready"]} == pods
    # What it says is what a client gets.
    assert answered(lab, "client-1", vip) is not None
    rc, text = status(lab, "kp-ok", output="text")
    assert rc == 0 and text.startswith(f"Service {NS}/kp-ok: REACHABLE\n") and GATEWAY in text


def test_no_pool_matches(lab: Lab, api: Api, gateway: Proc, services: list[str]) -> None:
    block = ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address + 32 * (BLOCK + 1)}/28")
    api.create_pool(
        "kp-picky",
        [str(block)],
        autoAssign=False,
        serviceSelector={"matchLabels": {"team": "b"}},
    )
    try:
        services.append("kp-nopool")
        api.create_service("kp-nopool", annotations={"portico.dev/address-pool": "kp-picky"})
        report = wait_report(
            lab, "kp-nopool", lambda rc, r: rc == 1 and "NoPoolMatches" in codes(r), "NoPoolMatches"
        )
        assert codes(report) == ["NoPoolMatches"]
        assert "kp-picky" in report["findings"][0]["message"]
        picky = next(p for p in report["pools"] if p["name"] == "kp-picky")
        assert picky["selectors"] == "serviceSelector" and not picky["auto_assign"]
    finally:
        api.delete_pool("kp-picky")


def test_bad_input(lab: Lab, api: Api, gateway: Proc, services: list[str]) -> None:
    # A source range Kubernetes cannot read never reaches the operator: the apiserver refuses
    # it (so the plugin's finding for one, InvalidInput, is unit-tested); an annotation only
    # Portico reads takes the same path through the operator.
    with pytest.raises(ApiException) as refused:
        create(api, [], "kp-badrange", loadBalancerSourceRanges=["198.18.1.300/32"])
    assert refused.value.status == 422
    create(api, services, "kp-bad")
    api.wait_ips("kp-bad")
    api.core.patch_namespaced_service(
        "kp-bad", NS, {"metadata": {"annotations": {"portico.dev/forwarding-mode": "magic"}}}
    )
    # Edited to bad input once it had its address: it keeps it, and the plugin warns.
    report = wait_report(
        lab, "kp-bad", lambda rc, r: "InvalidInput" in codes(r), "InvalidInput on kp-bad"
    )
    assert codes(report, blocking=False) == ["InvalidInput"] and report["vips"]
    assert "portico.dev/forwarding-mode" in report["findings"][0]["message"]
    # Bad from the start: no address, not reachable.
    services.append("kp-bad-new")
    api.create_service("kp-bad-new", annotations={"portico.dev/load-balancer-ips": "not-an-ip"})
    report = wait_report(
        lab, "kp-bad-new", lambda rc, r: rc == 1 and "InvalidInput" in codes(r), "InvalidInput"
    )
    assert codes(report, blocking=True) == ["InvalidInput"] and not report["vips"]
    assert "not-an-ip" in report["findings"][0]["message"]


def test_source_ranges_that_exclude_the_client(
    lab: Lab, api: Api, gateway: Proc, services: list[str]
) -> None:
    one = str(lab.plan.client(1).ipv4)
    other = str(lab.plan.client(2).ipv4)
    create(api, services, "kp-ranges", loadBalancerSourceRanges=[f"{one}/32"])
    wait_report(lab, "kp-ranges", reachable_everywhere, "kp-ranges reachable", "--from", one)
    rc, report = status(lab, "kp-ranges", "--from", other)
    assert rc == 1 and codes(report) == ["SourceRangeExcludes"]
    assert (
        f"{one}/32" in report["findings"][0]["message"]
        and other in report["findings"][0]["message"]
    )


def test_no_endpoints(lab: Lab, api: Api, gateway: Proc, services: list[str]) -> None:
    create(api, services, "kp-empty", selector={"app": "nothing"})
    report = wait_report(
        lab, "kp-empty", lambda rc, r: rc == 1 and r["vips"] and r["gateway"], "kp-empty announced"
    )
    assert codes(report) == ["NoEndpoints"] and not report["endpoints"]
    # --all: one report per LoadBalancer Service of the namespace; not all reachable, exit 1.
    argv = [sys.executable, "-m", "portico_kubectl", "status", "--all", "-n", NS, "-o", "json"]
    res = subprocess.run(
        [*argv, "--kubeconfig", str(lab.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1, res.stderr
    by_name = {r["service"]: r for r in json.loads(res.stdout)}
    assert codes(by_name[f"{NS}/kp-empty"]) == ["NoEndpoints"]


def test_rules_not_applied_on_a_node_whose_agent_stopped(
    lab: Lab, api: Api, gateway: Proc, agents: list[Proc], services: list[str]
) -> None:
    i = lab.node_names().index("node-2")
    agents[i].stop()
    try:
        # A Service the stopped agent never saw: node-2 has no rules for it.
        create(api, services, "kp-lag", externalTrafficPolicy="Cluster")
        report = wait_report(
            lab,
            "kp-lag",
            lambda rc, r: (
                "RulesNotApplied" in codes(r) and node(r, "node-2")["health"] != "healthy"
            ),
            "node-2's rules reported not applied",
        )
    finally:
        status_file = lab.workdir / "agents" / "node-2.status.json"
        agents[i] = Proc(
            "portico-node-agent-node-2",
            node_agent_argv(lab, "node-2", "--status", str(status_file)),
            lab.workdir / "logs" / "node-agent-node-2.log",
            netns=lab.netns_of("node-2"),
        ).start()
    n2 = node(report, "node-2")
    assert n2["rules"] == "behind" and not n2["usable"], n2
    assert [n["node"] for n in report["nodes"] if n["usable"]] == ["node-1", "node-3"]
    (finding,) = [f for f in report["findings"] if f["code"] == "RulesNotApplied"]
    assert finding["message"].startswith("node-2: rules not applied") and not finding["blocking"]
    # Others still serve it: reachable, and says so.
    assert report["verdict"] == "REACHABLE, degraded"
    # Back: the restarted agent applies the rules and the warning goes.
    wait_report(lab, "kp-lag", reachable_everywhere, "node-2 applied its rules again")


def test_a_node_cut_off_the_lan(lab: Lab, api: Api, gateway: Proc, services: list[str]) -> None:
    create(api, services, "kp-cut", externalTrafficPolicy="Cluster")
    wait_report(lab, "kp-cut", reachable_everywhere, "kp-cut reachable")
    lab.fail_node("node-2", stop_heartbeat=False)
    try:
        report = wait_report(
            lab,
            "kp-cut",
            lambda rc, r: rc == 0 and "NodeUnreachable" in codes(r) and unreachable_endpoints(r),
            "node-2 reported unreachable, its endpoints out of the others' rules",
        )
    finally:
        lab.restore_node("node-2")
    n2 = node(report, "node-2")
    assert n2["arp"] == "unreachable" and not n2["usable"], n2
    assert GATEWAY in n2["arp_message"]
    assert codes(report) == ["NodeUnreachable"]
    # The operator took node-2's endpoints (and only those) out of the other nodes' rules.
    assert unreachable_endpoints(report) == {"node-2"}
    wait_report(lab, "kp-cut", reachable_everywhere, "node-2 back")


def test_a_gateway_that_stopped(
    lab: Lab, api: Api, gateways: list[Proc], services: list[str]
) -> None:
    create(api, services, "kp-nogw", externalTrafficPolicy="Cluster")
    wait_report(lab, "kp-nogw", reachable_everywhere, "kp-nogw reachable")
    gateways[0].stop()  # a clean stop: it withdraws and marks its GatewayReport stoppedTime
    try:
        rc, report = status(lab, "kp-nogw")
    finally:
        gateways[0] = start_gateway(lab, GATEWAY)
    # The LoadBalancer status still names it; its report says it is gone.
    assert rc == 1 and report["gateway"] == GATEWAY
    assert codes(report, blocking=True) == ["GatewayGone"]
    wait_report(lab, "kp-nogw", reachable_everywhere, "the restarted gateway reports again")

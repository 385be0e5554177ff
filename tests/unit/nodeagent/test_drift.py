"""The agent's check that the rules in force equal a render from scratch of the same Services:
it must see a difference an incremental render could leave, and nothing when there is none."""

from __future__ import annotations

import asyncio
import copy

from portico_common.model import Endpoint, LBService, NodeInfo, ServicePort
from portico_nodeagent.drift import render_drift
from portico_nodeagent.incremental import NodeRenderer, Render
from portico_nodeagent.kubeagent import KubeAgent
from portico_nodeagent.settings import AgentSettings

NODE = NodeInfo("node-1", "zone-a", ("198.18.0.10",))


def svc(name: str, *eps: str, policy: str = "Cluster") -> LBService:
    return LBService(
        "ns",
        name,
        (f"198.18.32.{len(name)}",),
        (ServicePort("http", "TCP", 80, None, 8080),),
        tuple(Endpoint(a, "node-1" if a.endswith(".5") else "node-2") for a in eps),
        policy,
    )


SERVICES = [svc("a", "198.19.1.5", "198.19.2.6"), svc("bb", "198.19.1.5", policy="Local")]


def test_an_incremental_render_has_no_drift() -> None:
    r = NodeRenderer()
    r.render([SERVICES[0]], NODE)
    got = r.render(SERVICES, NODE)  # incremental: from the previous render
    assert got.base is not None
    assert render_drift(got.index, SERVICES, NODE) == []


def test_a_missing_element_is_drift_and_named() -> None:
    index = copy.deepcopy(NodeRenderer().render(SERVICES, NODE).index)
    name = next(n for n, e in index.elements.items() if e)
    index.elements[name] = dict(list(index.elements[name].items())[1:])
    drift = render_drift(index, SERVICES, NODE)
    assert drift and any(name in d for d in drift)


def test_rules_of_a_service_that_is_gone_are_drift() -> None:
    index = NodeRenderer().render(SERVICES, NODE).index
    assert render_drift(index, SERVICES[:1], NODE)


def test_the_agent_rebuilds_from_scratch_on_drift() -> None:
    agent = KubeAgent(AgentSettings(node_name="node-1"))
    good = NodeRenderer().render(SERVICES, NODE)
    agent.applied, agent.applied_node = list(SERVICES), NODE
    agent.table._applied = Render(good.index, good.document)
    before = agent.renderer
    assert asyncio.run(agent.check_render()) is False
    assert agent.renderer is before and not agent.changed.is_set()

    stale = NodeRenderer().render(SERVICES[:1], NODE)  # rules that lost a Service
    agent.table._applied = Render(stale.index, stale.document)
    assert asyncio.run(agent.check_render()) is True
    assert agent.renderer is not before and agent.changed.is_set()
    assert agent.metrics.render_drifts._value.get() == 1

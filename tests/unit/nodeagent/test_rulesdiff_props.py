"""Property tests of endpoint selection, of the render's integrity, and of the differ: a diff
applied (by a strict model of nftables' rules on references) turns one render into the other."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from portico_common.model import Endpoint, EndpointPort, LBService, NodeInfo, ServicePort
from portico_nodeagent import nftnames as N
from portico_nodeagent.render import render_node_rules
from portico_nodeagent.rulesdiff import diff_rules
from portico_nodeagent.rulesindex import RulesIndex, index_rules
from portico_nodeagent.topology import select_endpoints

from ..nftkernel import Kernel

NODES = ["node-1", "node-2", "node-3"]
ZONES = ["zone-a", "zone-b"]


@st.composite
def endpoints(draw: Any, max_size: int = 7, v6: bool = False) -> list[Endpoint]:
    n = draw(st.integers(0, max_size))
    out = []
    for i in range(n):
        node = draw(st.sampled_from([*NODES, None]))
        zone = None if node is None else ZONES[NODES.index(node) % 2]
        ready = draw(st.booleans())
        terminating = draw(st.booleans()) and not ready
        serving = ready or draw(st.booleans())
        fam6 = v6 and draw(st.booleans())
        addr = f"fd00:19:0:1::{i + 2:x}" if fam6 else f"198.19.{1 + i // 200}.{2 + i % 200}"
        out.append(
            Endpoint(
                addr,
                node,
                zone,
                ready,
                serving,
                terminating,
                tuple(sorted(draw(st.sets(st.sampled_from(ZONES))))),
                tuple(sorted(draw(st.sets(st.sampled_from(NODES))))),
                (EndpointPort("p", "TCP", draw(st.sampled_from([8080, 9090]))),),
            )
        )
    return out


nodes = st.builds(NodeInfo, st.sampled_from(NODES), st.sampled_from([*ZONES, None]))


def addrs(eps: Any) -> set[str]:
    return {e.address for e in eps}


@given(endpoints(), nodes)
def test_local_selection(eps: list[Endpoint], node: NodeInfo) -> None:
    sel = select_endpoints(eps, "Local", node)
    local = [e for e in eps if e.node == node.name]
    ready = [e for e in local if e.ready]
    fallback = [e for e in local if e.serving and e.terminating]
    assert addrs(sel.endpoints) == addrs(ready or fallback)
    assert sel.terminating == (not ready and bool(fallback))
    assert sel.has_any == any(e.ready or (e.serving and e.terminating) for e in eps)


@given(endpoints(), nodes)
def test_cluster_selection(eps: list[Endpoint], node: NodeInfo) -> None:
    sel = select_endpoints(eps, "Cluster", node)
    ready = [e for e in eps if e.ready]
    chosen = addrs(sel.endpoints)
    if ready:
        assert chosen and chosen <= addrs(ready)
        assert not sel.terminating
        if sel.topology == "":
            assert chosen == addrs(ready)
        elif sel.topology == "PreferSameNode":
            assert all(e.for_nodes for e in ready)
            assert chosen == {e.address for e in ready if node.name in e.for_nodes}
        else:
            assert all(e.for_zones for e in ready)
            assert chosen == {e.address for e in ready if node.zone in e.for_zones}
        # kube-proxy's rule: hints count only when every ready endpoint has them
        if any(not e.for_zones for e in ready) and any(not e.for_nodes for e in ready):
            assert chosen == addrs(ready)
    else:
        assert chosen == {e.address for e in eps if e.serving and e.terminating}
        assert sel.terminating == bool(chosen)
    assert sel.has_any == bool(chosen)


@given(endpoints(), nodes, st.sampled_from(["Local", "Cluster"]), st.randoms())
def test_selection_ignores_input_order(
    eps: list[Endpoint], node: NodeInfo, policy: str, rnd: random.Random
) -> None:
    shuffled = list(eps)
    rnd.shuffle(shuffled)
    assert select_endpoints(shuffled, policy, node) == select_endpoints(eps, policy, node)


@st.composite
def services(draw: Any) -> list[LBService]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        dual = draw(st.booleans())
        vips = (f"198.18.32.{10 + i}",) + ((f"fd00:18::a:{10 + i:x}",) if dual else ())
        ports = [ServicePort("p", "TCP", 80, 30000 + i, "p")]
        if draw(st.booleans()):
            ports.append(ServicePort("q", draw(st.sampled_from(["UDP", "SCTP"])), 53, None, 53))
        out.append(
            LBService(
                "ns",
                f"s{i}",
                vips,
                tuple(ports),
                tuple(draw(endpoints(max_size=draw(st.sampled_from([4, 4, 4, 19])), v6=dual))),
                draw(st.sampled_from(["Local", "Cluster"])),
                draw(st.sampled_from(["None", "ClientIP"])),
                draw(st.sampled_from([None, 60])),
                tuple(
                    draw(st.sampled_from([(), ("198.18.1.0/24",), ("198.18.1.0/24", "fd00::/8")]))
                ),
                None,
                draw(st.sampled_from(["DSR", "NAT"])),
            )
        )
    return out


def listed(k: Kernel) -> RulesIndex:
    """What the fake kernel holds, as the node agent reads the kernel's listing."""
    return index_rules(k.listing())


@settings(max_examples=150, deadline=None)
@given(services(), services(), nodes)
def test_a_diff_turns_one_render_into_the_other(
    a: list[LBService], b: list[LBService], node: NodeInfo
) -> None:
    ra, rb = render_node_rules(a, node), render_node_rules(b, node)
    k = Kernel()
    k.run(ra)  # a render builds from nothing, in order
    assert listed(k).same_as(index_rules(ra))
    k.run(diff_rules(ra, rb))
    assert listed(k).same_as(index_rules(rb))
    assert diff_rules(rb, rb) == {"nftables": []}


@settings(max_examples=150, deadline=None)
@given(services(), nodes)
def test_render_integrity(svcs: list[LBService], node: NodeInfo) -> None:
    doc = render_node_rules(svcs, node)
    idx = index_rules(doc)
    by_key = {s.key: s for s in svcs}
    for chain, rules in idx.rules.items():
        if chain.startswith((N.SERVICE_CHAIN_PREFIX, N.INTERNAL_SERVICE_CHAIN_PREFIX)):
            # affinity checks, then "numgen random mod N-i == 0 goto ep-i", then "goto ep-last":
            # every endpoint once, each with probability 1/N
            picks = [json.loads(r) for r in rules if "@" not in r]
            n = len(picks)
            for i, expr in enumerate(picks[:-1]):
                assert expr[0]["match"]["left"]["numgen"]["mod"] == n - i
                assert expr[0]["match"]["right"] == 0
            targets = [expr[-1]["goto"]["target"] for expr in picks]
            assert len(set(targets)) == n and all(c in idx.chains for c in targets)
            svc = by_key["/".join(chain.split("-", 2)[2].split("/")[1:3])]
            if svc.external_traffic_policy == "Local" and chain.startswith(
                N.SERVICE_CHAIN_PREFIX
            ):  # the external path: this node's endpoints only
                for target in targets:
                    dnat = next(
                        s["dnat"] for r in idx.rules[target] for s in json.loads(r) if "dnat" in s
                    )
                    assert any(
                        e.address == dnat["addr"] and e.node == node.name for e in svc.endpoints
                    )
        if chain.startswith(N.ENDPOINT_CHAIN_PREFIX):
            # which Service? the readable part is v<fam>/<ns>/<name>/...
            svc = by_key["/".join(chain.split("-", 2)[2].split("/")[1:3])]
            dnat = next(s["dnat"] for r in rules for s in json.loads(r) if "dnat" in s)
            ep = next(e for e in svc.endpoints if e.address == dnat["addr"])
            masq_always = json.loads(rules[0]) == [{"jump": {"target": N.MARK_MASQ}}]
            if svc.external_traffic_policy == "Local":
                # on the external path only local endpoints; the internal path (traffic from
                # this node and its pods) reaches the others too, never masqueraded for it
                assert not masq_always
            else:
                assert masq_always == (ep.node != node.name)


@settings(max_examples=150, deadline=None)
@given(services(), nodes)
def test_flat_endpoint_slots(svcs: list[LBService], node: NodeInfo) -> None:
    """Every VIP entry that goes to ``pick<fam>-N`` has exactly the slots 0..N-1 in both endpoint
    maps, each an endpoint of that Service; what goes to another node is masqueraded (Cluster
    only), what stays is masqueraded only for a pod reaching itself."""
    # The masquerade decision is by address: a pod IP is on one node. (The generator reuses
    # addresses across Services with any node, which a cluster does not.)
    where: dict[str, set[str | None]] = {}
    for s in svcs:
        for e in s.endpoints:
            where.setdefault(e.address, set()).add(e.node)
    assume(all(len(n) == 1 for n in where.values()))
    idx = index_rules(render_node_rules(svcs, node))
    owner: dict[str, LBService] = {}
    for s in sorted(svcs, key=lambda s: (s.namespace, s.name)):
        for v in s.vips:
            owner.setdefault(v, s)
    for fam in (4, 6):
        remote = {json.loads(k) for k in idx.elements[N.REMOTE_ENDPOINTS[fam]]}
        hairpin = {tuple(json.loads(k)["concat"]) for k in idx.elements[N.HAIRPIN[fam]]}
        addrs, ports = idx.elements[N.ENDPOINT_ADDRS[fam]], idx.elements[N.ENDPOINT_PORTS[fam]]
        assert addrs.keys() == ports.keys()
        used = 0
        picks = idx.elements[N.PICKS[fam]]
        for key, count in idx.elements[N.ENDPOINT_COUNTS[fam]].items():
            n = int(count)
            target = json.loads(picks[str(n)])["goto"]["target"]
            assert target == f"{N.PICK_PREFIX}{fam}-{n}" and target in idx.chains
            (rule,) = idx.rules[target]
            assert json.loads(rule)[0]["mangle"]["value"]["numgen"]["mod"] == n
            dispatch = json.loads(key)["concat"]
            assert key not in idx.elements[N.VIPS[fam]]  # one way or the other
            mine = {
                json.loads(k)["concat"][3]: json.loads(a)
                for k, a in addrs.items()
                if json.loads(k)["concat"][:3] == dispatch
                and json.loads(k)["concat"][3] < N.INTERNAL_SLOT_BASE
            }
            assert sorted(mine) == [N.SLOT_BASE + i for i in range(n)]
            used += n
            svc = owner[dispatch[0]]
            assert svc.affinity_timeout is None
            for addr in mine.values():
                e = next(e for e in svc.endpoints if e.address == addr)
                if svc.external_traffic_policy == "Local":
                    assert e.node == node.name and addr not in remote
                else:
                    assert (addr in remote) == (e.node != node.name)
                assert (addr in remote) != ((addr, addr) in hairpin)
        # An externalTrafficPolicy: Local VIP port's path for traffic from inside the cluster:
        # slots from INTERNAL_SLOT_BASE over the Service's endpoints on any node, its own pick
        # chains; only a local endpoint is a hairpin entry.
        ipicks = idx.elements[N.INTERNAL_PICKS[fam]]
        for key, count in idx.elements[N.INTERNAL_COUNTS[fam]].items():
            n = int(count)
            target = json.loads(ipicks[str(n)])["goto"]["target"]
            assert target == f"{N.INTERNAL_PICK_PREFIX}{fam}-{n}" and target in idx.chains
            (rule,) = idx.rules[target]
            numgen = json.loads(rule)[0]["mangle"]["value"]["numgen"]
            assert (numgen["mod"], numgen["offset"]) == (n, N.INTERNAL_SLOT_BASE)
            dispatch = json.loads(key)["concat"]
            svc = owner[dispatch[0]]
            assert svc.external_traffic_policy == "Local" and svc.affinity_timeout is None
            mine = {
                json.loads(k)["concat"][3]: json.loads(a)
                for k, a in addrs.items()
                if json.loads(k)["concat"][:3] == dispatch
                and json.loads(k)["concat"][3] >= N.INTERNAL_SLOT_BASE
            }
            assert sorted(mine) == [N.INTERNAL_SLOT_BASE + i for i in range(n)]
            used += n
            for addr in mine.values():
                e = next(e for e in svc.endpoints if e.address == addr)
                if e.node == node.name:
                    assert (addr, addr) in hairpin
        assert used == len(addrs)  # no slot outside a VIP entry

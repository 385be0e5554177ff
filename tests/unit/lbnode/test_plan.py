"""From Services and health to forwarding entries and status reports (lbnode's plan)."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any

from portico_lbnode.fwdrules import admit_set, render_fwd, vip_chain
from portico_lbnode.maglev import maglev_table
from portico_lbnode.model import service_from_cr
from portico_lbnode.natrules import PRIO_DSTNAT, render_nat
from portico_lbnode.plan import (
    MaglevCache,
    NodeHealth,
    forwarding,
    forwarding_and_nat,
    report,
    vips_to_announce,
)
from portico_nodeagent.nftnames import PRIO_NAT

SIZE = 251


def cr(name: str = "web", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vips": ["198.18.32.5", "fd00:18::a:5"],
        "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}],
        "externalTrafficPolicy": "Cluster",
        "backends": [
            {"node": "node-1", "internalIPs": ["198.18.0.10", "fd00:18::a"], "ready": 1},
            {"node": "node-2", "internalIPs": ["198.18.0.11", "fd00:18::b"], "ready": 1},
            {"node": "node-3", "internalIPs": ["198.18.0.12"], "ready": 1},
        ],
    }
    base.update(spec)
    return {"metadata": {"namespace": "default", "name": name}, "spec": base}


def everyone(node: str, key: str) -> bool:
    return True


def test_every_vip_and_port_gets_its_familys_node_addresses() -> None:
    svc = service_from_cr(cr())
    ports = forwarding([svc], everyone, MaglevCache(SIZE))
    assert sorted((str(p.vip), p.protocol, p.port) for p in ports) == [
        ("198.18.32.5", "TCP", 80),
        ("198.18.32.5", "UDP", 53),
        ("fd00:18::a:5", "TCP", 80),
        ("fd00:18::a:5", "UDP", 53),
    ]
    v4 = next(p for p in ports if p.vip.version == 4)
    v6 = next(p for p in ports if p.vip.version == 6)
    assert len(v4.slots) == len(v6.slots) == SIZE
    assert {str(a) for a in v4.slots} == {"198.18.0.10", "198.18.0.11", "198.18.0.12"}
    # node-3 has no IPv6 address: IPv6 flows go to the other two only.
    assert {str(a) for a in v6.slots} == {"fd00:18::a", "fd00:18::b"}
    # The slots are the Maglev table of the nodes, by address.
    by_name = {"node-1": "198.18.0.10", "node-2": "198.18.0.11", "node-3": "198.18.0.12"}
    table = maglev_table([("node-1", 1), ("node-2", 1), ("node-3", 1)], SIZE)
    assert [str(a) for a in v4.slots] == [by_name[n] for n in table]


def test_local_weights_follow_ready_pods_and_unhealthy_nodes_get_nothing() -> None:
    svc = service_from_cr(
        cr(
            externalTrafficPolicy="Local",
            healthCheckNodePort=32000,
            backends=[
                {"node": "node-1", "internalIPs": ["198.18.0.10"], "ready": 3},
                {"node": "node-2", "internalIPs": ["198.18.0.11"], "ready": 1},
                {"node": "node-3", "internalIPs": ["198.18.0.12"], "ready": 2},
            ],
        )
    )
    ports = forwarding([svc], lambda n, k: n != "node-3", MaglevCache(SIZE))
    share = Counter(str(a) for a in ports[0].slots)
    assert set(share) == {"198.18.0.10", "198.18.0.11"}
    assert 2.5 < share["198.18.0.10"] / share["198.18.0.11"] < 3.5


def test_no_healthy_node_is_fail_closed_and_still_announced() -> None:
    svc = service_from_cr(cr())
    ports = forwarding([svc], lambda n, k: False, MaglevCache(SIZE))
    assert ports and all(p.slots == () for p in ports)
    assert vips_to_announce({svc.key: svc}) == frozenset(svc.vips)


def test_source_ranges_go_to_their_family_and_a_family_without_ranges_admits_none() -> None:
    svc = service_from_cr(cr(sourceRanges=["198.18.1.0/24"]))
    ports = forwarding([svc], everyone, MaglevCache(SIZE))
    v4 = [p for p in ports if p.vip.version == 4]
    v6 = [p for p in ports if p.vip.version == 6]
    assert all(p.source_ranges == (ipaddress.ip_network("198.18.1.0/24"),) for p in v4)
    assert all(p.slots for p in v4)
    assert all(p.slots == () for p in v6), "IPv6 clients are outside every range"
    # The ports carry the Service's ranges whole: the renderer keeps the port's family's (none
    # here), and the VIP stays restricted, so an IPv6 client is not refused on its other
    # ports either (fwdrules: vip-<id> with an empty admit set).
    assert all(p.source_ranges == svc.source_ranges for p in v6)
    rules = render_fwd(ports, ["eth0"], SIZE)
    v6_vip = v6[0].vip
    assert rules.elements[admit_set(v6_vip)] == {}
    assert json.loads(rules.elements["unknown6"][json.dumps(str(v6_vip))]) == {
        "goto": {"target": vip_chain(v6_vip)}
    }


def test_affinity_is_passed_on() -> None:
    svc = service_from_cr(cr(sessionAffinity="ClientIP"))
    assert all(p.affinity for p in forwarding([svc], everyone, MaglevCache(SIZE)))


def test_services_over_the_same_nodes_share_one_table() -> None:
    cache = MaglevCache(SIZE)
    a = forwarding([service_from_cr(cr("a"))], everyone, cache)
    b = forwarding([service_from_cr(cr("b", vips=["198.18.32.6"]))], everyone, cache)
    assert a[0].slots == b[0].slots
    assert len(cache._tables) == 2  # the IPv4 set and the IPv6 set, once each


def test_the_cache_is_bounded() -> None:
    cache = MaglevCache(SIZE, capacity=2)
    for n in range(5):
        cache.table(((f"node-{n}", 1),))
    assert len(cache._tables) == 2


def test_report_names_unprobed_nodes() -> None:
    svc = service_from_cr(cr())
    known = {"node-1": NodeHealth(True, "ok", "2026-12-03T08:00:00Z")}
    r = report(svc, "gw-1", lambda n, k: known.get(n), announced=True)
    assert [(n.node, n.healthy, n.message) for n in r.nodes] == [
        ("node-1", True, "ok"),
        ("node-2", False, "not probed yet"),
        ("node-3", False, "not probed yet"),
    ]
    assert r.announced and r.gateway == "gw-1"


# -- NAT mode ----------------------------------------------------------------------------------
def nat_cr(**spec: Any) -> dict[str, Any]:
    return cr(
        forwardingMode="NAT",
        ports=[{"protocol": "TCP", "port": 80, "nodePort": 30080}, {"protocol": "UDP", "port": 53}],
        **spec,
    )


def test_nat_ports_go_to_the_stack_with_node_ports_as_targets() -> None:
    svc = service_from_cr(nat_cr())
    fwd, nat = forwarding_and_nat([svc], everyone, MaglevCache(SIZE))
    tcp4 = next(p for p in fwd if p.protocol == "TCP" and p.vip.version == 4)
    assert tcp4.to_stack and tcp4.slots == ()
    # A port without a nodePort cannot be NATed to one: dropped (empty slots, not to_stack).
    udp = [p for p in fwd if p.protocol == "UDP"]
    assert udp and all(not p.to_stack and p.slots == () for p in udp)
    n4 = next(n for n in nat if n.vip.version == 4)
    assert len(n4.targets) == SIZE
    assert {(str(a), port) for a, port in n4.targets} == {
        ("198.18.0.10", 30080),
        ("198.18.0.11", 30080),
        ("198.18.0.12", 30080),
    }


def test_nat_slots_of_the_gateways_own_node_are_left_to_its_own_rules() -> None:
    """A gateway on node 198.18.0.10 (hostNetwork): that node's slots are returned un-NATed
    (a DNAT to its own nodePort would reach a port nothing listens on), the others DNATed and
    masqueraded; and the table's DNAT runs before the node agent's, on LAN packets only."""
    svc = service_from_cr(nat_cr())
    _, nat = forwarding_and_nat([svc], everyone, MaglevCache(SIZE))
    own = ipaddress.ip_address("198.18.0.10")
    text = render_nat(nat, SIZE, ["eth0"], frozenset({own}))
    n4 = next(n for n in nat if n.vip.version == 4)
    mine = [i for i, (a, _) in enumerate(n4.targets) if a == own]
    assert 0 < len(mine) < SIZE
    sets = [line for line in text.splitlines() if line.strip().startswith("set natlocal-")]
    assert len(sets) == 1, sets  # the IPv4 slot map's; no IPv6 address of the node is local
    assert sets[0].endswith(f"elements = {{ {', '.join(map(str, mine))} }}; }}")
    chain4 = _chain_of(text, "198.18.32.5 . tcp . 80")
    local_set = sets[0].split()[1]
    assert chain4.index(f"meta mark @{local_set} meta mark set 0 return") < chain4.index(
        "ct mark set"
    )
    assert "return" not in _chain_of(text, "fd00:18::a:5 . tcp . 80")
    assert f"priority {PRIO_DSTNAT};" in text and PRIO_DSTNAT < PRIO_NAT
    assert 'iifname { "eth0" } ip daddr . meta l4proto . th dport vmap @nat4' in text
    # A gateway of its own (no local node): as before, no set, no return.
    alone = render_nat(nat, SIZE, ["eth0"])
    assert "natlocal" not in alone and "return" not in alone


def _chain_of(text: str, dispatch_key: str) -> str:
    """The rules of the chain the NAT dispatch sends ``dispatch_key`` to."""
    name = text.split(f"{dispatch_key} : goto ", 1)[1].split(",", 1)[0].split()[0]
    return text.split(f"chain {name} {{", 1)[1].split("}", 1)[0]


def test_nat_without_a_healthy_node_is_dropped_at_the_netdev_table() -> None:
    svc = service_from_cr(nat_cr())
    fwd, nat = forwarding_and_nat([svc], lambda n, k: False, MaglevCache(SIZE))
    assert nat == [] and all(not p.to_stack and p.slots == () for p in fwd)


def test_nat_table_text() -> None:
    svc = service_from_cr(nat_cr(sessionAffinity="ClientIP"))
    _, nat = forwarding_and_nat([svc], everyone, MaglevCache(SIZE))
    text = render_nat(nat, SIZE, ["eth0"])
    assert "198.18.32.5 . tcp . 80 : goto nat-" in text
    assert "fd00:18::a:5 . tcp . 80 : goto nat-" in text
    assert f"jhash ip saddr mod {SIZE} seed 0x5eed1b05" in text  # affinity: address only
    assert "meta l4proto tcp dnat ip to meta mark map @natslots-" in text
    assert "meta l4proto tcp dnat ip6 to meta mark map @natslots-" in text
    assert "0 : 198.18.0." in text and ". 30080" in text
    assert "ct mark 0x50470001 masquerade" in text
    # Nothing in NAT mode: the table stays, empty, so its hooks are always ours to replace.
    empty = render_nat([], SIZE, ["eth0"])
    assert "goto" not in empty and "masquerade" in empty

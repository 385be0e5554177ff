"""The lab's address plan: pure, so checked without root."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_lab.plan import (
    MAX_CLIENTS,
    MAX_GATEWAYS,
    MAX_NODES,
    MAX_SLOTS,
    AddressPlan,
    node_index,
    zone_of,
)

LAB_V4 = ipaddress.IPv4Network("198.18.0.0/15")
LAB_V6 = ipaddress.IPv6Network("fd00::/8")


def all_addresses(plan: AddressPlan, pods: int = 3) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("host", plan.host.ipv4), ("host6", plan.host.ipv6)]
    for k in range(1, MAX_GATEWAYS + 1):
        out += [(f"gw{k}", plan.gateway(k).ipv4), (f"gw{k}6", plan.gateway(k).ipv6)]
    for c in (1, 2, MAX_CLIENTS):
        out += [(f"c{c}", plan.client(c).ipv4), (f"c{c}6", plan.client(c).ipv6)]
    for i in range(1, MAX_NODES + 1):
        out += [(f"n{i}", plan.node(i).ipv4), (f"n{i}6", plan.node(i).ipv6)]
        out += [(f"n{i}br", plan.node_gateway_v4(i)), (f"n{i}br6", plan.node_gateway_v6(i))]
        for j in range(1, pods + 1):
            pod = plan.pod(i, j)
            out += [(pod.name, pod.ipv4), (pod.name + "6", pod.ipv6)]
    return out


@pytest.mark.parametrize("slot", range(MAX_SLOTS))
def test_every_address_is_in_the_test_ranges_and_unique(slot: int) -> None:
    plan = AddressPlan(slot)
    addrs = all_addresses(plan)
    for name, addr in addrs:
        assert addr in (LAB_V4 if addr.version == 4 else LAB_V6), name  # type: ignore[union-attr]
    values = [a for _, a in addrs]
    assert len(values) == len(set(values))
    for net in (plan.lan_v4, plan.vip_range_v4, plan.service_cidr_v4, plan.pod_cidr_v4(1)):
        assert net.subnet_of(LAB_V4)
    for net6 in (plan.lan_v6, plan.vip_range_v6, plan.service_cidr_v6, plan.pod_cidr_v6(1)):
        assert net6.subnet_of(LAB_V6)


def test_lan_hosts_are_on_link_and_pods_are_not() -> None:
    plan = AddressPlan(0)
    assert plan.node(1).ipv4 in plan.lan_v4
    assert plan.client(1).ipv4 in plan.lan_v4
    assert plan.gateway(1).ipv4 in plan.lan_v4
    # VIPs must be on the LAN so that clients ARP for them (L2 announcement).
    assert plan.vip_range_v4.subnet_of(plan.lan_v4)
    assert plan.vip_range_v6.subnet_of(plan.lan_v6)
    assert plan.pod(1, 1).ipv4 not in plan.lan_v4
    assert plan.pod(2, 1).ipv4 in plan.pod_cidr_v4(2)
    assert plan.pod(2, 1).ipv6 in plan.pod_cidr_v6(2)


def test_vips_do_not_collide_with_hosts() -> None:
    plan = AddressPlan(1)
    for _, addr in all_addresses(plan, pods=1):
        assert addr not in (plan.vip_range_v4 if addr.version == 4 else plan.vip_range_v6)  # type: ignore[union-attr]


@given(st.integers(0, MAX_SLOTS - 1), st.integers(0, MAX_SLOTS - 1))
def test_slots_never_overlap(a: int, b: int) -> None:
    if a == b:
        return
    pa, pb = AddressPlan(a), AddressPlan(b)
    assert not pa.lan_v4.overlaps(pb.lan_v4)
    assert not pa.lan_v6.overlaps(pb.lan_v6)
    assert not pa.pod_cidr_v4(MAX_NODES).overlaps(pb.pod_cidr_v4(1))
    assert not pa.service_cidr_v4.overlaps(pb.service_cidr_v4)
    assert pa.apiserver_port != pb.apiserver_port
    assert {pa.etcd_client_port, pa.etcd_peer_port}.isdisjoint(
        {pb.etcd_client_port, pb.etcd_peer_port}
    )
    assert pa.prefix != pb.prefix


def test_service_range_fits_thousands_of_services() -> None:
    # Later issues allocate for 5,000 LoadBalancer Services; each takes a cluster IP.
    assert AddressPlan(0).service_cidr_v4.num_addresses >= 8192


def test_names_fit_linux_limits() -> None:
    plan = AddressPlan(MAX_SLOTS - 1)
    assert len(plan.host_link) <= 15  # IFNAMSIZ - 1
    assert len(plan.gateway(MAX_GATEWAYS).lan_link) <= 15
    assert len(plan.client(MAX_CLIENTS).lan_link) <= 15
    assert len(plan.pod(MAX_NODES, 250).node_link) <= 15


def test_bad_indices_are_refused() -> None:
    with pytest.raises(ValueError):
        AddressPlan(MAX_SLOTS)
    with pytest.raises(ValueError):
        AddressPlan(0).node(0)
    with pytest.raises(ValueError):
        AddressPlan(0).node(MAX_NODES + 1)
    with pytest.raises(ValueError):
        node_index("gw-1")


def test_zones_round_robin() -> None:
    assert [zone_of(i, 2) for i in range(1, 5)] == ["zone-a", "zone-b", "zone-a", "zone-b"]
    assert zone_of(3, 1) == "zone-a"
    assert node_index("node-12") == 12

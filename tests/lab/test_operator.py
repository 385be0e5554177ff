"""The operator against the real apiserver: allocation, status, the LoadBalancer CR, bad input,
restarts, and two replicas."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab

from .operator_harness import NS, Api, OperatorProcess, in_net, wait_for

POOL = "lab"


@pytest.fixture(scope="module")
def pool(lab: Lab, api: Api) -> Iterator[str]:
    # A /26 of the lab's VIP range for v4 and a small v6 range: sized for every test here.
    v4 = ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address}/26")
    v6 = f"{lab.plan.vip_range_v6.network_address}/120"
    api.create_pool(POOL, [str(v4), v6])
    yield str(v4)
    api.delete_pool(POOL)


@pytest.fixture(scope="module")
def operator(lab: Lab, api: Api, pool: str) -> Iterator[OperatorProcess]:
    op = OperatorProcess(lab, "op-a").start()
    try:
        wait_for(lambda: _leader(api) == "op-a", "op-a leads", timeout=30)
        yield op
    finally:
        op.stop()
        if not op.alive():
            print(op.log_tail())


def _leader(api: Api) -> str | None:
    try:
        return api.coord.read_namespaced_lease(
            "portico-operator", "portico-system"
        ).spec.holder_identity
    except ApiException:
        return None


@pytest.fixture()
def svc_names(api: Api) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for n in names:
        api.delete_service(n)
    for n in names:
        wait_for(lambda n=n: _gone(api, n), f"{n} deleted", timeout=30)


def _absent(read: Callable[[], object]) -> bool:
    try:
        read()
        return False
    except ApiException as e:
        return e.status == 404


def _gone(api: Api, name: str) -> bool:
    return _absent(lambda: api.service(name))


def test_service_gets_an_address_status_and_cr(
    api: Api, operator: OperatorProcess, pool: str, svc_names: list[str]
) -> None:
    svc_names.append("web")
    api.create_service("web", ports=[("TCP", 80), ("UDP", 53)])
    ip = api.wait_ips("web")[0]
    assert in_net(ip, pool)
    svc = api.service("web")
    assert svc.status.load_balancer.ingress[0].ip_mode == "VIP"
    # The finalizer follows the status write (which is on the latency path).
    svc = wait_for(
        lambda: (
            (s := api.service("web"))
            and "portico.dev/load-balancer" in (s.metadata.finalizers or [])
            and s
        ),
        "finalizer",
    )
    # kopf's own bookkeeping does not pile up on users' Services.
    assert not [a for a in (svc.metadata.annotations or {}) if "kopf" in a]
    cond = api.wait_condition("web", "True", "Allocated")
    assert ip in cond["message"] and POOL in cond["message"]

    lb = wait_for(lambda: (o := api.lb("web")) and o.get("status") and o, "LoadBalancer CR")
    spec = lb["spec"]
    assert spec["vips"] == [ip] and spec["pool"] == POOL and spec["forwardingMode"] == "DSR"
    assert spec["portsSummary"] == "80/TCP,53/UDP"
    assert all(p["nodePort"] for p in spec["ports"])
    assert [b["node"] for b in spec["backends"]] == ["node-1", "node-2", "node-3"]
    # The EndpointSlice controller writes the slices a moment after the Service: they follow.
    lb = wait_for(
        lambda: (
            (o := api.lb("web"))
            and all(b["ready"] == 2 and len(b["endpoints"]) == 2 for b in o["spec"]["backends"])
            and o
        ),
        "two ready local endpoints per node in the CR",
    )
    assert {b["zone"] for b in spec["backends"]} == {"zone-a", "zone-b"}
    owner = lb["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Service" and owner["uid"] == svc.metadata.uid
    allocated = next(c for c in lb["status"]["conditions"] if c["type"] == "Allocated")
    assert allocated["status"] == "True"
    assert lb["status"]["observedGeneration"] == lb["metadata"]["generation"]
    wait_for(lambda: any(e.reason == "Allocated" for e in api.events("web")), "Allocated Event")


def test_ports_and_traffic_policy_changes_keep_the_address(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    svc_names.append("chg")
    api.create_service("chg")
    ip = api.wait_ips("chg")[0]
    # A JSON patch: a strategic merge would add the port (ports merge on their number).
    api.core.patch_namespaced_service(
        "chg",
        NS,
        [
            {
                "op": "replace",
                "path": "/spec/ports",
                "value": [{"name": "p0", "protocol": "TCP", "port": 8443, "targetPort": 8080}],
            }
        ],
    )
    wait_for(lambda: api.lb("chg")["spec"]["portsSummary"] == "8443/TCP", "new ports in CR")
    api.core.patch_namespaced_service("chg", NS, {"spec": {"externalTrafficPolicy": "Local"}})
    lb = wait_for(
        lambda: (o := api.lb("chg"))["spec"]["externalTrafficPolicy"] == "Local" and o,
        "Local in CR",
    )
    assert lb["spec"]["healthCheckNodePort"] == api.service("chg").spec.health_check_node_port
    assert api.ingress_ips("chg") == [ip]


def test_type_change_releases_and_comes_back(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    svc_names.append("flip")
    api.create_service("flip")
    api.wait_ips("flip")
    api.core.patch_namespaced_service("flip", NS, {"spec": {"type": "ClusterIP"}})
    wait_for(
        lambda: (
            not api.ingress_ips("flip")
            and "portico.dev/load-balancer" not in (api.service("flip").metadata.finalizers or [])
            and _lb_gone(api, "flip")
        ),
        "released on type change",
    )
    api.core.patch_namespaced_service("flip", NS, {"spec": {"type": "LoadBalancer"}})
    api.wait_ips("flip")
    wait_for(lambda: any(e.reason == "Released" for e in api.events("flip")), "Released Event")


def _lb_gone(api: Api, name: str) -> bool:
    return _absent(lambda: api.lb(name))


def test_delete_waits_for_release_and_frees_the_address(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    api.create_service("gone", annotations={"portico.dev/load-balancer-ips": ""})
    ip = api.wait_ips("gone")[0]
    api.delete_service("gone")
    wait_for(lambda: _gone(api, "gone"), "finalizer removed, Service gone")
    svc_names.append("reuse")
    api.create_service("reuse", annotations={"portico.dev/load-balancer-ips": ip})
    assert api.wait_ips("reuse") == [ip]


def test_exhaustion_then_freeing(
    api: Api, lab: Lab, operator: OperatorProcess, svc_names: list[str]
) -> None:
    base = lab.plan.vip_range_v4.network_address + 256
    api.create_pool("tiny", [f"{base}-{base + 1}"], autoAssign=False)
    try:
        ann = {"portico.dev/address-pool": "tiny"}
        for n in ("t1", "t2", "t3"):
            svc_names.append(n)
            api.create_service(n, annotations=ann)
            if n != "t3":
                api.wait_ips(n)
        cond = api.wait_condition("t3", "False", "PoolExhausted")
        assert "tiny" in cond["message"]
        assert api.ingress_ips("t3") == []
        # The Event is posted after the status write that carries the condition.
        wait_for(
            lambda: any(
                e.reason == "PoolExhausted" and e.type == "Warning" for e in api.events("t3")
            ),
            "a PoolExhausted Warning Event on t3",
        )
        freed = api.ingress_ips("t1")[0]
        api.delete_service("t1")
        assert api.wait_ips("t3") == [freed]
        wait_for(
            lambda: (api.pool("tiny").get("status") or {}).get("ipv4", {}).get("used") == 2,
            "pool status counts 2 used",
        )
        st = api.pool("tiny")["status"]
        assert st["ipv4"]["capacity"] == 2 and st["ipv4"]["free"] == 0
    finally:
        for n in ("t1", "t2", "t3"):
            api.delete_service(n)
        for n in ("t1", "t2", "t3"):
            wait_for(lambda n=n: _gone(api, n), f"{n} gone")
        api.delete_pool("tiny")


@pytest.mark.parametrize(
    ("annotations", "spec", "reason"),
    [
        ({"portico.dev/load-balancer-ips": "203.0.113.9"}, {}, "NotInAnyPool"),
        ({"portico.dev/load-balancer-ips": "not-an-ip"}, {}, "InvalidRequest"),
        ({"portico.dev/load-balancer-ips": "fd00:18::a:7"}, {}, "WrongFamily"),
        ({"portico.dev/address-pool": "no-such-pool"}, {}, "PoolNotFound"),
        ({"portico.dev/forwarding-mode": "magic"}, {}, "InvalidRequest"),
    ],
)
def test_bad_input_gets_a_condition_and_an_event(
    api: Api,
    operator: OperatorProcess,
    svc_names: list[str],
    annotations: dict[str, str],
    spec: dict[str, str],
    reason: str,
) -> None:
    name = f"bad-{reason.lower()}"
    svc_names.append(name)
    api.create_service(name, annotations=annotations, **spec)
    cond = api.wait_condition(name, "False", reason)
    assert cond["message"]
    assert api.ingress_ips(name) == []
    wait_for(lambda: any(e.reason == reason for e in api.events(name)), f"{reason} Event")
    lb = wait_for(lambda: (o := api.lb(name)).get("status") and o, "CR with status")
    allocated = next(c for c in lb["status"]["conditions"] if c["type"] == "Allocated")
    assert allocated["status"] == "False" and allocated["reason"] == reason


def test_nat_mode_without_node_ports_is_explained(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    svc_names.append("nat")
    api.create_service(
        "nat",
        annotations={"portico.dev/forwarding-mode": "nat"},
        allocateLoadBalancerNodePorts=False,
    )
    api.wait_ips("nat")
    assert api.service("nat").status.load_balancer.ingress[0].ip_mode == "Proxy"

    def node_ports() -> dict | None:
        conds = (api.lb("nat").get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "NodePorts"), None)

    cond = wait_for(node_ports, "NodePorts condition")
    assert cond["status"] == "False" and cond["reason"] == "NodePortsMissing"
    assert "allocateLoadBalancerNodePorts" in cond["message"]
    wait_for(lambda: any(e.reason == "NodePortsMissing" for e in api.events("nat")), "Event")
    # Given the nodePorts, the condition turns True.
    api.core.patch_namespaced_service("nat", NS, {"spec": {"allocateLoadBalancerNodePorts": True}})
    api.core.patch_namespaced_service(
        "nat",
        NS,
        [{"op": "replace", "path": "/spec/ports/0/nodePort", "value": 30050}],
    )
    wait_for(lambda: (c := node_ports()) and c["status"] == "True", "NodePorts True")


def test_requested_address_in_use_is_met_once_freed(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    svc_names += ["holder", "wants"]
    api.create_service("holder")
    ip = api.wait_ips("holder")[0]
    api.create_service("wants", annotations={"portico.dev/load-balancer-ips": ip})
    api.wait_condition("wants", "False", "AddressInUse")
    assert api.ingress_ips("holder") == [ip]  # never taken from its owner
    api.delete_service("holder")
    assert api.wait_ips("wants") == [ip]


def test_invalid_and_overlapping_pools_are_reported_and_hand_out_nothing(
    api: Api, lab: Lab, operator: OperatorProcess, svc_names: list[str]
) -> None:
    base = lab.plan.vip_range_v4.network_address + 512
    # Bad syntax never gets this far (the CRD's CEL rules: tests/lab/test_crd_validation.py);
    # an IPv6 range backwards is what only the operator can refuse.
    api.create_pool("broken", ["fd00:18::40:9-fd00:18::40:1"])
    api.create_pool("ov-a", [f"{base}/30"], autoAssign=False)
    api.create_pool("ov-b", [f"{base + 2}-{base + 5}"], autoAssign=False)
    try:

        def cond(pool: str, kind: str) -> dict | None:
            for c in (api.pool(pool).get("status") or {}).get("conditions") or []:
                if c["type"] == kind:
                    return c
            return None

        c = wait_for(
            lambda: (x := cond("broken", "Valid")) and x["status"] == "False" and x,
            "broken pool reported",
        )
        assert "fd00:18::40:9" in c["message"] and "after the last" in c["message"]
        for p in ("ov-a", "ov-b"):
            c = wait_for(
                lambda p=p: (x := cond(p, "Conflicting")) and x["status"] == "True" and x,
                f"{p} conflicting",
            )
        svc_names.append("ov-user")
        api.create_service("ov-user", annotations={"portico.dev/address-pool": "ov-a"})
        api.wait_condition("ov-user", "False", "PoolUnusable")
    finally:
        for p in ("broken", "ov-a", "ov-b"):
            api.delete_pool(p)
    # Once the overlap is gone the request is met.
    api.create_pool("ov-a", [f"{base}/30"], autoAssign=False)
    try:
        ip = api.wait_ips("ov-user")[0]
        assert in_net(ip, f"{base}/30")
    finally:
        api.delete_service("ov-user")
        wait_for(lambda: _gone(api, "ov-user"), "ov-user gone")
        svc_names.remove("ov-user")
        api.delete_pool("ov-a")


def test_sharing(api: Api, operator: OperatorProcess, svc_names: list[str]) -> None:
    key = {"portico.dev/allow-shared-ip": "team-a"}
    svc_names += ["sh-http", "sh-dns", "sh-clash", "sh-local"]
    api.create_service("sh-http", annotations=key, ports=[("TCP", 80)])
    api.create_service("sh-dns", annotations=key, ports=[("UDP", 53), ("TCP", 53)])
    api.create_service("sh-clash", annotations=key, ports=[("TCP", 80)])
    api.create_service(
        "sh-local", annotations=key, ports=[("TCP", 443)], externalTrafficPolicy="Local"
    )
    ip = api.wait_ips("sh-http")[0]
    assert api.wait_ips("sh-dns") == [ip]
    assert api.wait_ips("sh-clash") != [ip]  # same port: not shared
    assert api.wait_ips("sh-local") != [ip]  # other traffic policy: not shared
    api.delete_service("sh-http")
    wait_for(lambda: _gone(api, "sh-http"), "sh-http gone")
    assert api.ingress_ips("sh-dns") == [ip]  # still held by the last sharer


def test_dual_stack(api: Api, operator: OperatorProcess, pool: str, svc_names: list[str]) -> None:
    svc_names += ["ds-req", "ds-single"]
    api.create_service("ds-req", ipFamilyPolicy="RequireDualStack")
    ips = api.wait_ips("ds-req", n=2)
    assert sorted(ipaddress.ip_address(i).version for i in ips) == [4, 6]
    api.create_service("ds-single", ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack")
    (ip6,) = api.wait_ips("ds-single")
    assert ipaddress.ip_address(ip6).version == 6


def test_other_load_balancer_class_is_never_touched(
    api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    svc_names.append("theirs")
    api.create_service("theirs", loadBalancerClass="example.com/other")
    rv = api.service("theirs").metadata.resource_version
    # Give the operator every chance to (wrongly) act: a change that wakes it up, then wait.
    api.create_service("nudge")
    svc_names.append("nudge")
    api.wait_ips("nudge")
    time.sleep(1.0)
    svc = api.service("theirs")
    assert svc.metadata.resource_version == rv
    assert not svc.metadata.finalizers and not (svc.status.load_balancer.ingress or [])
    assert _lb_gone(api, "theirs")


def _wait_pool_settled(api: Api, quiet: float = 2.5, timeout: float = 30) -> None:
    """The pool's status (written at most once a second, also for other tests' releases)
    stays unchanged for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        rv = api.pool(POOL)["metadata"]["resourceVersion"]
        if rv != last:
            last, since = rv, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("the pool's status never settled")


def test_restarts_change_nothing_and_fix_addresses_outside_pools(
    lab: Lab, api: Api, operator: OperatorProcess, pool: str, svc_names: list[str]
) -> None:
    names = [f"keep-{i}" for i in range(5)]
    svc_names += names
    for n in names:
        api.create_service(n)
    ips = {n: api.wait_ips(n)[0] for n in names}
    for n in names:
        wait_for(lambda n=n: api.lb(n).get("status"), f"{n} CR status")
    _wait_pool_settled(api)

    def versions() -> dict[str, str]:
        out = {n: api.service(n).metadata.resource_version for n in names}
        out |= {f"lb/{n}": api.lb(n)["metadata"]["resourceVersion"] for n in names}
        out["pool"] = api.pool(POOL)["metadata"]["resourceVersion"]
        return out

    before = versions()
    pool_before = api.pool(POOL).get("status")
    for i in range(5):
        operator.stop()
        operator.start()
        wait_for(
            lambda: _leader(api) == "op-a" and "first full listing" in operator.log.read_text(),
            f"restart {i} leads",
            timeout=30,
        )
        time.sleep(1.5)
        pool_after = api.pool(POOL).get("status")
        assert versions() == before, (
            f"restart {i} wrote something: pool {pool_before} -> {pool_after}"
        )
    assert {n: api.ingress_ips(n)[0] for n in names} == ips

    # An address outside every pool (here written by hand) is replaced after a restart.
    operator.stop()
    api.core.patch_namespaced_service_status(
        "keep-0", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.50"}]}}}
    )
    operator.start()
    new = wait_for(
        lambda: (i := api.ingress_ips("keep-0")) and i != ["203.0.113.50"] and i,
        "keep-0 re-allocated",
    )
    assert in_net(new[0], pool)
    assert new[0] not in [ips[n] for n in names[1:]]


def test_two_replicas_200_services_concurrently(
    lab: Lab, api: Api, operator: OperatorProcess, svc_names: list[str]
) -> None:
    big = str(ipaddress.ip_network(f"{lab.plan.vip_range_v4.network_address + 1024}/24"))
    api.create_pool("ha", [big], priority=0)
    second = OperatorProcess(lab, "op-b").start()
    names = [f"ha-{i:03d}" for i in range(200)]
    try:
        time.sleep(1)
        with ThreadPoolExecutor(max_workers=16) as pool_exec:
            list(pool_exec.map(lambda n: api.create_service(n), names[:100]))
            # Kill the leader half-way: the standby takes over and must not reuse anything.
            leader = operator if _leader(api) == "op-a" else second
            leader.stop(kill=True)
            list(pool_exec.map(lambda n: api.create_service(n), names[100:]))
        deadline = time.monotonic() + 60
        got: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            got = {
                s.metadata.name: [i.ip for i in (s.status.load_balancer.ingress or [])]
                for s in api.core.list_namespaced_service(NS).items
                if s.metadata.name.startswith("ha-")
            }
            if len(got) == 200 and all(got.values()):
                break
            time.sleep(0.2)
        assert len(got) == 200 and all(got.values()), [n for n, v in got.items() if not v][:5]
        flat = [ip for v in got.values() for ip in v]
        assert len(flat) == len(set(flat)) == 200, "an address was given twice"
        assert all(in_net(ip, big) for ip in flat)
    finally:
        for n in names:
            api.delete_service(n)
        if not operator.alive():
            operator.start()
        second.stop()
        wait_for(
            lambda: (
                not [
                    s
                    for s in api.core.list_namespaced_service(NS).items
                    if s.metadata.name.startswith("ha-")
                ]
            ),
            "ha services gone",
            60,
        )
        api.delete_pool("ha")

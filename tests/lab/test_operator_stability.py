"""A Service's address never changes behind the user's back (issue 8): restarts, failovers, a
frozen leader, a watch gap, bad input on a served Service, and requests that become possible.

Every test runs real portico-operator processes against the lab's apiserver, with its own VIPPool
(disjoint from every other test's, all within the lab's VIP range) and its own Services, labelled
``portico-test=<prefix>`` so they can be listed every few milliseconds. The cluster each test
builds has holes, requested, shared, dual-stack and pending addresses, so that allocating from
scratch gives a different answer than the one the cluster holds: a restore that does not work
shows as a changed address, not as a lucky coincidence.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab

from .operator_harness import (
    NS,
    TEST_LABEL,
    Api,
    OperatorProcess,
    lease_holder,
    operator_has_flag,
    restart_apiserver,
    wait_for,
)

POOL_ANN = "portico.dev/address-pool"
IPS_ANN = "portico.dev/load-balancer-ips"
SHARE_ANN = "portico.dev/allow-shared-ip"
MODE_ANN = "portico.dev/forwarding-mode"
ALLOCATED = "portico.dev/Allocated"
VALID = "portico.dev/Valid"

# The operator writes the VIPPool status at most once a second; a replica that has just started
# leading and has indexed its listing has queued every reconcile it will ever do for an
# unchanged cluster. Waiting this long after that is how "it wrote nothing" is shown (absence
# cannot be waited for).
SETTLE = 1.5


# =============================================================================================
# fixtures and helpers
# =============================================================================================
def _v4(lab: Lab, offset: int, prefix: int) -> str:
    """A block of the lab's VIP range. The other lab tests use offsets 0-63 (pool 'lab'),
    256-257, 512-517 and 1024-1279; these tests use 3072-3327 (198.18.44.0/24 in slot 0)."""
    return f"{lab.plan.vip_range_v4.network_address + 3072 + offset}/{prefix}"


def _v6(lab: Lab, offset: int, prefix: int) -> str:
    """A block of the lab's IPv6 VIP range above the 'lab' pool's first /120."""
    return f"{lab.plan.vip_range_v6.network_address + 0x1000 + offset}/{prefix}"


def _hosts(cidr: str) -> list[str]:
    return [str(a) for a in ipaddress.ip_network(cidr)]


class Scene:
    """One test's pool, Services and operators, and their cleanup."""

    def __init__(self, lab: Lab, api: Api, prefix: str, pool: str) -> None:
        self.lab = lab
        self.api = api
        self.prefix = prefix
        self.pool = pool
        self.ops: list[OperatorProcess] = []

    def operator(self, identity: str, *extra: str) -> OperatorProcess:
        op = OperatorProcess(self.lab, identity, *extra, metrics=True)
        self.ops.append(op)
        return op

    def create(
        self,
        name: str,
        *,
        annotations: dict[str, str] | None = None,
        ports: list[tuple[str, int]] | None = None,
        **spec: Any,
    ) -> str:
        full = f"{self.prefix}-{name}"
        self.api.create_service(
            full,
            annotations={POOL_ANN: self.pool, **(annotations or {})},
            labels={TEST_LABEL: self.prefix},
            ports=ports,
            **spec,
        )
        return full

    def delete(self, name: str) -> None:
        self.api.delete_service(name)

    def wait_gone(self, *names: str, timeout: float = 20) -> None:
        wait_for(
            lambda: not {s["metadata"]["name"] for s in self.raw()} & set(names),
            f"{', '.join(names)} deleted",
            timeout,
        )

    def raw(self) -> list[dict[str, Any]]:
        return self.api.raw_services(self.prefix)

    def live(self) -> dict[str, tuple[str, ...]]:
        """Live (not terminating) Services -> their ingress addresses."""
        return {s["metadata"]["name"]: _ips(s) for s in self.raw() if _live(s)}

    def ips(self, name: str) -> tuple[str, ...]:
        return tuple(self.api.ingress_ips(name))

    def wait_ips(self, name: str, n: int = 1, timeout: float = 20) -> tuple[str, ...]:
        return tuple(self.api.wait_ips(name, n=n, timeout=timeout))

    def cleanup(self) -> None:
        """Deletes the test's Services (an operator must lead for the finalizers), stops the
        operators, deletes the pool. Never raises for a Service that will not go: it strips
        the finalizer so that later tests start clean, and says so."""
        for op in self.ops:
            op.resume()
        try:
            if not any(op.alive() for op in self.ops) and self.ops:
                self.ops[0].start()
            for s in self.raw():
                self.api.delete_service(s["metadata"]["name"])
            try:
                wait_for(lambda: not self.raw(), f"{self.prefix} Services deleted", 30)
            except AssertionError:
                left = [s["metadata"]["name"] for s in self.raw()]
                print(f"cleanup: {left} stuck; removing their finalizers")
                for n in left:
                    with suppress(ApiException):
                        self.api.core.patch_namespaced_service(
                            n, NS, {"metadata": {"finalizers": None}}
                        )
        finally:
            for op in self.ops:
                alive_before = op.alive()
                op.stop()
                if (
                    not alive_before
                    and op.proc is not None
                    and op.proc.returncode
                    not in (
                        None,
                        0,
                        -9,
                        -15,
                    )
                ):
                    print(f"{op.identity} exited {op.proc.returncode}:\n{op.log_tail()}")
            self.api.delete_pool(self.pool)


@contextmanager
def scene(lab: Lab, api: Api, prefix: str, addresses: list[str]) -> Iterator[Scene]:
    pool = f"stab-{prefix}"
    api.delete_pool(pool)
    api.create_pool(pool, addresses, autoAssign=False)
    sc = Scene(lab, api, prefix, pool)
    try:
        yield sc
    finally:
        sc.cleanup()


def _ips(svc: dict[str, Any]) -> tuple[str, ...]:
    ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return tuple(i["ip"] for i in ing if i.get("ip"))


def _live(svc: dict[str, Any]) -> bool:
    return not svc["metadata"].get("deletionTimestamp")


def _sharing_key(svc: dict[str, Any]) -> str | None:
    return (svc["metadata"].get("annotations") or {}).get(SHARE_ANN) or None


def duplicates(services: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Addresses listed by more than one live Service, except Services that all share it under
    one sharing key."""
    holders: dict[str, list[dict[str, Any]]] = {}
    for s in services:
        if _live(s):
            for ip in _ips(s):
                holders.setdefault(ip, []).append(s)
    out = {}
    for ip, ss in holders.items():
        keys = {_sharing_key(s) for s in ss}
        if len(ss) > 1 and (len(keys) > 1 or None in keys):
            out[ip] = sorted(s["metadata"]["name"] for s in ss)
    return out


def versions(sc: Scene) -> dict[str, str]:
    """resourceVersion of every Service of the scene, its LoadBalancer CRs and its pool."""
    out = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in sc.raw()}
    for o in sc.api.raw_lbs(sc.prefix + "-"):
        out[f"lb/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    out[f"pool/{sc.pool}"] = sc.api.pool(sc.pool)["metadata"]["resourceVersion"]
    return out


def wait_quiet(sc: Scene, quiet: float = SETTLE, timeout: float = 30) -> dict[str, str]:
    """Waits until no resourceVersion of the scene has changed for ``quiet`` seconds (the
    finalizers, CRs and pool status that follow an allocation are written); returns them."""
    deadline = time.monotonic() + timeout
    last = versions(sc)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = versions(sc)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"{sc.prefix}: still writing after {timeout}s")


def wait_published(sc: Scene, names: list[str]) -> None:
    """Every named Service has its finalizer and a LoadBalancer CR with a status."""

    def done() -> bool:
        svcs = {s["metadata"]["name"]: s for s in sc.raw()}
        lbs = {o["metadata"]["name"]: o for o in sc.api.raw_lbs(sc.prefix + "-")}
        return all(
            n in svcs
            and "portico.dev/load-balancer" in (svcs[n]["metadata"].get("finalizers") or [])
            and (lbs.get(n) or {}).get("status")
            for n in names
        )

    wait_for(done, f"{sc.prefix}: finalizers and LoadBalancer CRs", 30)


def changed(before: dict[str, tuple[str, ...]], now: dict[str, tuple[str, ...]]) -> list[str]:
    return [
        f"{n}: {list(v)} -> {list(now[n]) if n in now else 'gone'}"
        for n, v in before.items()
        if now.get(n) != v
    ]


def lb_mismatches(sc: Scene) -> list[str]:
    """Live Services whose LoadBalancer CR names other addresses than their status."""
    lbs = {o["metadata"]["name"]: o for o in sc.api.raw_lbs(sc.prefix + "-")}
    out = []
    for s in sc.raw():
        name = s["metadata"]["name"]
        if _live(s) and name in lbs:
            vips = tuple((lbs[name].get("spec") or {}).get("vips") or ())
            if sorted(vips) != sorted(_ips(s)):
                out.append(f"{name}: status {list(_ips(s))}, CR {list(vips)}")
    return out


def _objects(sc: Scene) -> dict[str, dict[str, Any]]:
    """The scene's Services and LoadBalancer CRs, keyed as in ``versions``."""
    out = {s["metadata"]["name"]: s for s in sc.raw()}
    out |= {f"lb/{o['metadata']['name']}": o for o in sc.api.raw_lbs(sc.prefix + "-")}
    return out


def _what_changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The fields (two levels deep) that differ between two versions of an object."""
    out = {}
    for part in ("metadata", "spec", "status"):
        a, b = old.get(part) or {}, new.get(part) or {}
        for k in sorted(set(a) | set(b)):
            if k not in ("resourceVersion", "managedFields") and a.get(k) != b.get(k):
                out[f"{part}.{k}"] = (a.get(k), b.get(k))
    return out


def restart(op: OperatorProcess, api: Api, *, kill: bool = False) -> None:
    op.stop(kill=kill)
    op.start()
    op.wait_leading(api)


# =============================================================================================
# 1. restarts
# =============================================================================================
def build_holey_cluster(sc: Scene, v4: list[str], v6: list[str]) -> list[str]:
    """Ten Services one after the other, then the even ones deleted (holes at the low end); a
    dual-stack one, a shared pair, two requested addresses and a pending Service. Returns the
    names of the survivors. A from-scratch allocation in any order packs the low end and so
    differs from what the cluster holds."""
    names = []
    for i in range(10):
        names.append(sc.create(f"s{i}"))
        sc.wait_ips(names[-1])
    tmp6 = sc.create("tmp6", ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack")
    sc.wait_ips(tmp6)
    ds = sc.create("ds", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
    sc.wait_ips(ds, n=2)
    sh_a = sc.create("sh-a", annotations={SHARE_ANN: "k"}, ports=[("TCP", 80)])
    shared = sc.wait_ips(sh_a)
    sh_b = sc.create("sh-b", annotations={SHARE_ANN: "k"}, ports=[("TCP", 443)])
    assert sc.wait_ips(sh_b) == shared
    req_spec = sc.create("req-spec", loadBalancerIP=v4[20])
    assert sc.wait_ips(req_spec) == (v4[20],)
    req_ann = sc.create(
        "req-ann",
        annotations={IPS_ANN: f"{v4[21]},{v6[9]}"},
        ipFamilies=["IPv4", "IPv6"],
        ipFamilyPolicy="RequireDualStack",
    )
    assert sorted(sc.wait_ips(req_ann, n=2)) == sorted([v4[21], v6[9]])
    s1_ip = sc.ips(names[1])[0]
    pend = sc.create("pend", annotations={IPS_ANN: s1_ip})
    sc.api.wait_condition(pend, "False", "AddressInUse")
    for n in [*names[0::2], tmp6]:
        sc.delete(n)
    sc.wait_gone(*names[0::2], tmp6)
    survivors = [*names[1::2], ds, sh_a, sh_b, req_spec, req_ann]
    wait_published(sc, [*survivors, pend])
    return [*survivors, pend]


def test_ten_restarts_over_a_cluster_with_holes_change_nothing(lab: Lab, api: Api) -> None:
    v4, v6 = _v4(lab, 0, 27), _v6(lab, 0, 124)
    with scene(lab, api, "rs", [v4, v6]) as sc:
        op = sc.operator("op-a").start()
        op.wait_leading(api)
        names = build_holey_cluster(sc, _hosts(v4), _hosts(v6))
        addrs = sc.live()
        assert addrs[f"{sc.prefix}-pend"] == ()
        # The holes are there: the survivors are not the lowest addresses.
        assert not {_hosts(v4)[0], _hosts(v4)[2]} & {ip for v in addrs.values() for ip in v}
        before = wait_quiet(sc)
        for i in range(10):
            restart(op, api, kill=i % 3 == 2)
            time.sleep(SETTLE)
            now = sc.live()
            assert not changed(addrs, now), (
                f"restart {i + 1} moved addresses: {changed(addrs, now)}"
            )
            after = versions(sc)
            diff = {k: (before[k], after.get(k)) for k in before if after.get(k) != before[k]}
            assert not diff, f"restart {i + 1} wrote {diff}"
        assert set(names) <= set(sc.live())


# =============================================================================================
# 2. failovers
# =============================================================================================
def test_ten_failovers_with_reused_addresses_change_nothing(lab: Lab, api: Api) -> None:
    v4 = _v4(lab, 32, 27)
    with scene(lab, api, "fo", [v4]) as sc:
        ops = {"op-a": sc.operator("op-a"), "op-b": sc.operator("op-b")}
        ops["op-a"].start().wait_leading(api)
        ops["op-b"].start().wait_synced()
        order: list[str] = []  # live churnable Services, oldest first
        for i in range(6):
            order.append(sc.create(f"init{i}"))
            sc.wait_ips(order[-1])
        req = sc.create("req", annotations={IPS_ANN: _hosts(v4)[30]})
        sc.wait_ips(req)
        for n in (order[0], order[2]):
            sc.delete(n)
        sc.wait_gone(order[0], order[2])
        del order[2], order[0]
        reused = 0
        for rnd in range(10):
            # Churn while this leader leads: two go, two come and take the freed addresses.
            freed = sorted({ip for n in order[:2] for ip in sc.ips(n)}, key=ipaddress.ip_address)
            for n in order[:2]:
                sc.delete(n)
            sc.wait_gone(*order[:2])
            del order[:2]
            # One asks for a freed address (reuse whatever the allocation policy), one does not.
            order.append(sc.create(f"r{rnd}-0", annotations={IPS_ANN: min(freed)}))
            assert sc.wait_ips(order[-1]) == (min(freed),)
            order.append(sc.create(f"r{rnd}-1"))
            reused += bool(set(sc.wait_ips(order[-1])) & set(freed))
            expected = sc.live()
            assert not duplicates(sc.raw()), duplicates(sc.raw())

            leader = lease_holder(api)
            assert leader in ops, leader
            other = "op-b" if leader == "op-a" else "op-a"
            ops[leader].stop(kill=True)
            wait_for(lambda o=other: lease_holder(api) == o, f"{other} takes over", 20)
            ops[leader].start()  # back as a standby, while the new leader settles
            probe = sc.create(f"p{rnd}")
            sc.wait_ips(probe)
            ops[other].wait_leading(api)
            time.sleep(1.0)  # the takeover's reconciles of every Service have run by now
            now = sc.live()
            moved = changed(expected, now)
            assert not moved, f"failover {rnd + 1} ({leader} -> {other}) moved {moved}"
            dup = duplicates(sc.raw())
            assert not dup, f"failover {rnd + 1}: an address held twice: {dup}"
            ops[leader].wait_synced()
        print(f"{reused} of 10 Services allocated without a request got a freed address")


# =============================================================================================
# 3. bad input on a served Service
# =============================================================================================
def test_a_typo_on_a_served_service_keeps_its_address(lab: Lab, api: Api) -> None:
    v4 = _v4(lab, 64, 31)  # two addresses: a freed one is the only one left to give
    with scene(lab, api, "bi", [v4]) as sc:
        sc.operator("op-a").start().wait_leading(api)
        svc = sc.create("served")
        (ip,) = sc.wait_ips(svc)
        wait_published(sc, [svc])
        sc.api.core.patch_namespaced_service(
            svc, NS, {"metadata": {"annotations": {MODE_ANN: "dsrr"}}}
        )

        def warned() -> list[Any]:
            return [
                e for e in api.events(svc) if e.type == "Warning" and "dsrr" in (e.message or "")
            ]

        events = wait_for(warned, "a Warning Event that names the bad value", 30)
        assert sc.ips(svc) == (ip,), f"the typo stripped the address: {sc.ips(svc)}"
        # The address is not free: the lowest free address goes to someone else.
        other = sc.create("other")
        (other_ip,) = sc.wait_ips(other)
        assert other_ip != ip, "the typo's address was given to another Service"
        assert sc.ips(svc) == (ip,)

        valid = wait_for(
            lambda: (c := api.service_condition(svc, VALID)) and c["status"] == "False" and c,
            f"{VALID}=False",
            30,
        )
        assert valid["reason"] == "InvalidRequest" and "dsrr" in valid["message"], valid
        allocated = api.service_condition(svc, ALLOCATED)
        assert allocated and allocated["status"] == "True", allocated
        lb = api.lb(svc)
        assert lb["spec"]["vips"] == [ip] and lb["spec"]["forwardingMode"] == "DSR"
        conds = {c["type"]: c for c in (lb.get("status") or {}).get("conditions") or []}
        assert conds.get("Valid", {}).get("status") == "False", conds
        assert conds.get("Allocated", {}).get("status") == "True", conds
        assert events[0].reason

        sc.api.core.patch_namespaced_service(
            svc, NS, {"metadata": {"annotations": {MODE_ANN: "dsr"}}}
        )
        wait_for(
            lambda: (c := api.service_condition(svc, VALID)) and c["status"] == "True",
            f"{VALID}=True once fixed",
            30,
        )
        assert sc.ips(svc) == (ip,)


# =============================================================================================
# 4. RequireDualStack with one requested address
# =============================================================================================
def test_require_dual_stack_with_one_requested_ipv4_gets_both(lab: Lab, api: Api) -> None:
    v4, v6 = _v4(lab, 80, 28), _v6(lab, 0x10, 124)
    with scene(lab, api, "dsq", [v4, v6]) as sc:
        sc.operator("op-a").start().wait_leading(api)
        want = _hosts(v4)[5]
        svc = sc.create(
            "req",
            annotations={IPS_ANN: want},
            ipFamilies=["IPv4", "IPv6"],
            ipFamilyPolicy="RequireDualStack",
        )
        cond = wait_for(lambda: api.condition(svc), f"{ALLOCATED} condition", 30)
        time.sleep(0.3)  # a second family could be written in a second step
        ips = sc.ips(svc)
        cond = api.condition(svc)
        assert len(ips) == 2, f"RequireDualStack got {list(ips)} with {ALLOCATED} {cond}"
        v4s = [i for i in ips if ipaddress.ip_address(i).version == 4]
        v6s = [i for i in ips if ipaddress.ip_address(i).version == 6]
        assert v4s == [want] and len(v6s) == 1, ips
        assert ipaddress.ip_address(v6s[0]) in ipaddress.ip_network(v6)
        assert cond and cond["status"] == "True", cond


# =============================================================================================
# 5. restarts in the middle of churn
# =============================================================================================
def test_restarts_during_churn_keep_survivors_and_never_give_an_address_twice(
    lab: Lab, api: Api
) -> None:
    v4, v6 = _v4(lab, 128, 26), _v6(lab, 0x20, 124)
    with scene(lab, api, "ch", [v4, v6]) as sc:
        op = sc.operator("op-a").start()
        op.wait_leading(api)
        # Survivors with holes below them, one dual-stack; named to come first in a listing.
        stable = []
        for i in range(12):
            stable.append(sc.create(f"a{i:02d}"))
            sc.wait_ips(stable[-1])
        tmp6 = sc.create("a-tmp6", ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack")
        sc.wait_ips(tmp6)
        ds = sc.create("a-ds", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
        sc.wait_ips(ds, n=2)
        for n in [*stable[0::2], tmp6]:
            sc.delete(n)
        sc.wait_gone(*stable[0::2], tmp6)
        survivors = {n: sc.ips(n) for n in [ds, *stable[1::2]]}

        stop = threading.Event()
        errors: list[str] = []
        violations: list[str] = []
        polls = [0]
        first: dict[str, tuple[str, ...]] = dict(survivors)

        def churn() -> None:
            made: list[str] = []
            n = 0
            while not stop.is_set():
                try:
                    made.append(sc.create(f"c{n}"))
                    n += 1
                    if len(made) > 4:
                        sc.delete(made.pop(0))
                except ApiException as e:
                    errors.append(f"churn: {e.status} {e.reason}")
                stop.wait(0.06)

        def poll() -> None:
            while not stop.is_set():
                try:
                    svcs = sc.raw()
                except ApiException as e:
                    errors.append(f"poll: {e.status}")
                    continue
                polls[0] += 1
                dup = duplicates(svcs)
                if dup:
                    violations.append(f"{time.monotonic():.3f} given twice: {dup}")
                # Once a Service has an address it keeps it for as long as it lives: the
                # survivors, and every churn Service that lives across a restart.
                for s in svcs:
                    name, ips = s["metadata"]["name"], _ips(s)
                    if not _live(s):
                        continue
                    if name in first and first[name] != ips:
                        violations.append(f"{time.monotonic():.3f} {name}: {first[name]} -> {ips}")
                        first[name] = ips
                    elif ips:
                        first.setdefault(name, ips)
                time.sleep(0.02)

        threads = [threading.Thread(target=churn), threading.Thread(target=poll)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            for i in range(6):
                restart(op, api, kill=i % 2 == 1)
                time.sleep(1.0)  # churn under the new process before the next restart
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not violations, f"{len(violations)} bad polls of {polls[0]}: {violations[:5]}"
        assert polls[0] > 100, f"only {polls[0]} polls"
        assert not errors, errors[:5]
        wait_for(lambda: all(v for v in sc.live().values()), "every live churn Service served", 20)
        assert not changed(survivors, sc.live())
        assert not duplicates(sc.raw()), duplicates(sc.raw())


# =============================================================================================
# 6. a sharer refused for a port clash
# =============================================================================================
def test_sharer_refused_for_a_port_clash_is_met_when_the_clash_goes(lab: Lab, api: Api) -> None:
    v4 = _v4(lab, 96, 29)
    with scene(lab, api, "shc", [v4]) as sc:
        sc.operator("op-a").start().wait_leading(api)
        key = {SHARE_ANN: "k"}
        a = sc.create("a", annotations=key, ports=[("TCP", 80)])
        (ip,) = sc.wait_ips(a)
        c = sc.create("c", annotations=key, ports=[("TCP", 443)])
        assert sc.wait_ips(c) == (ip,)
        b = sc.create("b", annotations={**key, IPS_ANN: ip}, ports=[("TCP", 80)])
        cond = api.wait_condition(b, "False", "SharingConflict", timeout=30)
        assert a in cond["message"], cond
        sc.delete(a)
        sc.wait_gone(a)
        try:
            wait_for(lambda: sc.ips(b) == (ip,), f"{b} gets {ip} once {a} is gone", 30)
        except AssertionError as e:
            raise AssertionError(f"{e}; {b} has {sc.ips(b)}, {api.condition(b)}") from None
        cond = api.condition(b)
        assert cond and cond["status"] == "True" and a not in cond["message"], cond
        assert sc.ips(c) == (ip,)


# =============================================================================================
# 7. SIGTERM hands the Lease over
# =============================================================================================
def test_sigterm_hands_the_lease_over_at_once(lab: Lab, api: Api) -> None:
    v4 = _v4(lab, 104, 29)
    with scene(lab, api, "st", [v4]) as sc:
        ops = {"op-a": sc.operator("op-a"), "op-b": sc.operator("op-b")}
        ops["op-a"].start().wait_leading(api)
        ops["op-b"].start().wait_synced()
        figures = []
        for trial in range(3):
            leader = lease_holder(api)
            assert leader in ops
            other = "op-b" if leader == "op-a" else "op-a"
            ops[other].wait_synced()
            proc = ops[leader].proc
            assert proc is not None
            t0 = time.monotonic()
            proc.terminate()
            while lease_holder(api) != other and time.monotonic() - t0 < 20:
                time.sleep(0.01)
            dt = time.monotonic() - t0
            figures.append(dt)
            # The new leader allocates (not only holds the Lease).
            sc.wait_ips(sc.create(f"t{trial}"), timeout=30)
            ops[leader].stop()
            ops[leader].start()
        print(f"SIGTERM -> standby holds the Lease: {', '.join(f'{f:.3f}s' for f in figures)}")
        # Goal 1 s; without the hand-over the standby waits out the 4 s lease. 3 s: slack for a
        # loaded machine (the figure is printed; bench/operator_failover.py measures it).
        assert max(figures) < 3.0, f"Lease handed over after {figures} s (goal 1 s)"


# =============================================================================================
# 8. a leader frozen past its lease
# =============================================================================================
def test_leader_frozen_past_its_lease_steps_down_and_writes_nothing(lab: Lab, api: Api) -> None:
    v4 = _v4(lab, 112, 28)
    with scene(lab, api, "fz", [v4]) as sc:
        a, b = sc.operator("op-a"), sc.operator("op-b")
        a.start().wait_leading(api)
        b.start().wait_synced()
        base = []
        for i in range(6):
            base.append(sc.create(f"s{i}"))
            sc.wait_ips(base[-1])
        for n in base[0:4:2]:
            sc.delete(n)
        sc.wait_gone(*base[0:4:2])
        # Freeze the leader with work in flight: Services it has been told of but not served.
        burst = [sc.create(f"burst{i}") for i in range(6)]
        time.sleep(0.05)
        a.pause()
        t_frozen = time.monotonic()
        wait_for(lambda: lease_holder(api) == "op-b", "op-b takes over", 20)
        b.wait_leading(api)
        # While op-a is frozen: the new leader serves the burst, frees addresses and gives
        # them again.
        for n in burst:
            sc.wait_ips(n)
        for n in (base[1], base[3]):
            sc.delete(n)
        sc.wait_gone(base[1], base[3])
        late = [sc.create(f"late{i}") for i in range(3)]
        for n in late:
            sc.wait_ips(n)
        wait_published(sc, [*burst, *late])
        expected = sc.live()
        assert not duplicates(sc.raw())
        before = wait_quiet(sc)
        assert time.monotonic() - t_frozen > 4, "frozen for less than the lease"

        objs_before = _objects(sc)
        a.resume()
        t_resumed = time.monotonic()
        bad: list[str] = []
        while time.monotonic() - t_resumed < 3.0:
            svcs = sc.raw()
            now = {s["metadata"]["name"]: _ips(s) for s in svcs if _live(s)}
            if moved := changed(expected, now):
                bad.append(f"+{time.monotonic() - t_resumed:.2f}s moved {moved}")
            if dup := duplicates(svcs):
                bad.append(f"+{time.monotonic() - t_resumed:.2f}s given twice {dup}")
            if lease_holder(api) != "op-b":
                bad.append(f"+{time.monotonic() - t_resumed:.2f}s Lease {lease_holder(api)}")
            time.sleep(0.02)
        assert not bad, bad[:5]
        assert not lb_mismatches(sc), lb_mismatches(sc)
        assert a.alive() and not a.leading(), "op-a still says it leads"
        after = versions(sc)
        diff = {k: (before[k], after.get(k)) for k in before if after.get(k) != before[k]}
        if diff:
            objs_after = _objects(sc)
            what = {k: _what_changed(objs_before.get(k, {}), objs_after.get(k, {})) for k in diff}
            raise AssertionError(f"written after op-a resumed: {what}")
        assert lease_holder(api) == "op-b"
        # And the cluster still works, under op-b.
        sc.wait_ips(sc.create("after"))
        assert not duplicates(sc.raw())


# =============================================================================================
# 9. a watch gap
# =============================================================================================
def test_watch_gap_deleted_addresses_are_freed_and_nothing_is_given_twice(
    lab: Lab, api: Api
) -> None:
    """A standby misses deletions and creations: frozen while kube-apiserver restarts (its watch
    connections die and the new apiserver's watch cache does not reach back to the standby's
    resourceVersion: the resumed watch gets 410 Gone and kopf relists, emitting no deletions),
    and still frozen during the churn that follows. A plain SIGSTOP is not enough: the watch
    cache replays the last 75 s of events to a resumed watch, so nothing is missed."""
    v4 = _v4(lab, 192, 28)
    hosts = _hosts(v4)
    resync = ("--resync-seconds", "5") if operator_has_flag("--resync-seconds") else ()
    with scene(lab, api, "wg", [v4]) as sc:
        a, b = sc.operator("op-a", *resync), sc.operator("op-b", *resync)
        a.start().wait_leading(api)
        b.start().wait_synced()
        old = []
        for i in range(8):
            old.append(sc.create(f"o{i}"))
            sc.wait_ips(old[-1])
        wait_published(sc, old)
        b.pause()
        # The leader is restarted with the apiserver, so that what follows does not depend on
        # how a running replica weathers an apiserver restart (not what this test is about).
        a.stop(kill=True)
        took = restart_apiserver(lab)
        print(f"kube-apiserver was down {took:.1f}s")
        a.start().wait_leading(api)  # the Lease names op-a: it leads at once
        # The gap: op-b sees none of this.
        gone_ips = {n: sc.ips(n) for n in old[:4]}
        for n in old[:4]:
            sc.delete(n)
        sc.wait_gone(*old[:4])
        # Two new Services take two of the freed addresses (asked for by name).
        new = [sc.create(f"n{i}", annotations={IPS_ANN: gone_ips[old[i]][0]}) for i in range(2)]
        for i, n in enumerate(new):
            assert sc.wait_ips(n) == gone_ips[old[i]]
        wait_published(sc, new)
        a.stop(kill=True)
        # Two Services nobody serves yet; one asks for an address freed in the gap.
        free_gap = sorted({gone_ips[n][0] for n in old[2:4]}, key=ipaddress.ip_address)
        late_auto = sc.create("late-auto")
        late_req = sc.create("late-req", annotations={IPS_ANN: free_gap[1]})
        expected = {n: sc.ips(n) for n in [*old[4:], *new]}
        b.resume()
        wait_for(lambda: lease_holder(api) == "op-b", "op-b takes over", 20)
        b.wait_leading(api)
        assert sc.wait_ips(late_req, timeout=15) == (free_gap[1],)
        sc.wait_ips(late_auto, timeout=15)
        if sc.ips(late_auto) != (free_gap[0],):
            ask = sc.create("after-req", annotations={IPS_ANN: free_gap[0]})
            assert sc.wait_ips(ask, timeout=15) == (free_gap[0],)
        time.sleep(1.0)
        now = sc.live()
        assert not changed(expected, now), changed(expected, now)
        assert not duplicates(sc.raw()), duplicates(sc.raw())
        assert {ip for v in now.values() for ip in v} <= set(hosts)
        wait_for(lambda: not lb_mismatches(sc), f"CRs match status: {lb_mismatches(sc)}", 30)

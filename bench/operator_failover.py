"""Failover of the operator: leader killed or stopped -> the standby's first new allocation, and
whether any Service's address changed on the way.

Brings up a lab with a pool and a population of Services with holes, a requested address, a
shared address, dual stack and a pending Service; runs two portico-operator replicas, and per
trial:
  1. churn under the leader: one Service deleted (its address freed), one created (it gets the
     freed address: the case that renumbered Services in issue 8);
  2. every Service's ingress recorded (a fresh LIST);
  3. the leader gets SIGKILL or SIGTERM, and a new Service is POSTed right after;
  4. time from the signal to our watch seeing the new Service's ingress;
  5. every Service's ingress recorded again once the new leader is idle, and compared;
  6. the old leader is started again (a new identity, as a new Pod) and becomes the standby.
A raw watch also counts every change of a live Service's ingress during the whole run (also one
that is undone before step 5 sees it).

Cases: SIGKILL with the default lease (--lease-seconds 15 --renew-deadline 10 --retry-seconds 2)
and with the lab's short one (4 / 3 / 0.5); SIGTERM with both (goal <= 1 s: the Lease is handed
over at once); and `restart`: a single replica SIGTERMed and started again once it exited (the
time then includes the new process's start and first listing).

    .venv/bin/python bench/operator_failover.py [--trials 10] [--cases kill-default ...]
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from _common import (
    IngressWatch,
    Operator,
    gone,
    ingress_snapshot,
    install_portico,
    lease_holder,
    pct,
    service,
    subnet,
    wait_until,
)
from kubernetes import client
from portico_lab.lab import Lab, LabConfig

NS = "bench"
LEASES = {
    "default": ("--lease-seconds", "15", "--renew-deadline", "10", "--retry-seconds", "2"),
    "short": ("--lease-seconds", "4", "--renew-deadline", "3", "--retry-seconds", "0.5"),
}
CASES = {  # signal, lease flags, a warm standby (False: one replica, restarted)
    "kill-default": (signal.SIGKILL, "default", True),
    "kill-short": (signal.SIGKILL, "short", True),
    "term-default": (signal.SIGTERM, "default", True),
    "term-short": (signal.SIGTERM, "short", True),
    "restart": (signal.SIGTERM, "short", False),
}
GOALS = {"term-default": "<= 1 s", "term-short": "<= 1 s"}
LABELS = {
    "kill-default": "SIGKILL, lease 15/10/2",
    "kill-short": "SIGKILL, lease 4/3/0.5",
    "term-default": "SIGTERM, lease 15/10/2",
    "term-short": "SIGTERM, lease 4/3/0.5",
    "restart": "restart, 1 replica",
}


@dataclass
class Result:
    case: str
    attempted: int = 0
    latencies: list[float] = field(default_factory=list)  # s, signal -> ingress seen
    changed: int = 0  # Services whose ingress differs after the trial
    compared: int = 0  # Services compared, summed over trials
    exit_after: list[float] = field(default_factory=list)  # s, signal -> old leader exited
    allocated_by: dict[str, int] = field(default_factory=dict)
    leader_mismatch: int = 0
    details: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.core = client.CoreV1Api(lab.api)
        self.watch = IngressWatch(lab, NS)
        self.replicas: list[Operator] = []  # every replica ever started (stopped in finally)
        self.generation = 0
        v4 = lab.plan.vip_range_v4
        self.pool_v4 = ipaddress.ip_network(subnet(v4, 24, 0))
        self.pool_v6 = subnet(lab.plan.vip_range_v6, 120, 0)
        self.outside = ipaddress.ip_network(subnet(v4, 24, 3))  # in the lab's range, no pool's
        self.churnable: list[str] = []  # Services that churn may delete, oldest first

    # -- replicas ------------------------------------------------------------------------------
    def start(self, lease: str) -> Operator:
        self.generation += 1
        op = Operator(self.lab, f"op-{self.generation}", *LEASES[lease])
        self.replicas.append(op)
        return op

    def check_alive(self, *ops: Operator) -> None:
        for op in ops:
            if not op.alive():
                raise RuntimeError(f"{op.identity} exited:\n{op.log_tail(60)}")

    def warm(self, op: Operator) -> None:
        """A standby is warm when its metrics answer and it has run `--warm` seconds."""
        wait_until(lambda: op.metrics() is not None or not op.alive(), "metrics", 60, 0.2)
        self.check_alive(op)
        left = op.started + self.args.warm - time.time()
        if left > 0:
            time.sleep(left)

    def settle(self, op: Operator, timeout: float = 30) -> float:
        """Until the leader's work queues stayed empty for 1 s (or `timeout`); returns the
        seconds it took."""
        t0 = time.time()
        idle_since = None
        while time.time() < t0 + timeout:
            depth = op.queue_depth()
            if depth == 0:
                idle_since = idle_since or time.time()
                if time.time() - idle_since >= 1:
                    break
            else:
                idle_since = None
            time.sleep(0.1)
        return time.time() - t0

    # -- Services ------------------------------------------------------------------------------
    def create(self, name: str, **kw: Any) -> None:
        self.core.create_namespaced_service(NS, service(name, NS, **kw))

    def delete(self, name: str) -> None:
        self.core.delete_namespaced_service(name, NS)
        wait_until(lambda: gone(self.core, name, NS), f"{name} deleted", 60, 0.05)

    def population(self) -> list[str]:
        """Services with holes between them, a requested address, two sharing one, dual stack
        and one pending; returns the names that must get an address."""
        names = [f"pop-{i:02d}" for i in range(16)]
        for n in names:
            self.create(n)
        for n in names:
            self.watch.wait(n, 60)
        for n in names[::2]:  # holes
            self.delete(n)
        served = names[1::2]
        self.churnable = list(served)
        self.create("req", loadBalancerIP=str(self.pool_v4.network_address + 100))
        self.create("share-a", annotations={"portico.dev/allow-shared-ip": "k1"}, port=80)
        self.create("share-b", annotations={"portico.dev/allow-shared-ip": "k1"}, port=81)
        self.create("dual", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"], port=82)
        self.create("prefer-dual", ipFamilyPolicy="PreferDualStack", port=83)
        # Pending: asks for an address that lies in no pool.
        self.create("pending", loadBalancerIP=str(self.outside.network_address + 7))
        extra = ["req", "share-a", "share-b", "dual", "prefer-dual"]
        for n in extra:
            try:
                self.watch.wait(n, 30)
                served.append(n)
            except TimeoutError:
                print(f"  note: {n} got no address (left out of the population)", file=sys.stderr)
        snap = ingress_snapshot(self.core, NS)
        print(f"  population: {len(snap)} Services with addresses: {snap}", file=sys.stderr)
        return served

    # -- one case ------------------------------------------------------------------------------
    def run_case(self, case: str) -> Result:
        sig, lease, ha = CASES[case]
        res = Result(case)
        # A fresh start over the Services that are there is a restart too: compare.
        before = ingress_snapshot(self.core, NS)
        leader = self.start(lease)
        standby: Operator | None = None
        try:
            probe = f"probe-{case}"
            self.create(probe)
            wait_until(
                lambda: probe in self.watch.seen or not leader.alive(), f"{probe} served", 120
            )
            self.check_alive(leader)
            self.settle(leader)
            self.compare(res, "start", before)
            standby = self.start(lease) if ha else None
            for t in range(self.args.trials):
                self.check_alive(leader, *([standby] if standby else []))
                holder = lease_holder(self.lab)
                if standby and holder and holder != leader.identity:
                    res.leader_mismatch += 1
                    if holder == standby.identity:
                        leader, standby = standby, leader
                res.attempted += 1
                t_start = time.time()
                # 1. churn under the leader
                victim = self.churnable.pop(0)
                try:
                    self.delete(victim)
                except TimeoutError as e:
                    res.problems.append(f"trial {t}: {e} (its finalizer stayed)")
                churn = f"ch-{case}-{t:02d}"
                self.create(churn)
                try:
                    self.watch.wait(churn, 60)
                except TimeoutError as e:
                    res.problems.append(f"trial {t}: {e} (under the leader, before the signal)")
                self.churnable.append(churn)
                t_churned = time.time()
                if standby:
                    self.warm(standby)
                settled = self.settle(leader)
                # 2. before
                before = ingress_snapshot(self.core, NS)
                # 3. signal, POST
                new = f"fo-{case}-{t:02d}"
                t_sig = time.time()
                leader.signal(sig)
                self.create(new)
                if standby:
                    successor = standby
                else:  # a restart: the next process starts once the old one is gone
                    if not leader.wait_exit(30):
                        leader.signal(signal.SIGKILL)
                        leader.wait_exit(5)
                    successor = self.start(lease)
                # 4. the standby's first new allocation
                budget = float(LEASES[lease][1]) * 3 + 30
                try:
                    seen: float | None = self.watch.wait(new, budget)
                except TimeoutError as e:
                    seen = None
                    res.problems.append(f"trial {t}: {e} (after the signal)")
                if seen is not None:
                    res.latencies.append(seen - t_sig)
                if not leader.wait_exit(30):
                    res.problems.append(f"trial {t}: the old leader ignored {sig.name} for 30 s")
                    leader.signal(signal.SIGKILL)
                    leader.wait_exit(5)
                if leader.exited is not None:
                    res.exit_after.append(leader.exited - t_sig)
                self.churnable.append(new)
                by = self.allocated_by(new) if seen is not None else "nobody"
                who = {successor.identity: "successor", leader.identity: "old leader"}.get(
                    by or "", f"other ({by})"
                )
                res.allocated_by[who] = res.allocated_by.get(who, 0) + 1
                # 5. after
                settled_after = self.settle(successor)
                n = self.compare(res, f"trial {t}", before)
                took = f"{1000 * (seen - t_sig):.0f} ms" if seen is not None else "TIMEOUT"
                print(
                    f"  {case} trial {t}: {took}, by {who}, {n}/{len(before)} changed "
                    f"(churn {t_churned - t_start:.1f} s, settled {settled:.1f} s / "
                    f"{settled_after:.1f} s, trial {time.time() - t_start:.1f} s)",
                    file=sys.stderr,
                )
                # 6. the old leader comes back as the new standby
                leader = successor
                if standby:
                    standby = self.start(lease)
        except (RuntimeError, TimeoutError) as e:
            # A replica died or the case could not even start: report it, go on with the next.
            res.problems.append(f"case aborted: {e}")
        finally:
            for op in (standby, leader):
                if op is not None:
                    op.stop()
        return res

    def compare(self, res: Result, what: str, before: dict[str, tuple[str, ...]]) -> int:
        after = ingress_snapshot(self.core, NS)
        diff = {n: (ips, after.get(n)) for n, ips in before.items() if after.get(n) != ips}
        res.changed += len(diff)
        res.compared += len(before)
        if diff:
            res.details.append(f"{what}: {diff}")
        return len(diff)

    def allocated_by(self, name: str) -> str | None:
        """The replica that reported the allocation (the Event's reportingInstance), if any;
        Events are written in the background, so this waits up to 3 s for one."""
        deadline = time.time() + 3
        while True:
            try:
                events = self.core.list_namespaced_event(
                    NS, field_selector=f"involvedObject.name={name}"
                ).items
            except client.ApiException:
                return None
            who = {e.reporting_instance for e in events if e.reason == "Allocated"}
            if who or time.time() > deadline:
                return "+".join(sorted(w or "?" for w in who)) or None
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--warm", type=float, default=5.0, help="seconds a new standby runs first")
    args = ap.parse_args()

    lab = Lab.up(LabConfig(nodes=3, pods_per_node=1, gateways=0, clients=0))
    bench: Bench | None = None
    results: list[Result] = []
    try:
        bench = Bench(lab, args)
        install_portico(lab, [NS], [str(bench.pool_v4), bench.pool_v6])
        bench.watch.start()
        bench.watch.ready.wait(30)
        first = True
        for case in args.cases:
            if first:
                # The population is made under the first case's first leader.
                _, lease, _ = CASES[case]
                op = bench.start(lease)
                try:
                    bench.population()
                finally:
                    op.stop()
                first = False
            results.append(bench.run_case(case))
        time.sleep(2)
        transient = list(bench.watch.changes)
    finally:
        if bench is not None:
            bench.watch.close()
            for op in bench.replicas:
                op.stop()
        lab.down()

    print()
    print("Leader stopped -> first new allocation by its successor (signal -> ingress, watch)")
    hdr = (
        f"{'case':<24} {'trials':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} "
        f"{'addr. changed':>13} {'old exits':>9} {'goal':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        lat = r.latencies
        if not lat:
            print(
                f"{LABELS[r.case]:<24} {f'0/{r.attempted}':>6} {'-':>7} {'-':>7} {'-':>7} "
                f"{f'{r.changed}/{r.compared}':>13}   (no failover allocated anything)"
            )
            continue
        trials = str(len(lat)) if len(lat) == r.attempted else f"{len(lat)}/{r.attempted}"
        exits = f"{statistics.median(r.exit_after):.2f}" if r.exit_after else "-"
        print(
            f"{LABELS[r.case]:<24} {trials:>6} {pct(lat, 50):>7.2f} {pct(lat, 99):>7.2f} "
            f"{max(lat):>7.2f} {f'{r.changed}/{r.compared}':>13} {exits:>9} "
            f"{GOALS.get(r.case, ''):>7}"
        )
    print("  addr. changed: Services whose ingress after the trial differs from before it, of")
    print("  those compared (summed over trials); old exits: median s from the signal to the old")
    print("  leader's exit.")
    total = sum(len(r.latencies) for r in results)
    changed = sum(r.changed for r in results)
    print(
        f"  {total} leader changes (failovers, restarts), {changed} addresses changed; "
        f"the watch saw {len(transient)} changes of a live Service's ingress in the whole run"
    )
    for r in results:
        who = ", ".join(f"{k} {v}" for k, v in sorted(r.allocated_by.items()))
        extra = f"; lease holder was not the expected leader {r.leader_mismatch}x"
        print(f"  {LABELS[r.case]}: allocated by {who}{extra if r.leader_mismatch else ''}")
        for d in r.details:
            print(f"    {d}")
        for d in r.problems:
            print(f"    problem: {d}")
    for name, old, new, _ in transient[:20]:
        print(f"    watch: {name} {list(old)} -> {list(new)}")


if __name__ == "__main__":
    main()

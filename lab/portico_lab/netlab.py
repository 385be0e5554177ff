"""The lab's network: namespaces, veth pairs and bridges, built with iproute2.

    root ns --ptc0-host--+
                         |      LAN namespace: bridge br0 (198.18.0.0/18, fd00:18:0:0::/64)
    gw-k     --eth0------+
    client-c --eth0------+
    node-i   --eth0------+--  node-i: cbr0 (its pod CIDR) --p<j>-- pod netns (eth0)

Nodes route to each other's pod CIDRs over the LAN; clients route to every pod CIDR through the
pod's node. Nothing here has a default route out of the lab.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

from .plan import AddressPlan, Host, Pod
from .procs import netns_argv, terminate_pids


class NetError(RuntimeError):
    pass


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ip_batch(netns: str | None, commands: Iterable[str]) -> None:
    """Runs iproute2 commands in one process, inside one namespace."""
    text = "\n".join(commands) + "\n"
    argv = ["ip", "-batch", "-"] if netns is None else ["ip", "-n", netns, "-batch", "-"]
    run(argv, input=text)


def sysctl(netns: str, settings: dict[str, str]) -> None:
    # /proc/sys/net shows the namespace of the process that opens it.
    args = [f"{k}={v}" for k, v in settings.items()]
    run(netns_argv(netns, ["sysctl", "-q", "-w", *args]))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split()]


def delete_netns(netns: str) -> None:
    """Kills whatever runs in the namespace, then deletes it (and so its veth ends)."""
    terminate_pids(netns_pids(netns), timeout=5)
    run(["ip", "netns", "del", netns], check=False)


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = (
        ["ip", "link", "show", name] if netns is None else ["ip", "-n", netns, "link", "show", name]
    )
    return subprocess.run(argv, capture_output=True).returncode == 0


_ROUTER = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
_HOST = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}


class Network:
    def __init__(self, plan: AddressPlan) -> None:
        self.plan = plan

    # -- the LAN -------------------------------------------------------------------------------
    def create_lan(self) -> None:
        """Creates the LAN namespace and the root namespace's link into it.

        Creating ``ptc<slot>-host`` fails if it exists: that is the slot's lock."""
        p = self.plan
        run(["ip", "link", "add", p.host_link, "type", "veth", "peer", "name", "host"])
        try:
            run(["ip", "netns", "add", p.lan_netns])
            ip_batch(
                p.lan_netns,
                [
                    "link set lo up",
                    "link add br0 type bridge",
                    "link set br0 up",
                ],
            )
            run(["ip", "link", "set", "host", "netns", p.lan_netns])
            ip_batch(p.lan_netns, ["link set host master br0", "link set host up"])
            h = p.host
            ip_batch(
                None,
                [
                    f"addr add {h.ipv4}/{p.lan_v4.prefixlen} dev {p.host_link}",
                    f"addr add {h.ipv6}/{p.lan_v6.prefixlen} dev {p.host_link} nodad",
                    f"link set {p.host_link} up",
                ],
            )
        except Exception:
            self.destroy()
            raise

    def _attach_lan_host(self, h: Host, routes: Sequence[str] = ()) -> None:
        assert h.netns is not None
        p = self.plan
        run(["ip", "netns", "add", h.netns])
        ip_batch(
            p.lan_netns,
            [
                f"link add {h.lan_link} type veth peer name eth0 netns {h.netns}",
                f"link set {h.lan_link} master br0",
                f"link set {h.lan_link} up",
            ],
        )
        ip_batch(
            h.netns,
            [
                "link set lo up",
                f"addr add {h.ipv4}/{p.lan_v4.prefixlen} dev eth0",
                f"addr add {h.ipv6}/{p.lan_v6.prefixlen} dev eth0 nodad",
                "link set eth0 up",
                *routes,
            ],
        )

    def _pod_routes(self, node_indices: Iterable[int], skip: int | None = None) -> list[str]:
        routes = []
        for m in node_indices:
            if m == skip:
                continue
            via = self.plan.node(m)
            routes.append(f"route replace {self.plan.pod_cidr_v4(m)} via {via.ipv4}")
            routes.append(f"route replace {self.plan.pod_cidr_v6(m)} via {via.ipv6}")
        return routes

    def add_gateway(self, k: int) -> Host:
        h = self.plan.gateway(k)
        self._attach_lan_host(h)
        assert h.netns is not None
        # Forwarding, as on a real gateway host: NAT-mode Services are routed (DNAT to a
        # nodePort); direct server return never reaches the IP stack.
        sysctl(h.netns, {**_HOST, "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        return h

    def add_client(self, c: int, node_indices: Iterable[int]) -> Host:
        h = self.plan.client(c)
        self._attach_lan_host(h, self._pod_routes(node_indices))
        assert h.netns is not None
        sysctl(h.netns, _HOST)
        return h

    def add_node(self, i: int) -> Host:
        p = self.plan
        h = p.node(i)
        self._attach_lan_host(h)
        assert h.netns is not None
        sysctl(h.netns, _ROUTER)
        ip_batch(
            h.netns,
            [
                "link add cbr0 type bridge",
                f"addr add {p.node_gateway_v4(i)}/24 dev cbr0",
                f"addr add {p.node_gateway_v6(i)}/64 dev cbr0 nodad",
                "link set cbr0 up",
            ],
        )
        return h

    def route_pod_cidrs(self, host: Host, node_indices: Iterable[int], skip: int | None) -> None:
        """Routes ``host`` to the pod CIDRs of the given nodes (through those nodes)."""
        routes = self._pod_routes(node_indices, skip)
        if routes:
            ip_batch(host.netns, routes)

    # -- pods --------------------------------------------------------------------------------
    def add_pod(self, node_i: int, pod: Pod) -> None:
        p = self.plan
        node = p.node(node_i)
        run(["ip", "netns", "add", pod.netns])
        ip_batch(
            node.netns,
            [
                f"link add {pod.node_link} type veth peer name eth0 netns {pod.netns}",
                f"link set {pod.node_link} master cbr0",
                # What the kubelet does (hairpin-veth): a pod that reaches a VIP DNATed back to
                # itself gets its own packets back through its bridge port.
                f"link set dev {pod.node_link} type bridge_slave hairpin on",
                f"link set {pod.node_link} up",
            ],
        )
        ip_batch(
            pod.netns,
            [
                "link set lo up",
                f"addr add {pod.ipv4}/24 dev eth0",
                f"addr add {pod.ipv6}/64 dev eth0 nodad",
                "link set eth0 up",
                f"route add default via {p.node_gateway_v4(node_i)}",
                f"route add default via {p.node_gateway_v6(node_i)}",
            ],
        )

    def remove_pod(self, pod: Pod) -> None:
        delete_netns(pod.netns)

    # -- failures ------------------------------------------------------------------------------
    def set_lan_link(self, h: Host, up: bool) -> None:
        """Pulls (or puts back) the host's cable: its port on the LAN bridge goes down."""
        ip_batch(self.plan.lan_netns, [f"link set {h.lan_link} {'up' if up else 'down'}"])

    # -- teardown ------------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        prefix = self.plan.prefix + "-"
        return [n for n in list_netns() if n.startswith(prefix)]

    def destroy(self) -> None:
        """Removes every namespace and link of this slot; safe to call on a half-built lab."""
        # Pods first, then the hosts, then the LAN: each deletion takes its veth ends with it.
        names = self.namespaces()
        order = sorted(names, key=lambda n: (n == self.plan.lan_netns, "-echo-" not in n, n))
        for ns in order:
            delete_netns(ns)
        if link_exists(self.plan.host_link):
            run(["ip", "link", "del", self.plan.host_link], check=False)

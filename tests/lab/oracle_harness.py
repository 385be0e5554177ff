"""kube-proxy as the oracle: the same LoadBalancer Services, once through Portico's node agents
and once through kube-proxy's own rules, probed from the same places; every difference is either
written down here (``INTENDED``, with its reason) or a defect.

A *shape* is one Service: address family (v4, v6, dual), ``externalTrafficPolicy`` (Cluster,
Local), ``sessionAffinity`` (None, ClientIP), ``loadBalancerSourceRanges`` (unset; ``allow``:
client-1 and the pod echo-2-2 only; ``deny``: a range no client is in; ``cleared``: ``deny``
applied by the node agents, then removed), protocols (TCP, UDP, both on port 80) and endpoints.
The Services have no selector: their EndpointSlices are written here, so an endpoint's node and
conditions are exactly what the shape says:

    none         no endpoint at all
    local        echo-1-1 (on node-1, where the external client's packets come in)
    remote       echo-2-1 (node-2)
    spread       echo-1-1 and echo-2-1 ready, echo-3-1 not ready (node-3 has none to use)
    terminating  echo-1-1 and echo-2-1 terminating but serving, echo-3-1 terminating and not
                 serving (kube-proxy falls back to serving terminating endpoints)

A *cell* is a shape seen from one client:

    ext       client-1, the VIP routed to node-1 (as the gateway delivers it: unchanged)
    node-1    the node itself (its host network namespace)
    echo-1-2  a pod on node-1 (the endpoints' node for local; another node for remote)
    echo-2-2  a pod on node-2 (the reverse)
    echo-3-2  a pod on node-3, which never has a usable endpoint
    self      the first endpoint pod (echo-1-1, or echo-2-1 for remote) reaching itself

Each cell is probed for every VIP of the Service and every protocol it has (a *group*, e.g.
``4/tcp``): up to ``ATTEMPTS`` new connections (or datagrams from a new socket), all groups of a
client at once from one process in its namespace, short timeouts. A group's observation is what
happened (``answer``; an error: ``ECONNREFUSED``, fast; ``EPERM``, the node's own packet dropped
by its output hook; ``timeout``; several joined by ``+``), the pods that answered and the source
address each pod saw (``client`` when it is the client's own address, else the address's name:
``node-1`` on the LAN, ``node-1/br`` on its pod bridge, ...). A cell equals kube-proxy's when
every group does: the same outcome, the same pods and sources; with ClientIP affinity (one pod,
chosen at random) the same number of pods and Portico's pin one that kube-proxy could have
chosen, with the same source (the Service's twin without affinity shows kube-proxy's choices).
A cell that differs is *intended* when kube-proxy's observation, changed by the ``INTENDED``
differences that apply, equals Portico's; else it is a defect (``DEFECT_CAUSES`` only groups the
known ones for the report).

The two behaviours come from one lab, one after the other, for the same Services and addresses:
Portico (operator and node agents, no kube-proxy), then kube-proxy alone (the agents stopped and
their table removed; conntrack flushed between the two). ``cleared`` goes through the agents'
transition; kube-proxy, started afterwards, sees the final state (which is what "cleared" must
mean). While the matrix runs the nodes' ICMP rate limits are lifted and the external client
ignores ICMP redirects (``NODE_SYSCTLS``), for both alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from portico_lab.lab import Lab
from portico_lab.plan import zone_of
from portico_lab.portico import start_node_agents
from portico_lab.procs import Proc, netns_argv

from .dataplane_harness import running_kube_proxy
from .operator_harness import NS, TEST_LABEL, Api, OperatorProcess, wait_for

# -- the matrix -------------------------------------------------------------------------------
FAMILIES = ("v4", "v6", "dual")
POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
RANGES = ("unset", "allow", "deny", "cleared")
PROTOCOLS = ("TCP", "UDP", "mixed")
ENDPOINTS = ("none", "local", "remote", "spread", "terminating")
CLIENTS = ("ext", "node-1", "echo-1-2", "echo-2-2", "echo-3-2", "self")

ENTRY = "node-1"  # the node the external client's packets reach (static route)
EXTERNAL = "client-1"
ALLOWED_POD = "echo-2-2"  # with client-1, what RANGES "allow" lets in
DENY_V4, DENY_V6 = "203.0.113.0/24", "2001:db8::/64"  # no lab address is in these
LABEL = "oracle"
SLICE_MANAGER = "oracle.portico.dev"
# Seconds to wait for an answer (a read, a datagram back) and for a TCP connection. An ICMP error
# that comes back while the connecting thread still holds its socket's lock is dropped by the
# kernel (TcpExtLockDroppedIcmps); across the lab's veth links it comes back that fast, so a
# rejection by ICMP (kube-proxy's) often reaches the client only with the SYN sent again after
# 1 s: 1.5 s tells that "refused" from a timeout.
TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.5
# 32 tries: two equal endpoints both seen but 5 in 10^10 per group; about 190 such groups per
# run (both data planes), so a run misses one by chance about once in 10^7 (with 20: 1 in 3,000).
ATTEMPTS = {"None": 32, "ClientIP": 6}

# (pod, ready, serving, terminating)
EndpointSpec = tuple[str, bool, bool, bool]
ENDPOINT_SETS: dict[str, tuple[EndpointSpec, ...]] = {
    "none": (),
    "local": (("echo-1-1", True, True, False),),
    "remote": (("echo-2-1", True, True, False),),
    "spread": (
        ("echo-1-1", True, True, False),
        ("echo-2-1", True, True, False),
        ("echo-3-1", False, False, False),
    ),
    "terminating": (
        ("echo-1-1", False, True, True),
        ("echo-2-1", False, True, True),
        ("echo-3-1", False, False, True),
    ),
}


@dataclass(frozen=True, order=True)
class Shape:
    family: str
    policy: str
    affinity: str
    ranges: str
    protocols: str
    endpoints: str

    @property
    def name(self) -> str:
        """The Service's name."""
        pol = self.policy[0].lower() + ("a" if self.affinity == "ClientIP" else "n")
        return f"or-{self.family}-{pol}-{self.ranges}-{self.protocols.lower()}-{self.endpoints}"

    @property
    def id(self) -> str:
        return "/".join(
            (self.family, self.policy, self.affinity, self.ranges, self.protocols, self.endpoints)
        )

    def twin(self) -> Shape:
        """The same Service without affinity (what a ClientIP pin may choose from)."""
        return replace(self, affinity="None")

    @property
    def protos(self) -> tuple[str, ...]:
        return {"TCP": ("tcp",), "UDP": ("udp",), "mixed": ("tcp", "udp")}[self.protocols]

    @property
    def self_pod(self) -> str | None:
        usable = [p for p, _ready, serving, _t in ENDPOINT_SETS[self.endpoints] if serving]
        return usable[0] if usable else None


@dataclass(frozen=True, order=True)
class Cell:
    shape: Shape
    client: str  # one of CLIENTS

    @property
    def id(self) -> str:
        return f"{self.shape.id}@{self.client}"

    @property
    def where(self) -> str:
        """The namespace the probes run in."""
        if self.client == "ext":
            return EXTERNAL
        if self.client == "self":
            pod = self.shape.self_pod
            assert pod is not None
            return pod
        return self.client

    @property
    def dnat_node(self) -> str:
        """The node whose rules see the client's packets first."""
        w = self.where
        if w == EXTERNAL:
            return ENTRY
        return w if w.startswith("node-") else "node-" + w.split("-")[1]


def full_matrix() -> list[Shape]:
    return [
        Shape(*dims)
        for dims in itertools.product(FAMILIES, POLICIES, AFFINITIES, RANGES, PROTOCOLS, ENDPOINTS)
    ]


def sampled() -> list[Shape]:
    """A subset for `make test`: every policy x endpoints pair with both affinities (families
    and protocols rotate), every source-range case on spread endpoints (dual, mixed), and
    source ranges that keep everyone out of a Service without endpoints."""
    out: list[Shape] = []
    for k, (policy, eps) in enumerate(itertools.product(POLICIES, ENDPOINTS)):
        for aff in AFFINITIES:
            out.append(Shape(FAMILIES[k % 3], policy, aff, "unset", PROTOCOLS[k % 3], eps))
    for policy, ranges in itertools.product(POLICIES, RANGES[1:]):
        out.append(Shape("dual", policy, "None", ranges, "mixed", "spread"))
    out.append(Shape("v4", "Cluster", "None", "deny", "mixed", "none"))
    return out


def cells_of(shapes: Iterable[Shape], clients: Iterable[str] = CLIENTS) -> list[Cell]:
    clients = tuple(clients)
    return [Cell(s, c) for s in shapes for c in clients if c != "self" or s.self_pod is not None]


# -- observations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """What one client saw of one VIP and protocol over its attempts."""

    outcome: str  # "answer", an error ("ECONNREFUSED", "timeout", ...), or several joined by "+"
    pods: tuple[str, ...] = ()
    seen: tuple[tuple[str, str], ...] = ()  # (pod, source address the pod saw)

    def describe(self) -> str:
        if not self.pods:
            return self.outcome
        who = ", ".join(f"{pod} saw {src}" for pod, src in self.seen)
        return f"{self.outcome}: {who}"


Observation = dict[str, Group]  # "4/tcp" -> Group


def describe(obs: Observation) -> str:
    return "; ".join(f"{k} {g.describe()}" for k, g in sorted(obs.items()))


# -- the probe client: one process per namespace, every group of it in parallel ------------------
_PROBE = r"""
import errno, json, socket, sys, time
from concurrent.futures import ThreadPoolExecutor
job = json.load(sys.stdin)
T, CT = job["timeout"], job["connect_timeout"]

def once(proto, addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(CT)
    stage = ""
    t0 = time.monotonic()
    try:
        s.connect((addr, port))
        local = s.getsockname()[0]
        stage = "@read"
        s.settimeout(T)
        if proto == "tcp":
            s.sendall(b"GET /oracle HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            body = data.split(b"\r\n\r\n", 1)[1]
        else:
            s.send(b"oracle")
            body = s.recv(65535)
        a = json.loads(body)
        return {"pod": a["pod"], "saw": a["client_ip"], "local": local}
    except (socket.timeout, TimeoutError):
        kind = "timeout"
    except OSError as e:
        kind = errno.errorcode.get(e.errno, str(e.errno))
    except (ValueError, IndexError, KeyError):
        kind = "garbled"
    finally:
        s.close()
    return {"err": kind + stage, "ms": round((time.monotonic() - t0) * 1000)}

def group(task):
    key, proto, addr, port, n = task
    out = []
    for i in range(n):
        r = once(proto, addr, port)
        out.append(r)
        # the same failure twice from the start: it fails every time (saves the timeouts)
        if i == 1 and "err" in out[0] and out[0]["err"] == r.get("err"):
            break
    return key, out

with ThreadPoolExecutor(job["threads"]) as pool:
    print(json.dumps(dict(pool.map(group, job["tasks"]))))
"""


def address_names(lab: Lab) -> dict[str, str]:
    plan = lab.plan
    names: dict[str, str] = {}
    for i in range(1, lab.config.nodes + 1):
        node = plan.node(i)
        names[str(node.ipv4)] = names[str(node.ipv6)] = node.name
        gw4, gw6 = plan.node_gateway_v4(i), plan.node_gateway_v6(i)
        names[str(gw4)] = names[str(gw6)] = f"{node.name}/br"
    for c in range(1, lab.config.clients + 1):
        cl = plan.client(c)
        names[str(cl.ipv4)] = names[str(cl.ipv6)] = cl.name
    for pod in lab.pods():
        names[str(pod.ipv4)] = names[str(pod.ipv6)] = pod.name
    return names


def _canon(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip.removeprefix("::ffff:")))
    except ValueError:
        return ip


def summarize(attempts: list[dict[str, Any]], names: dict[str, str]) -> Group:
    kinds = sorted({"answer" if "pod" in a else a["err"] for a in attempts})
    seen = sorted(
        {
            (
                a["pod"],
                "client"
                if _canon(a["saw"]) == _canon(a["local"])
                else names.get(_canon(a["saw"]), a["saw"]),
            )
            for a in attempts
            if "pod" in a
        }
    )
    return Group("+".join(kinds), tuple(sorted({p for p, _ in seen})), tuple(seen))


def probe(
    lab: Lab,
    cells: list[Cell],
    vips: dict[Shape, list[str]],
    *,
    timeout: float = TIMEOUT,
    threads: int = 32,
) -> dict[Cell, Observation]:
    """Every group of every cell, one process per client namespace, all at once."""
    tasks: dict[str, list[list[Any]]] = {}
    index: dict[str, tuple[Cell, str]] = {}
    for cell in cells:
        for vip in vips[cell.shape]:
            fam = "6" if ":" in vip else "4"
            for proto in cell.shape.protos:
                key = f"{cell.id}|{fam}/{proto}"
                index[key] = (cell, f"{fam}/{proto}")
                n = ATTEMPTS[cell.shape.affinity]
                tasks.setdefault(cell.where, []).append([key, proto, vip, 80, n])
    procs = {}
    for where, ts in tasks.items():
        argv = netns_argv(lab.netns_of(where), [sys.executable, "-S", "-c", _PROBE])
        p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert p.stdin is not None
        job = {"timeout": timeout, "connect_timeout": CONNECT_TIMEOUT, "threads": threads}
        p.stdin.write(json.dumps({**job, "tasks": ts}))
        p.stdin.close()
        procs[where] = p
    names = address_names(lab)
    out: dict[Cell, Observation] = {c: {} for c in cells}
    for where, p in procs.items():
        assert p.stdout is not None and p.stderr is not None
        raw, err = p.stdout.read(), p.stderr.read()
        if p.wait() != 0:
            raise RuntimeError(f"the probes from {where} failed: {err[-2000:]}")
        for key, attempts in json.loads(raw).items():
            cell, group = index[key]
            out[cell][group] = summarize(attempts, names)
    return out


# -- the Services and their EndpointSlices ---------------------------------------------------
def service_body(lab: Lab, shape: Shape) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": False,
        "externalTrafficPolicy": shape.policy,
        "sessionAffinity": shape.affinity,
        "ports": [
            {"name": p, "protocol": p.upper(), "port": 80, "targetPort": 8080} for p in shape.protos
        ],
    }
    if shape.family == "dual":
        spec["ipFamilyPolicy"] = "RequireDualStack"
        spec["ipFamilies"] = ["IPv4", "IPv6"]
    else:
        spec["ipFamilyPolicy"] = "SingleStack"
        spec["ipFamilies"] = ["IPv4" if shape.family == "v4" else "IPv6"]
    if shape.ranges == "allow":
        ext, pod = lab.plan.client(1), lab.pod(ALLOWED_POD)
        spec["loadBalancerSourceRanges"] = [
            f"{ext.ipv4}/32",
            f"{ext.ipv6}/128",
            f"{pod.ipv4}/32",
            f"{pod.ipv6}/128",
        ]
    elif shape.ranges in ("deny", "cleared"):
        spec["loadBalancerSourceRanges"] = [DENY_V4, DENY_V6]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": shape.name, "namespace": NS, "labels": {TEST_LABEL: LABEL}},
        "spec": spec,
    }


def slice_bodies(lab: Lab, shape: Shape) -> list[dict[str, Any]]:
    fams = {"v4": ("IPv4",), "v6": ("IPv6",), "dual": ("IPv4", "IPv6")}[shape.family]
    out = []
    for fam in fams:
        eps = []
        for pod_name, ready, serving, terminating in ENDPOINT_SETS[shape.endpoints]:
            pod = lab.pod(pod_name)
            node = int(pod.node.split("-")[1])
            eps.append(
                {
                    "addresses": [str(pod.ipv4 if fam == "IPv4" else pod.ipv6)],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": pod.node,
                    "zone": zone_of(node, lab.config.zones),
                    "targetRef": {"kind": "Pod", "namespace": NS, "name": pod.name},
                }
            )
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{shape.name}-{fam[-2:].lower()}",
                    "namespace": NS,
                    "labels": {
                        "kubernetes.io/service-name": shape.name,
                        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
                        TEST_LABEL: LABEL,
                    },
                },
                "addressType": fam,
                "endpoints": eps,
                "ports": [{"name": p, "protocol": p.upper(), "port": 8080} for p in shape.protos],
            }
        )
    return out


def _ignore_conflict(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ApiException as e:
        if e.status != 409:
            raise


def create_services(lab: Lab, api: Api, shapes: list[Shape]) -> None:
    """The EndpointSlices first, so that the first rules of each Service have its endpoints."""
    disco = client.DiscoveryV1Api(lab.api)
    jobs: list[Callable[[], Any]] = []
    for shape in shapes:
        for body in slice_bodies(lab, shape):
            jobs.append(lambda b=body: disco.create_namespaced_endpoint_slice(NS, b))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(_ignore_conflict, jobs))
        bodies = [service_body(lab, s) for s in shapes]
        list(
            pool.map(
                lambda b: _ignore_conflict(lambda: api.core.create_namespaced_service(NS, b)),
                bodies,
            )
        )


def delete_services(lab: Lab, api: Api) -> None:
    """Deletes our Services and waits until they are gone (the operator, still running, removes
    its finalizer from each), then their EndpointSlices."""
    sel = f"{TEST_LABEL}={LABEL}"
    names = [s["metadata"]["name"] for s in api.raw_services(LABEL)]

    def delete(name: str) -> None:
        try:
            api.core.delete_namespaced_service(name, NS)
        except ApiException as e:
            if e.status != 404:
                raise

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(delete, names))
    wait_for(lambda: not api.raw_services(LABEL), "our Services are gone", 120)
    client.DiscoveryV1Api(lab.api).delete_collection_namespaced_endpoint_slice(
        NS, label_selector=sel
    )


def wait_addresses(api: Api, shapes: list[Shape], timeout: float = 120) -> dict[Shape, list[str]]:
    want = {s.name: s for s in shapes}
    got: dict[Shape, list[str]] = {}

    def ready() -> bool:
        for svc in api.raw_services(LABEL):
            shape = want.get(svc["metadata"]["name"])
            ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            ips = sorted((i["ip"] for i in ing if i.get("ip")), key=lambda ip: ":" in ip)
            if shape is not None and len(ips) == (2 if shape.family == "dual" else 1):
                got[shape] = ips
        return len(got) == len(want)

    wait_for(ready, f"addresses for {len(want)} Services", timeout)
    return got


def wait_programmed(api: Api, shapes: list[Shape], timeout: float = 120) -> None:
    want = {s.name for s in shapes}

    def missing() -> set[str]:
        done = set()
        for lb in api.raw_lbs("or-"):
            conds = (lb.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Programmed" and c["status"] == "True" for c in conds):
                done.add(lb["metadata"]["name"])
        return want - done

    left: set[str] = set()

    def done() -> bool:
        nonlocal left
        left = missing()
        return not left

    try:
        wait_for(done, "every Service Programmed", timeout)
    except AssertionError:
        raise AssertionError(f"not Programmed: {sorted(left)[:10]} ({len(left)})") from None


# -- the two data planes ----------------------------------------------------------------------
def _listing(lab: Lab, node: str, argv: list[str]) -> str:
    return lab.exec(node, argv, timeout=60).stdout


def settled(lab: Lab, dump: Callable[[str], str], vips: Iterable[str], what: str) -> None:
    """Until every node's ``dump`` names every VIP and stays the same for a second."""
    vips = list(vips)
    last: dict[str, str] = {}
    calm_since = [time.monotonic()]

    def check() -> bool:
        now = {n: dump(n) for n in lab.node_names()}
        if now != last:
            last.clear()
            last.update(now)
            calm_since[0] = time.monotonic()
            return False
        lacking = [v for v in vips if any(v not in text for text in now.values())]
        return not lacking and time.monotonic() - calm_since[0] >= 1.0

    wait_for(check, what, 120)


def portico_dump(lab: Lab, node: str) -> str:
    return _listing(lab, node, ["nft", "list", "table", "inet", "portico"])


def kube_proxy_dump(lab: Lab, node: str, mode: str) -> str:
    if mode == "nftables":
        return _listing(lab, node, ["nft", "list", "table", "ip", "kube-proxy"]) + _listing(
            lab, node, ["nft", "list", "table", "ip6", "kube-proxy"]
        )
    text = _listing(lab, node, ["iptables-save"]) + _listing(lab, node, ["ip6tables-save"])
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))  # (timestamps)


_FLUSH = (
    "from pyroute2 import Conntrack\nfor fam in (2, 10):\n    Conntrack(nfgen_family=fam).flush()"
)


def flush_conntrack(lab: Lab) -> None:
    """No connection of one data plane's lives on into the other's turn."""
    for node in lab.node_names():
        lab.exec(node, [sys.executable, "-c", _FLUSH], check=True)


@contextmanager
def portico_agents(lab: Lab) -> Iterator[list[Proc]]:
    procs = start_node_agents(lab, "--verify-interval", "0.5")
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        for node in lab.node_names():
            lab.exec(node, [sys.executable, "-m", "portico_nodeagent", "--cleanup"])
        flush_conntrack(lab)


@contextmanager
def kube_proxy(lab: Lab, mode: str) -> Iterator[list[Proc]]:
    try:
        with running_kube_proxy(lab, mode) as procs:
            yield procs
    finally:
        flush_conntrack(lab)


# The probes are a burst: hundreds of refusals a second to one client. The kernel's ICMP rate
# limits (per destination: a burst of 6, then one a second; and per namespace) would turn some
# of them into timeouts, at random; the nodes lift them while the matrix runs, for both data
# planes alike. The external client ignores ICMP redirects (its node sends one for each packet
# it forwards back onto the LAN, e.g. to a VIP it drops or rejects), which would otherwise
# reroute its next packets to that VIP around the node: a client behind the gateway never sees
# them.
NODE_SYSCTLS = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv6.icmp.ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
}
CLIENT_SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.eth0.accept_redirects": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.eth0.accept_redirects": "0",
}


@contextmanager
def sysctls(lab: Lab, where: str, settings: dict[str, str]) -> Iterator[None]:
    keys = list(settings)
    old = lab.exec(where, ["sysctl", "-n", *keys], check=True).stdout.split("\n")
    lab.exec(where, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())], check=True)
    try:
        yield
    finally:
        restore = [f"{k}={v}" for k, v in zip(keys, old, strict=False)]
        lab.exec(where, ["sysctl", "-q", "-w", *restore], check=True)


@contextmanager
def probing_conditions(lab: Lab) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for node in lab.node_names():
            stack.enter_context(sysctls(lab, node, NODE_SYSCTLS))
        stack.enter_context(sysctls(lab, EXTERNAL, CLIENT_SYSCTLS))
        yield


@contextmanager
def external_route(lab: Lab, pool_v4: str, pool_v6: str) -> Iterator[None]:
    """client-1 reaches every VIP of the pool through ENTRY, as the gateway delivers it."""
    node = lab.host(ENTRY)
    routes = [([], pool_v4, str(node.ipv4)), (["-6"], pool_v6, str(node.ipv6))]
    for fam, prefix, via in routes:
        lab.exec(EXTERNAL, ["ip", *fam, "route", "replace", prefix, "via", via], check=True)
    try:
        yield
    finally:
        for fam, prefix, _via in routes:
            lab.exec(EXTERNAL, ["ip", *fam, "route", "del", prefix])


@contextmanager
def oracle_operator(lab: Lab, api: Api, pool_v4: str, pool_v6: str) -> Iterator[OperatorProcess]:
    api.create_pool("oracle", [pool_v4, pool_v6], avoidBuggyIPs=True)
    op = OperatorProcess(lab, "op-oracle").start()
    try:
        wait_for(lambda: "first full listing" in op.log.read_text(), "the operator lists", 30)
        yield op
    finally:
        op.stop()
        api.delete_pool("oracle")


def pools(lab: Lab) -> tuple[str, str]:
    """A /22 and a /118 of the lab's VIP ranges no other test's pool uses."""
    v4 = lab.plan.vip_range_v4.network_address + 6144
    v6 = lab.plan.vip_range_v6.network_address + 0x8000
    return f"{v4}/22", f"{v6}/118"


@dataclass
class Run:
    cells: list[Cell]
    vips: dict[Shape, list[str]]
    portico: dict[Cell, Observation]
    kube_proxy: dict[Cell, Observation]
    timings: dict[str, float] = field(default_factory=dict)


def run(
    lab: Lab,
    api: Api,
    shapes: list[Shape],
    *,
    clients: Iterable[str] = CLIENTS,
    mode: str = "nftables",
    log: Callable[[str], None] = lambda _m: None,
) -> Run:
    """Both data planes over every cell of ``shapes``."""
    cells = cells_of(shapes, clients)
    t: dict[str, float] = {}
    t0 = time.monotonic()
    pool_v4, pool_v6 = pools(lab)
    with (
        oracle_operator(lab, api, pool_v4, pool_v6),
        external_route(lab, pool_v4, pool_v6),
        probing_conditions(lab),
    ):
        try:
            create_services(lab, api, shapes)
            vips = wait_addresses(api, shapes)
            all_vips = [v for vs in vips.values() for v in vs]
            t["services"] = time.monotonic() - t0
            log(f"{len(shapes)} Services, {len(all_vips)} VIPs in {t['services']:.1f}s")

            with portico_agents(lab):
                wait_programmed(api, shapes)
                settled(lab, lambda n: portico_dump(lab, n), all_vips, "Portico's tables settle")
                cleared = [s for s in shapes if s.ranges == "cleared"]
                if cleared:
                    clear_ranges(lab, api, cleared, vips)
                t["portico-ready"] = time.monotonic() - t0
                log(f"Portico programmed at {t['portico-ready']:.1f}s")
                portico = probe(lab, cells, vips)
                t["portico-probed"] = time.monotonic() - t0
                log(f"Portico probed at {t['portico-probed']:.1f}s")

            with kube_proxy(lab, mode):
                settled(
                    lab,
                    lambda n: kube_proxy_dump(lab, n, mode),
                    all_vips,
                    "kube-proxy's rules settle",
                )
                t["kube-proxy-ready"] = time.monotonic() - t0
                log(f"kube-proxy programmed at {t['kube-proxy-ready']:.1f}s")
                oracle = probe(lab, cells, vips)
                t["kube-proxy-probed"] = time.monotonic() - t0
                log(f"kube-proxy probed at {t['kube-proxy-probed']:.1f}s")
        finally:
            delete_services(lab, api)
    return Run(cells, vips, portico, oracle, t)


def clear_ranges(lab: Lab, api: Api, shapes: list[Shape], vips: dict[Shape, list[str]]) -> None:
    """The agents hold the ranges (each VIP in a firewall map), then the ranges go."""
    ours = [v for s in shapes for v in vips[s]]

    def firewall_lines(node: str) -> list[str]:
        text = portico_dump(lab, node)
        return [ln for ln in text.splitlines() if "goto fw-" in ln or "firewall" in ln]

    def all_in(node: str) -> bool:
        text = "\n".join(firewall_lines(node))
        return all(v in text for v in ours)

    for node in lab.node_names():
        wait_for(lambda n=node: all_in(n), f"{node} applied the source ranges", 60)
    for s in shapes:
        api.core.patch_namespaced_service(s.name, NS, {"spec": {"loadBalancerSourceRanges": None}})

    def none_in(node: str) -> bool:
        text = "\n".join(firewall_lines(node))
        return not any(v in text for v in ours)

    for node in lab.node_names():
        wait_for(lambda n=node: none_in(n), f"{node} dropped the cleared ranges", 60)


# -- comparison -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intended:
    """A difference Portico means to have: how it turns kube-proxy's observation of a group
    into what Portico does instead."""

    name: str
    reason: str
    adjust: Callable[[Cell, str, Group], Group]


def _sources(g: Group, fn: Callable[[str, str], str]) -> Group:
    seen = tuple(sorted({(pod, fn(pod, src)) for pod, src in g.seen}))
    return replace(g, seen=seen)


def _pod_node(pod: str) -> str:
    return "node-" + pod.split("-")[1]


def _unmasqueraded_on_dnat_node(cell: Cell, g: Group) -> Group:
    """The client's own address where kube-proxy showed the DNAT node's pod-bridge address, for
    pods on that node other than the client itself."""
    node = cell.dnat_node

    def src(pod: str, seen: str) -> str:
        mine = _pod_node(pod) == node and pod != cell.where and seen == f"{node}/br"
        return "client" if mine else seen

    return _sources(g, src)


def _cluster_keeps_client(cell: Cell, key: str, g: Group) -> Group:
    if cell.shape.policy != "Cluster" or cell.client in ("self", "node-1"):
        return g
    return _unmasqueraded_on_dnat_node(cell, g)


def _node_keeps_its_address(cell: Cell, key: str, g: Group) -> Group:
    return _unmasqueraded_on_dnat_node(cell, g) if cell.client == "node-1" else g


INTENDED: list[Intended] = [
    Intended(
        "Cluster: no masquerade toward a pod on the node that DNATs",
        "externalTrafficPolicy Cluster, a client outside the cluster or a pod, an endpoint on "
        "the node that DNATs (the entry node; a pod's own node): kube-proxy masquerades every "
        "packet of a Cluster LoadBalancer Service (the pod sees that node's pod-bridge "
        "address), Portico masquerades only toward pods on other nodes (their replies must "
        "come back through this node) and a pod reaching itself; the reply of a pod on the "
        "DNAT node passes that node anyway, so the pod sees the client's own address (direct "
        "server return keeps it, as with Local)",
        _cluster_keeps_client,
    ),
    Intended(
        "the node itself keeps its own address toward its pods",
        "the node itself (host network) reaching a VIP whose endpoint is on it, either policy: "
        "kube-proxy masquerades the node's own packets to a LoadBalancer address (in case the "
        "address is one of the node's own, which would then be the source), so the pod sees "
        "the node's pod-bridge address; Portico never puts a VIP on a node, the node's packet "
        "leaves from its own LAN address and keeps it (it is the node's: the reply comes back "
        "to it)",
        _node_keeps_its_address,
    ),
]


def expected(cell: Cell, key: str, g: Group) -> tuple[Group, list[str]]:
    """kube-proxy's group with every intended difference applied, and the names of those that
    changed it."""
    names = []
    for d in INTENDED:
        new = d.adjust(cell, key, g)
        if new != g:
            names.append(d.name)
            g = new
    return g, names


@dataclass
class Verdict:
    cell: Cell
    status: str  # "equal", "intended", "defect"
    portico: Observation
    kube_proxy: Observation
    why: list[str] = field(default_factory=list)  # intended differences, or what differs


def _same(
    cell: Cell,
    p: Group | None,
    k: Group | None,
    p_twin: Group | None,
    k_twin: Group | None,
) -> bool:
    if p is None or k is None:
        return p == k
    if p.outcome != k.outcome:
        return False
    if cell.shape.affinity == "None":
        return p.seen == k.seen
    # ClientIP: each pins the client to one pod, chosen at random: the same count of pods, and
    # Portico's pin one that kube-proxy could have chosen, with the same source address (the
    # twin Service without affinity shows kube-proxy's choices; whether Portico's choices are
    # all of them is the twin cell's verdict).
    if len(p.pods) != len(k.pods):
        return False
    if p.pods == k.pods:
        return p.seen == k.seen
    return k_twin is None or set(p.seen) <= set(k_twin.seen)


def compare(r: Run) -> list[Verdict]:
    out = []
    for cell in r.cells:
        po, ko = r.portico[cell], r.kube_proxy[cell]
        twin = Cell(cell.shape.twin(), cell.client)
        pt, kt = r.portico.get(twin, {}), r.kube_proxy.get(twin, {})
        equal, fits, why, causes = True, True, [], []
        for key in sorted(set(po) | set(ko)):
            p, k = po.get(key), ko.get(key)
            if _same(cell, p, k, pt.get(key), kt.get(key)):
                continue
            equal = False
            exp, names = expected(cell, key, k) if k is not None else (None, [])
            exp_twin, twin_names = expected(twin, key, kt[key]) if key in kt else (None, [])
            if _same(cell, p, exp, pt.get(key), exp_twin):
                why += [n for n in names + twin_names if n not in why]
                continue
            fits = False
            cause = next((c.name for c in DEFECT_CAUSES if c.applies(cell, key, p, exp)), None)
            causes.append(cause or "not explained")
        if equal:
            out.append(Verdict(cell, "equal", po, ko))
        elif fits:
            out.append(Verdict(cell, "intended", po, ko, why))
        else:
            out.append(Verdict(cell, "defect", po, ko, sorted(set(causes))))
    return out


@dataclass(frozen=True)
class Cause:
    """A known reason behind a defect, only to group the report (a defect stays a defect)."""

    name: str
    explanation: str
    applies: Callable[[Cell, str, Group | None, Group | None], bool]


def _short_circuit(cell: Cell, key: str, p: Group | None, k: Group | None) -> bool:
    if cell.shape.policy != "Local" or cell.client == "ext" or p is None or k is None:
        return False
    fewer = p.outcome != "answer" or set(p.pods) < set(k.pods)
    return k.outcome == "answer" and fewer


def _short_circuit_masquerades(cell: Cell, key: str, p: Group | None, k: Group | None) -> bool:
    if cell.shape.policy != "Local" or not cell.where.startswith("echo-") or p is None or k is None:
        return False
    return p.outcome == k.outcome == "answer" and p.pods == k.pods and p.seen != k.seen


def _reset_lost(cell: Cell, key: str, p: Group | None, k: Group | None) -> bool:
    return (
        cell.shape.endpoints == "none"
        and cell.where.startswith("echo-")
        and key.endswith("/tcp")
        and p is not None
        and k is not None
        and (p.outcome, k.outcome) == ("timeout", "ECONNREFUSED")
    )


def _reject_before_ranges(cell: Cell, key: str, p: Group | None, k: Group | None) -> bool:
    return (
        cell.shape.endpoints == "none"
        and cell.client == "node-1"
        and cell.shape.ranges in ("allow", "deny")
        and p is not None
        and k is not None
        and (p.outcome, k.outcome) == ("ECONNREFUSED", "timeout")
    )


DEFECT_CAUSES = [
    Cause(
        "Local: no short-circuit for pods and the node",
        "externalTrafficPolicy Local applied to traffic from inside the cluster: a pod, or the "
        "node itself, reaching the VIP gets only its own node's endpoints (none: dropped, a "
        "timeout; EPERM for the node's UDP), where kube-proxy sends it to the Service's "
        "endpoints on any node (pods keep their address; the node's packets are masqueraded), "
        "as if it had gone out to the load balancer and come back",
        _short_circuit,
    ),
    Cause(
        "Local: the short-circuit masquerades a pod toward other nodes",
        "externalTrafficPolicy Local, a pod reaching the VIP, sent to an endpoint on another "
        "node: Portico masquerades it (the endpoint sees the pod's node); kube-proxy's "
        "short-circuit does not (the endpoint sees the pod's own address: the pod's node "
        "routes the reply back to it and un-NATs it there)",
        _short_circuit_masquerades,
    ),
    Cause(
        "no endpoints: the TCP reset never reaches a pod",
        "a Service without endpoints, TCP from a pod: Portico DNATs the VIP to the node and "
        "rejects with a TCP reset there; with br_netfilter (bridge-nf-call-iptables=1, as "
        "kubeadm requires) the packet came through the pod bridge, so the kernel sends the "
        "reset straight out of the bridge port, from the node's address, never un-NATed to "
        "the VIP: the pod ignores it and times out (with bridge-nf-call-iptables=0 it is "
        "refused); kube-proxy's ICMP port unreachable is refused",
        _reset_lost,
    ),
    Cause(
        "the node itself: no-endpoint reject before the source-range drop",
        "the node itself, outside loadBalancerSourceRanges, a Service without endpoints, TCP: "
        "Portico's filter-output runs endpoints-check before firewall-check and refuses "
        "(a TCP reset tells the denied client the Service exists); kube-proxy drops first "
        "(timeout), as Portico does for traffic that comes in (filter-prerouting)",
        _reject_before_ranges,
    ),
]


def dump_run(r: Run) -> dict[str, Any]:
    """The observations as JSON (``load_run`` reads them back, to compare again offline)."""

    def obs(o: Observation) -> dict[str, Any]:
        return {k: [g.outcome, list(g.pods), [list(x) for x in g.seen]] for k, g in o.items()}

    return {
        "cells": [[*c.shape.__dict__.values(), c.client] for c in r.cells],
        "vips": {s.id: v for s, v in r.vips.items()},
        "portico": {c.id: obs(o) for c, o in r.portico.items()},
        "kube_proxy": {c.id: obs(o) for c, o in r.kube_proxy.items()},
        "timings": r.timings,
    }


def load_run(data: dict[str, Any]) -> Run:
    cells = [Cell(Shape(*c[:6]), c[6]) for c in data["cells"]]
    shapes = {c.shape.id: c.shape for c in cells}

    def obs(o: dict[str, Any]) -> Observation:
        return {
            k: Group(out, tuple(pods), tuple(tuple(x) for x in seen))  # type: ignore[misc]
            for k, (out, pods, seen) in o.items()
        }

    by_id = {c.id: c for c in cells}
    return Run(
        cells,
        {shapes[k]: v for k, v in data["vips"].items() if k in shapes},
        {by_id[k]: obs(o) for k, o in data["portico"].items()},
        {by_id[k]: obs(o) for k, o in data["kube_proxy"].items()},
        data.get("timings", {}),
    )


def _compact(cells: list[Cell]) -> list[str]:
    """Cells grouped by everything but family and protocols: one line per group, with the
    families x protocols it covers."""
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for c in cells:
        s = c.shape
        groups.setdefault((s.policy, s.affinity, s.ranges, s.endpoints, c.client), []).append(c)
    out = []
    for (pol, aff, ranges, eps, who), cs in sorted(groups.items()):
        combos = sorted({(c.shape.family, c.shape.protocols) for c in cs})
        fams = sorted({f for f, _ in combos}, key=FAMILIES.index)
        protos = sorted({p for _, p in combos}, key=PROTOCOLS.index)
        if len(combos) == len(fams) * len(protos):
            what = f"{'|'.join(fams)} x {'|'.join(protos)}"
        else:
            what = ", ".join(f"{f}/{p}" for f, p in combos)
        out.append(f"*/{pol}/{aff}/{ranges}/*/{eps}@{who}  [{what}]")
    return out


def _signature(v: Verdict) -> str:
    """Both behaviours of a cell, per protocol, the same whatever the address family."""
    parts = []
    for impl, obs in (("portico", v.portico), ("kube-proxy", v.kube_proxy)):
        per = sorted({f"{k.split('/')[1]} {g.describe()}" for k, g in obs.items()})
        parts.append(f"{impl}: {'; '.join(per)}")
    return " | ".join(parts)


def table(verdicts: list[Verdict]) -> str:
    """The summary: counts, every intended difference, every defect with both behaviours."""
    by = {s: [v for v in verdicts if v.status == s] for s in ("equal", "intended", "defect")}
    lines = [
        f"cells run:                     {len(verdicts)}",
        f"equal to kube-proxy:           {len(by['equal'])}",
        f"differ on purpose:             {len(by['intended'])}",
        f"differ, defects:               {len(by['defect'])}",
    ]
    for d in INTENDED:
        hit = [v.cell for v in by["intended"] if d.name in v.why]
        if hit:
            lines += ["", f"ON PURPOSE: {d.name} ({len(hit)} cells)", f"  why: {d.reason}"]
            lines += [f"  {x}" for x in _compact(hit)]
    causes = [c.name for c in DEFECT_CAUSES] + ["not explained"]
    for cause in causes:
        hit = [v for v in by["defect"] if v.why and v.why[0] == cause]
        if not hit:
            continue
        text = next((c.explanation for c in DEFECT_CAUSES if c.name == cause), "")
        lines += ["", f"DEFECT: {cause} ({len(hit)} cells)"] + ([f"  why: {text}"] if text else [])
        sigs: dict[str, list[Cell]] = {}
        for v in hit:
            extra = f" (also: {', '.join(v.why[1:])})" if len(v.why) > 1 else ""
            sigs.setdefault(_signature(v) + extra, []).append(v.cell)
        for sig, cs in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {sig}")
            lines += [f"    {x}" for x in _compact(cs)]
    return "\n".join(lines)

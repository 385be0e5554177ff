"""kube-proxy v1.34's healthCheckNodePort and node /healthz answers, as pure functions.

Matched against kube-proxy source (kubernetes/kubernetes):

* pkg/proxy/healthcheck/service_health.go ``hcHandler.ServeHTTP``: headers Content-Type,
  X-Content-Type-Options, X-Load-Balancing-Endpoint-Weight (= the count, also on 503); 200 iff
  ``count != 0 && proxier healthy``; body a dedented, tab-indented template with ``%q`` names.
  When rules are stale the count is still reported (not 0) and ``serviceProxyHealthy`` is false.
* pkg/proxy/endpointslicecache.go / endpoints.go ``LocalReadyEndpoints``: per proxier (one per IP
  family, each with its own health server) the number of *distinct IPs* of that family whose
  endpoint is local and has ``conditions.ready`` true. A dual-stack pod (one address in each
  family's slice) therefore counts once on each family's listener. Terminating endpoints have
  ready=false (EndpointSlice controller), so they do not count even while serving; kube-proxy
  reads only ``ready`` (a ready+terminating endpoint, publishNotReadyAddresses, would count).
* pkg/proxy/healthcheck/proxy_health.go ``healthzHandler``: compact json.Marshal of
  ProxyHealth {lastUpdated, currentTime, nodeEligible, healthy, status{IPv4/IPv6:{lastUpdated,
  healthy}}}; 503 unless healthy and node eligible (not deleting, no ToBeDeletedByClusterAutoscaler
  taint); lastUpdated = now when healthy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate

from portico_common.model import Endpoint

TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
REASONS = {200: "OK", 304: "Not Modified", 404: "Not Found", 503: "Service Unavailable"}


def local_ready_endpoints(endpoints: Iterable[Endpoint], node: str, family: int) -> int:
    """kube-proxy's LocalReadyEndpoints for one Service, for the proxier of ``family``."""
    ips = set()
    for e in endpoints:
        if not node or e.node != node or not e.ready:
            continue
        ip = ipaddress.ip_address(e.address)
        if ip.version == family:
            ips.add(ip)
    return len(ips)


def counted_family(listener: int, service_families: Iterable[int]) -> int:
    """The family whose endpoints a ``healthCheckNodePort`` listener of family ``listener``
    counts for a Service of ``service_families``. kube-proxy's health server for a Service lives
    in the proxier of the Service's own family and counts that family's endpoints, whichever
    family the probe came over: an IPv6-only Service probed over a node's IPv4 address answers
    with its IPv6 endpoints. A dual-stack Service's listener of each family counts its own."""
    families = set(service_families)
    if listener in families or not families:
        return listener
    return min(families)


def service_families(vips: Iterable[str], endpoints: Iterable[Endpoint]) -> tuple[int, ...]:
    """A Service's IP families, as its addresses say (its endpoints' when it has none yet)."""
    families: set[int] = {ipaddress.ip_address(v).version for v in vips}
    if not families:
        families = {e.family for e in endpoints}
    return tuple(sorted(families))


def _go_q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def service_body(namespace: str, name: str, count: int, proxy_healthy: bool) -> bytes:
    return (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {_go_q(namespace)},\n'
        f'\t\t"name": {_go_q(name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {count},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    ).encode()


def http_response(
    status: int,
    body: bytes,
    extra: Mapping[str, str] | None = None,
    *,
    date: str | None = None,
    head: bool = False,
) -> bytes:
    """As Go's net/http writes it: handler headers sorted, then Date, then Content-Length."""
    hdrs = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
    hdrs.update(extra or {})
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
    lines += [f"{k}: {v}" for k, v in sorted(hdrs.items())]
    lines.append(f"Date: {date or formatdate(usegmt=True)}")
    lines.append(f"Content-Length: {len(body)}")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return out if head else out + body


def service_response(
    namespace: str,
    name: str,
    endpoints: Iterable[Endpoint],
    node: str,
    family: int,
    rules_current: bool,
    *,
    date: str | None = None,
) -> bytes:
    count = local_ready_endpoints(endpoints, node, family)
    status = 200 if count and rules_current else 503
    body = service_body(namespace, name, count, rules_current)
    return http_response(status, body, {"X-Load-Balancing-Endpoint-Weight": str(count)}, date=date)


def go_time(ns: int | None) -> str:
    """Go's time.Time JSON (RFC3339Nano, UTC); None is Go's zero time."""
    if ns is None:
        return "0001-01-01T00:00:00Z"
    import datetime as dt

    sec, frac = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    f = f"{frac:09d}".rstrip("0")
    return f"{base}.{f}Z" if f else f"{base}Z"


@dataclass(frozen=True)
class FamilyState:
    last_updated_ns: int
    healthy: bool


def node_eligible(deleting: bool, taints: Iterable[str]) -> bool:
    """kube-proxy's nodeEligible: not being deleted, not drained by the cluster autoscaler."""
    return not deleting and TO_BE_DELETED_TAINT not in set(taints)


def node_healthz(
    families: Mapping[int, FamilyState],
    now_ns: int,
    *,
    deleting: bool = False,
    taints: Iterable[str] = (),
    date: str | None = None,
) -> bytes:
    eligible = node_eligible(deleting, taints)
    healthy = all(f.healthy for f in families.values())
    last = max((f.last_updated_ns for f in families.values()), default=None)
    ok = healthy and eligible
    doc: dict[str, object] = {
        "lastUpdated": go_time(now_ns if ok else last),
        "currentTime": go_time(now_ns),
        "nodeEligible": eligible,
        "healthy": healthy,
    }
    if families:
        doc["status"] = {
            FAMILY_NAMES[k]: {"lastUpdated": go_time(v.last_updated_ns), "healthy": v.healthy}
            for k, v in sorted(families.items())
        }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return http_response(200 if ok else 503, body, date=date)


# A long poll of the aggregate is held at most this long, whatever the gateway asks.
LONG_POLL_MAX_SECONDS = 5.0


def query(path: str) -> dict[str, str]:
    """A request path's query parameters (the last of each name)."""
    if "?" not in path:
        return {}
    return dict(p.partition("=")[::2] for p in path.split("?", 1)[1].split("&"))


def validator(body: bytes) -> str:
    """The aggregate answer's validator: a hash of its body, so it changes whenever any byte
    of the answer does (counts, rulesCurrent, nodeEligible, lastApplied, generation)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def unless(path: str) -> str:
    """The validator a gateway sends (``?unless=<validator>``) of the answer it holds; ''."""
    return query(path).get("unless", "")


def long_poll(path: str) -> tuple[int, float] | None:
    """``(after, wait seconds)`` of an aggregate request ``...?after=<generation>&wait=<ms>``:
    the answer waits (at most ``wait``, capped at ``LONG_POLL_MAX_SECONDS``) until the agent's
    generation is no longer ``after``. None (answer at once) without both or with bad values."""
    params = query(path)
    after, wait = params.get("after", ""), params.get("wait", "")
    if not (after.isdigit() and wait.isdigit()):
        return None
    return int(after), min(int(wait) / 1000, LONG_POLL_MAX_SECONDS)

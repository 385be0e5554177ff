"""What the operator reads from a Service object: pure functions of its JSON."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .ipam import PREFER_DUAL_STACK, REQUIRE_DUAL_STACK, SINGLE_STACK, Claim
from .pools import IP
from .settings import (
    ANN_DRAIN_TIMEOUT,
    ANN_FORWARDING,
    ANN_IPS,
    ANN_POOL,
    ANN_SHARING,
    ANN_SOURCE_RANGES_LEGACY,
    FINALIZER,
    MAX_DRAIN_TIMEOUT,
)


class BadServiceInput(ValueError):
    """A user's annotation or field that the operator cannot use; reported, never raised out."""


def parse_source_range(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A ``loadBalancerSourceRanges`` value read as Kubernetes reads it (k8s.io/utils/net
    ParseCIDRSloppy, in the apiserver's validation and in kube-proxy): surrounding spaces go,
    an IPv4 octet's leading zeros are decimal (``198.018.001.002/32`` is 198.18.1.2/32, not
    octal), host bits are masked off, and the prefix length is required. Raises
    BadServiceInput otherwise."""
    t = text.strip()
    addr, slash, length = t.partition("/")
    octets = addr.split(".")
    if len(octets) == 4 and all(o.isdigit() and 1 <= len(o) <= 3 for o in octets):
        addr = ".".join(str(int(o)) for o in octets)
    try:
        if not slash or not length.isdigit():
            raise ValueError("no prefix length")
        return ipaddress.ip_network(f"{addr}/{int(length)}", strict=False)
    except ValueError:
        raise BadServiceInput(f"loadBalancerSourceRanges: {text!r} is not a CIDR") from None


def normal_source_range(text: str) -> str:
    """The canonical form of a source range (what the node agents are given), or the text as
    it is when it cannot be read (``ServiceView.input_error`` then reports it)."""
    try:
        return str(parse_source_range(text))
    except BadServiceInput:
        return text


@dataclass(frozen=True)
class Port:
    name: str
    protocol: str
    port: int
    node_port: int | None
    target_port: int | str | None


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    type: str
    load_balancer_class: str | None
    deleting: bool
    finalizers: tuple[str, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    selector: Mapping[str, str]
    ip_families: tuple[int, ...]
    ip_family_policy: str
    ports: tuple[Port, ...]
    external_traffic_policy: str
    health_check_node_port: int | None
    allocate_node_ports: bool
    session_affinity: str
    session_affinity_timeout: int | None
    source_ranges: tuple[str, ...]
    traffic_distribution: str | None
    load_balancer_ip: str | None
    ingress: tuple[dict[str, Any], ...]
    conditions: tuple[dict[str, Any], ...] = field(default=())
    created: str = ""  # metadata.creationTimestamp: the older of two claimants wins

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    def ingress_ips(self) -> tuple[IP, ...]:
        out = []
        for entry in self.ingress:
            try:
                out.append(ipaddress.ip_address(entry.get("ip", "")))
            except ValueError:
                continue
        return tuple(out)

    def served_by(self, load_balancer_class: str) -> bool:
        """Type LoadBalancer, and no class or ours. Others' Services are never touched."""
        return self.type == "LoadBalancer" and self.load_balancer_class in (
            None,
            load_balancer_class,
        )

    def forwarding_mode(self) -> str:
        mode = self.annotations.get(ANN_FORWARDING, "dsr").strip().lower()
        if mode not in ("dsr", "nat"):
            raise BadServiceInput(f"annotation {ANN_FORWARDING}={mode!r}: use dsr or nat")
        return mode.upper()

    def drain_timeout(self) -> int | None:
        """The annotation's seconds, None when absent; BadServiceInput when unusable."""
        text = self.annotations.get(ANN_DRAIN_TIMEOUT)
        if text is None:
            return None
        digits = text.strip().lower().removesuffix("s")
        if not digits.isascii() or not digits.isdigit() or int(digits) > MAX_DRAIN_TIMEOUT:
            raise BadServiceInput(
                f"annotation {ANN_DRAIN_TIMEOUT}={text!r}: use whole seconds from 0 to "
                f"{MAX_DRAIN_TIMEOUT}"
            )
        return int(digits)

    def requested_ips(self) -> tuple[IP, ...]:
        texts: list[str] = []
        if self.annotations.get(ANN_IPS):
            texts = [t.strip() for t in self.annotations[ANN_IPS].split(",") if t.strip()]
        elif self.load_balancer_ip:
            texts = [self.load_balancer_ip]
        out = []
        for t in texts:
            try:
                out.append(ipaddress.ip_address(t))
            except ValueError:
                where = ANN_IPS if self.annotations.get(ANN_IPS) else "spec.loadBalancerIP"
                raise BadServiceInput(f"{where}: {t!r} is not an IP address") from None
        return tuple(out)

    def input_error(self) -> str | None:
        """What the operator cannot use in the Service, or None."""
        try:
            self.forwarding_mode()
            self.drain_timeout()
            self.requested_ips()
            for r in self.source_ranges:
                parse_source_range(r)
        except BadServiceInput as e:
            return str(e)
        return None

    def claim(self, namespace_labels: Mapping[str, str], *, with_requests: bool = True) -> Claim:
        """Raises BadServiceInput for annotations that cannot be used."""
        return Claim(
            service=self.key,
            families=self.ip_families or (4,),
            family_policy=self.ip_family_policy,
            requested=self.requested_ips() if with_requests else (),
            pool=self.annotations.get(ANN_POOL) or None,
            sharing_key=self.annotations.get(ANN_SHARING) or None,
            ports=frozenset((p.protocol, p.port) for p in self.ports),
            traffic_policy=self.external_traffic_policy,
            selector_key=json.dumps(dict(sorted(self.selector.items()))),
            service_labels=self.labels,
            namespace_labels=namespace_labels,
        )


def _family(text: str) -> int:
    return 6 if text == "IPv6" else 4


def parse_service(obj: Mapping[str, Any]) -> ServiceView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ann = meta.get("annotations") or {}
    ranges = list(spec.get("loadBalancerSourceRanges") or [])
    if not ranges and ann.get(ANN_SOURCE_RANGES_LEGACY):
        ranges = [r.strip() for r in ann[ANN_SOURCE_RANGES_LEGACY].split(",") if r.strip()]
    affinity_cfg = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
    policy = spec.get("ipFamilyPolicy") or SINGLE_STACK
    if policy not in (SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK):
        policy = SINGLE_STACK
    return ServiceView(
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        generation=int(meta.get("generation") or 0),
        type=spec.get("type", "ClusterIP"),
        load_balancer_class=spec.get("loadBalancerClass"),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(ann),
        selector=dict(spec.get("selector") or {}),
        ip_families=tuple(_family(f) for f in spec.get("ipFamilies") or ["IPv4"]),
        ip_family_policy=policy,
        ports=tuple(
            Port(
                name=p.get("name", ""),
                protocol=p.get("protocol", "TCP"),
                port=int(p["port"]),
                node_port=p.get("nodePort"),
                target_port=p.get("targetPort"),
            )
            for p in spec.get("ports") or []
        ),
        external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
        health_check_node_port=spec.get("healthCheckNodePort"),
        allocate_node_ports=spec.get("allocateLoadBalancerNodePorts", True) is not False,
        session_affinity=spec.get("sessionAffinity") or "None",
        session_affinity_timeout=affinity_cfg.get("timeoutSeconds"),
        source_ranges=tuple(normal_source_range(r) for r in ranges),
        traffic_distribution=spec.get("trafficDistribution"),
        load_balancer_ip=spec.get("loadBalancerIP") or None,
        ingress=tuple((status.get("loadBalancer") or {}).get("ingress") or ()),
        conditions=tuple(status.get("conditions") or ()),
        created=meta.get("creationTimestamp") or "",
    )

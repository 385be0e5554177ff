"""What a new leader believes is allocated: a pure function of the cluster's state.

Run once, at the moment of taking the lead, from a fresh and complete listing (never from a
half-filled watch cache: an address that lies in no pool *yet known* would be dropped and
handed to someone else). Kubernetes is the source of truth: every served Service keeps the
addresses its status lists, and every address a LoadBalancer CR still carries stays out of the
pool until that CR is rewritten. Conflicts (two Services whose status lists one address, which
only a bug or a hand edit makes) are settled the same way on every replica: the older Service
keeps it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from . import ipam
from .pools import IP, Pool
from .service import BadServiceInput, ServiceView


def claim_for_restore(view: ServiceView, namespace_labels: Mapping[str, str]) -> ipam.Claim:
    """The Service's claim; with bad input (a typo in an annotation) the parts that can be
    read still say how it shares its address."""
    try:
        return view.claim(namespace_labels)
    except BadServiceInput:
        return view.claim(namespace_labels, with_requests=False)


def lb_vips(lb: Mapping[str, Any]) -> tuple[IP, ...]:
    """The addresses a LoadBalancer CR carries (what gateways announce)."""
    out = []
    for text in (lb.get("spec") or {}).get("vips") or ():
        try:
            out.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    return tuple(out)


def build_allocator(
    pools: Iterable[Pool],
    services: Iterable[ServiceView],
    lbs: Mapping[str, Mapping[str, Any]],
    namespaces: Mapping[str, Mapping[str, str]],
    load_balancer_class: str,
) -> ipam.Allocator:
    alloc = ipam.Allocator()
    alloc.set_pools(pools)
    ours = [v for v in services if v.served_by(load_balancer_class) or v.has_finalizer]
    ours.sort(key=lambda v: (v.created, v.key))
    claims = {}
    for view in ours:
        claim = claims[view.key] = claim_for_restore(view, namespaces.get(view.namespace, {}))
        if view.ingress_ips():
            alloc.restore(claim, view.ingress_ips())
    for key in sorted(lbs):
        vips = lb_vips(lbs[key])
        if not vips:
            continue
        claim = claims.get(key) or ipam.Claim(service=key)
        alloc.restore_withdrawal(claim, vips)
    return alloc

"""The CRDs' admission-time validation (x-kubernetes-validations, CEL) in the lab's real
apiserver: each bad VIPPool is refused with the message its rule gives, each good one accepted
(server-side dry runs: nothing is stored, no operator sees them). Each address case is also
given to the operator's own parser, which must agree: the apiserver refuses nothing the operator
would take, and the operator still refuses what an apiserver without the rules lets through.
What only the operator can judge (overlaps, IPv6 range order) passes admission and is left to
the Valid and Conflicting conditions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from portico_operator.pools import parse_pool

from .operator_harness import CRDS, GROUP, VERSION, Api

NOT_ADDRESS = "is not a CIDR (198.18.32.0/24, fd00:18::a:0/112), an address or a range first-last"

# Accepted by the apiserver and valid for the operator.
GOOD = {
    "v4-cidr": ["198.18.32.0/24"],
    "v4-wide-cidr": ["198.18.0.0/15"],
    "v6-cidr": ["fd00:18::a:0/112"],
    "v6-upper-case": ["FD00:18::A:0/112"],
    "v4-range": ["198.18.33.10-198.18.33.20"],
    "v4-range-across-octets": ["198.18.33.250-198.18.34.5"],
    "v4-one-address-range": ["198.18.33.20-198.18.33.20"],
    "v6-range": ["fd00:18::1-fd00:18::9"],
    "v4-address": ["198.18.33.5"],
    "v6-address": ["fd00:18::5"],
    "dual-stack-mix": ["198.18.32.0/24", "fd00:18::/112", "198.18.33.10-198.18.33.20"],
}

# Refused by the apiserver (the message its rule gives), and invalid for the operator too.
BAD = {
    "octet-over-255": (["198.18.40.300/24"], f'"198.18.40.300/24" {NOT_ADDRESS}'),
    "prefix-over-32": (["198.18.40.0/33"], f'"198.18.40.0/33" {NOT_ADDRESS}'),
    "a-name": (["lan"], f'"lan" {NOT_ADDRESS}'),
    "range-without-last": (["198.18.33.10-"], f'"198.18.33.10-" {NOT_ADDRESS}'),
    "three-part-range": (["198.18.33.1-198.18.33.2-198.18.33.3"], NOT_ADDRESS),
    "range-of-cidrs": (["198.18.33.0/24-198.18.34.0/24"], NOT_ADDRESS),
    "v4-host-bits": (["198.18.32.1/24"], '"198.18.32.1/24" has host bits set'),
    "v6-host-bits": (["fd00:18::1/112"], '"fd00:18::1/112" has host bits set'),
    "mixed-range": (["198.18.33.10-fd00:18::1"], '"198.18.33.10-fd00:18::1" mixes IPv4 and IPv6'),
    "v4-range-reversed": (
        ["198.18.33.20-198.18.33.10"],
        '"198.18.33.20-198.18.33.10": the first address is after the last',
    ),
    # The whole address is compared, not its last octet.
    "v4-range-reversed-across-octets": (
        ["198.18.34.5-198.18.33.250"],
        "the first address is after the last",
    ),
    "bad-second-entry": (["198.18.32.0/24", "198.18.33.1/24"], "spec.addresses[1]: "),
    "empty-entry": ([""], "spec.addresses[0]: "),
}

# Through admission; only the operator can tell (status condition Valid=False).
OPERATOR_ONLY = {
    "v6-range-reversed": ["fd00:18::9-fd00:18::1"],
    "overlap-within-pool": ["198.18.32.0/24", "198.18.32.128/25"],
}


def dry_run(api: Api, spec: dict[str, Any]) -> str | None:
    """Create a VIPPool with the server's validation but nothing stored; None if accepted,
    else "field: message" for each cause the apiserver gave."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VIPPool",
        "metadata": {"name": "cel-case"},
        "spec": spec,
    }
    try:
        api.custom.create_cluster_custom_object(GROUP, VERSION, "vippools", body, dry_run="All")
    except ApiException as e:
        assert e.status == 422, e.body
        causes = json.loads(e.body)["details"]["causes"]
        return "\n".join(f"{c['field']}: {c['message']}" for c in causes)
    return None


@pytest.mark.parametrize("case", sorted(GOOD))
def test_good_addresses_are_accepted(api: Api, case: str) -> None:
    addresses = GOOD[case]
    assert parse_pool(case, {"addresses": addresses}).errors == ()
    refused = dry_run(api, {"addresses": addresses})
    assert refused is None, refused


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_addresses_are_refused_with_their_message(api: Api, case: str) -> None:
    addresses, message = BAD[case]
    assert parse_pool(case, {"addresses": addresses}).errors  # the operator agrees
    refused = dry_run(api, {"addresses": addresses})
    assert refused is not None and message in refused, refused


@pytest.mark.parametrize("case", sorted(OPERATOR_ONLY))
def test_what_only_the_operator_judges_passes_admission(api: Api, case: str) -> None:
    addresses = OPERATOR_ONLY[case]
    assert parse_pool(case, {"addresses": addresses}).errors
    refused = dry_run(api, {"addresses": addresses})
    assert refused is None, refused


def test_bounds_and_selectors(api: Api) -> None:
    """The list bound that keeps the rules' cost estimate in budget, and LabelSelector's rule
    (In/NotIn need values, Exists/DoesNotExist take none), which the operator also applies."""
    many = [f"198.18.{i // 256}.{i % 256}" for i in range(257)]
    refused = dry_run(api, {"addresses": many})
    assert refused is not None and "must have at most 256 items" in refused, refused
    assert dry_run(api, {"addresses": many[:256]}) is None

    base = {"addresses": ["198.18.32.0/24"]}
    for selector in ("serviceSelector", "namespaceSelector"):
        for expr, message in (
            ({"key": "tier", "operator": "In"}, 'operator In on "tier" needs values'),
            ({"key": "tier", "operator": "NotIn", "values": []}, "needs values"),
            (
                {"key": "tier", "operator": "Exists", "values": ["edge"]},
                'operator Exists on "tier" takes no values',
            ),
        ):
            spec = {**base, selector: {"matchExpressions": [expr]}}
            assert parse_pool("sel", spec).errors
            refused = dry_run(api, spec)
            assert refused is not None and message in refused, (expr, refused)
        for expr in (
            {"key": "tier", "operator": "In", "values": ["edge"]},
            {"key": "tier", "operator": "DoesNotExist"},
        ):
            spec = {**base, selector: {"matchExpressions": [expr]}}
            assert parse_pool("sel", spec).errors == ()
            assert dry_run(api, spec) is None, expr


def test_the_example_pool_is_accepted(api: Api) -> None:
    example = yaml.safe_load(Path(CRDS / "examples" / "vippool.yaml").read_text())
    assert parse_pool("example", example["spec"]).errors == ()
    assert dry_run(api, example["spec"]) is None

"""loadBalancerSourceRanges as Kubernetes reads them (ParseCIDRSloppy), and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from portico_operator.service import BadServiceInput, parse_service, parse_source_range


def view(ranges: list[str] | None = None, annotation: str | None = None) -> Any:
    ann = (
        {"service.beta.kubernetes.io/load-balancer-source-ranges": annotation} if annotation else {}
    )
    spec: dict[str, Any] = {"type": "LoadBalancer", "ports": [{"port": 80}]}
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    return parse_service(
        {"metadata": {"name": "s", "namespace": "n", "annotations": ann}, "spec": spec}
    )


@pytest.mark.parametrize(
    "text,want",
    [
        ("198.018.001.002/32", "198.18.1.2/32"),  # leading zeros are decimal, not octal
        ("010.0.0.0/8", "10.0.0.0/8"),
        (" 198.18.0.0/15 ", "198.18.0.0/15"),
        ("198.18.1.7/24", "198.18.1.0/24"),  # host bits masked, as net.ParseCIDR does
        ("fd00:0018::1/64", "fd00:18::/64"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_read_as_kubernetes_reads_them(text: str, want: str) -> None:
    assert str(parse_source_range(text)) == want
    v = view([text])
    assert v.source_ranges == (want,) and v.input_error() is None


@pytest.mark.parametrize(
    "text",
    ["198.18.1.2", "198.18.1.256/32", "198.18.1/24", "x/8", "198.18.0.0/33", "fd00::/129", ""],
)
def test_what_kubernetes_would_not_read_is_bad_input_naming_the_value(text: str) -> None:
    with pytest.raises(BadServiceInput):
        parse_source_range(text)
    v = view(["198.18.0.0/15", text])
    err = v.input_error()
    assert err is not None and repr(text) in err and "loadBalancerSourceRanges" in err


def test_the_legacy_annotation_is_read_the_same_way() -> None:
    assert view(annotation="198.018.001.002/32, 10.0.0.0/8").source_ranges == (
        "198.18.1.2/32",
        "10.0.0.0/8",
    )
    assert view(annotation="10.0.0.0/8,nonsense").input_error() is not None


def test_cleared_ranges_are_none() -> None:
    assert view([]).source_ranges == () and view(None).source_ranges == ()

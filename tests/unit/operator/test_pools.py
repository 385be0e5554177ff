"""VIPPool parsing: ranges, errors, capacity with avoidBuggyIPs, ordering, overlaps."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_operator.pools import (
    IPRange,
    Pool,
    find_conflicts,
    is_buggy,
    parse_pool,
    parse_range,
)

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("198.18.32.0/24", "198.18.32.0", "198.18.32.255"),
        ("198.18.32.8/29", "198.18.32.8", "198.18.32.15"),
        ("198.18.32.7/32", "198.18.32.7", "198.18.32.7"),
        ("198.18.32.7", "198.18.32.7", "198.18.32.7"),
        (" 198.18.32.0/30 ", "198.18.32.0", "198.18.32.3"),
        ("198.18.33.10-198.18.33.20", "198.18.33.10", "198.18.33.20"),
        ("198.18.33.10 - 198.18.33.20", "198.18.33.10", "198.18.33.20"),
        ("198.18.33.10-198.18.33.10", "198.18.33.10", "198.18.33.10"),
        ("fd00:1::/120", "fd00:1::", "fd00:1::ff"),
        ("fd00:1::5-fd00:1::9", "fd00:1::5", "fd00:1::9"),
        # IPv6 written in another (valid) form is not "host bits set".
        ("FD00:1::/120", "fd00:1::", "fd00:1::ff"),
        ("fd00:0001:0:0::/120", "fd00:1::", "fd00:1::ff"),
        ("fd00:1::0/126", "fd00:1::", "fd00:1::3"),
    ],
)
def test_parse_range(text, first, last):
    r = parse_range(text)
    assert (r.first, r.last) == (ip(first), ip(last))
    assert r.size == int(ip(last)) - int(ip(first)) + 1
    assert r.family == ip(first).version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("198.18.32.1/24", "host bits"),
        ("fd00:1::1/120", "host bits"),
        ("198.18.32.0/33", None),
        ("198.18.300.0/24", None),
        ("not-an-address", None),
        ("198.18.33.20-198.18.33.10", "after the last"),
        ("198.18.33.10-fd00::1", "mixes"),
        ("", None),
    ],
)
def test_parse_range_invalid(text, message):
    with pytest.raises(ValueError, match=message):
        parse_range(text)


def test_range_contains_and_overlaps():
    r = parse_range("10.0.0.4-10.0.0.8")
    assert ip("10.0.0.4") in r and ip("10.0.0.8") in r
    assert ip("10.0.0.3") not in r and ip("10.0.0.9") not in r
    assert ip("::a00:5") not in r  # same integer, other family
    assert "10.0.0.5" not in r
    assert r.overlaps(parse_range("10.0.0.8/29"))
    assert not r.overlaps(parse_range("10.0.0.0/30"))
    assert not r.overlaps(parse_range("::/64"))


@pytest.mark.parametrize(
    ("address", "buggy"),
    [
        ("10.0.0.0", True),
        ("10.0.0.255", True),
        ("10.0.1.0", True),
        ("10.0.0.1", False),
        ("10.0.0.254", False),
        ("fd00::", False),
        ("fd00::ff", False),
    ],
)
def test_is_buggy(address, buggy):
    assert is_buggy(ip(address)) is buggy


def test_parse_pool_fields():
    p = parse_pool(
        "p",
        {
            "addresses": ["10.0.0.0/24", "fd00::/120"],
            "autoAssign": False,
            "avoidBuggyIPs": True,
            "priority": 7,
            "serviceSelector": {"matchLabels": {"app": "web"}},
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "Exists"}]},
        },
    )
    assert p.valid and p.errors == ()
    assert p.families() == {4, 6}
    assert (p.auto_assign, p.avoid_buggy_ips, p.priority) == (False, True, 7)
    assert p.matches({"app": "web"}, {"env": "prod"})
    assert not p.matches({"app": "web"}, {})
    assert not p.matches({}, {"env": "prod"})


def test_parse_pool_defaults():
    p = parse_pool("p", {"addresses": ["10.0.0.0/24"]})
    assert p.valid
    assert (p.auto_assign, p.avoid_buggy_ips, p.priority) == (True, False, None)
    assert p.matches({}, {})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "at least one"),
        ({}, "at least one"),
        ({"addresses": []}, "at least one"),
        ({"addresses": "10.0.0.0/24"}, "at least one"),
        ({"addresses": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"addresses": ["10.0.0.1/24"]}, "host bits"),
        ({"addresses": ["10.0.0.9-10.0.0.1"]}, "after the last"),
        ({"addresses": ["10.0.0.1-fd00::1"]}, "mixes"),
        ({"addresses": ["10.0.0.0/24", "10.0.0.128/25"]}, "overlap"),
        ({"addresses": ["10.0.0.0/24"], "priority": "high"}, "priority"),
        ({"addresses": ["10.0.0.0/24"], "priority": 1.5}, "priority"),
        (
            {
                "addresses": ["10.0.0.0/24"],
                "serviceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]},
            },
            "serviceSelector",
        ),
        (
            {
                "addresses": ["10.0.0.0/24"],
                "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            },
            "namespaceSelector",
        ),
        ({"addresses": ["10.0.0.0/24"], "serviceSelector": {"matchLabels": ["x"]}}, "matchLabels"),
    ],
)
def test_parse_pool_invalid(spec, message):
    p = parse_pool("p", spec)  # never raises
    assert not p.valid
    assert any(message in e for e in p.errors), p.errors


def test_parse_pool_keeps_good_ranges_next_to_bad_ones():
    p = parse_pool("p", {"addresses": ["10.0.0.0/30", "bogus"]})
    assert not p.valid
    assert p.ranges == (parse_range("10.0.0.0/30"),)


def test_sort_key_priority_then_none_then_name():
    pools = [
        Pool("none-b", ()),
        Pool("none-a", ()),
        Pool("p10", (), priority=10),
        Pool("p0", (), priority=0),
        Pool("neg", (), priority=-5),
        Pool("p5-b", (), priority=5),
        Pool("p5-a", (), priority=5),
    ]
    order = [p.name for p in sorted(pools, key=Pool.sort_key)]
    assert order == ["neg", "p0", "p5-a", "p5-b", "p10", "none-a", "none-b"]


def test_find_conflicts():
    a = parse_pool("a", {"addresses": ["10.0.0.0/24"]})
    b = parse_pool("b", {"addresses": ["10.0.0.200-10.0.1.10"]})
    c = parse_pool("c", {"addresses": ["10.0.1.100/30", "fd00::/120"]})
    d = parse_pool("d", {"addresses": ["fd00::80/121"]})
    e = parse_pool("e", {"addresses": ["10.0.2.0/24"]})
    out = find_conflicts([a, b, c, d, e])
    assert {k: sorted(v) for k, v in out.items()} == {
        "a": ["b"],
        "b": ["a"],
        "c": ["d"],
        "d": ["c"],
        "e": [],
    }


# -- capacity against brute force ----------------------------------------------------------------
def brute_capacity(pool: Pool, family: int) -> int:
    n = 0
    for r in pool.ranges:
        if r.family != family:
            continue
        for i in range(int(r.first), int(r.last) + 1):
            if pool.usable(ipaddress.ip_address(i) if family == 4 else ipaddress.IPv6Address(i)):
                n += 1
    return n


@st.composite
def small_ranges(draw, family):
    base = 0x0A000000 if family == 4 else int(ip("fd00::"))
    lo = draw(st.integers(0, 2048))
    n = draw(st.integers(1, 700))
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    return IPRange(cls(base + lo), cls(base + lo + n - 1))


@given(
    st.lists(st.one_of(small_ranges(4), small_ranges(6)), min_size=1, max_size=3),
    st.booleans(),
)
def test_capacity_matches_brute_force(ranges, avoid):
    pool = Pool("p", tuple(ranges), avoid_buggy_ips=avoid)
    for family in (4, 6):
        assert pool.capacity(family) == brute_capacity(pool, family)


@pytest.mark.parametrize(
    ("addresses", "avoid", "v4", "v6"),
    [
        (["10.0.0.0/24"], False, 256, 0),
        (["10.0.0.0/24"], True, 254, 0),
        (["10.0.0.0/23"], True, 508, 0),
        (["10.0.0.255-10.0.1.0"], True, 0, 0),
        (["10.0.0.1-10.0.0.254"], True, 254, 0),
        (["10.0.0.0/16"], True, 65536 - 512, 0),
        (["fd00::/120"], True, 0, 256),
        (["10.0.0.0/30", "fd00::/126"], True, 3, 4),
    ],
)
def test_capacity_table(addresses, avoid, v4, v6):
    p = parse_pool("p", {"addresses": addresses, "avoidBuggyIPs": avoid})
    assert (p.capacity(4), p.capacity(6)) == (v4, v6)

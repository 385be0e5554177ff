"""Kubernetes label selectors: matchLabels and matchExpressions, as the API server reads them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portico_operator.selectors import Requirement, Selector, SelectorError, parse_selector

LABELS = {"app": "web", "tier": "front", "empty": ""}


@pytest.mark.parametrize(
    ("raw", "labels", "expected"),
    [
        # An empty or missing selector matches everything, as in Kubernetes.
        (None, {}, True),
        ({}, LABELS, True),
        ({"matchLabels": {}}, LABELS, True),
        ({"matchLabels": {"app": "web"}}, LABELS, True),
        ({"matchLabels": {"app": "web", "tier": "front"}}, LABELS, True),
        ({"matchLabels": {"app": "web", "tier": "back"}}, LABELS, False),
        ({"matchLabels": {"app": "db"}}, LABELS, False),
        ({"matchLabels": {"app": "web"}}, {}, False),
        ({"matchLabels": {"empty": ""}}, LABELS, True),
        # In
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
            LABELS,
            True,
        ),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "nope", "operator": "In", "values": ["x"]}]}, LABELS, False),
        # NotIn: true when the label is missing
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]},
            LABELS,
            True,
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
            LABELS,
            False,
        ),
        (
            {"matchExpressions": [{"key": "nope", "operator": "NotIn", "values": ["x"]}]},
            LABELS,
            True,
        ),
        # Exists / DoesNotExist (an empty value still exists)
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "empty", "operator": "Exists"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "nope", "operator": "Exists"}]}, LABELS, False),
        ({"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, LABELS, False),
        # Everything is ANDed.
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["front"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            },
            LABELS,
            True,
        ),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}],
            },
            LABELS,
            False,
        ),
    ],
)
def test_matches(raw, labels, expected):
    assert parse_selector(raw).matches(labels) is expected


def test_none_labels_are_no_labels():
    assert parse_selector(None).matches(None)
    assert parse_selector({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}).matches(
        None
    )
    assert not parse_selector({"matchLabels": {"a": "b"}}).matches(None)


def test_match_labels_values_are_strings():
    sel = parse_selector({"matchLabels": {"port": 80}})
    assert sel.matches({"port": "80"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}, "operator"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, "operator"),
        ({"matchExpressions": [{"key": "a"}]}, "operator"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "without a key"),
        ({"matchExpressions": [{"key": "", "operator": "Exists"}]}, "without a key"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "needs values"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "needs values"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "no values"),
        (
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
            "no values",
        ),
        # Wrong shapes are SelectorErrors, not AttributeErrors (parse_pool must never raise).
        (["a"], "object"),
        ({"matchLabels": ["a"]}, "matchLabels"),
        ({"matchExpressions": {"key": "a"}}, "matchExpressions"),
        ({"matchExpressions": ["a"]}, "matchExpressions"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "xy"}]}, "list"),
    ],
)
def test_invalid(raw, message):
    with pytest.raises(SelectorError, match=message):
        parse_selector(raw)


def test_parsed_form():
    sel = parse_selector(
        {
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["2", "3"]}],
        }
    )
    assert sel == Selector(
        (Requirement("a", "In", frozenset({"1"})), Requirement("b", "NotIn", frozenset({"2", "3"})))
    )


# -- property: the parsed selector agrees with a direct reading of the spec ----------------------
KEYS = st.sampled_from(["a", "b", "c"])
VALS = st.sampled_from(["1", "2", "3"])
label_sets = st.dictionaries(KEYS, VALS, max_size=3)
expressions = st.one_of(
    st.fixed_dictionaries(
        {
            "key": KEYS,
            "operator": st.sampled_from(["In", "NotIn"]),
            "values": st.lists(VALS, min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries({"key": KEYS, "operator": st.sampled_from(["Exists", "DoesNotExist"])}),
)
selectors = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(KEYS, VALS, max_size=2),
        "matchExpressions": st.lists(expressions, max_size=3),
    },
)


def reference(raw, labels) -> bool:
    for k, v in (raw.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in raw.get("matchExpressions") or []:
        k, op = e["key"], e["operator"]
        ok = {
            "In": k in labels and labels[k] in e.get("values", []),
            "NotIn": k not in labels or labels[k] not in e.get("values", []),
            "Exists": k in labels,
            "DoesNotExist": k not in labels,
        }[op]
        if not ok:
            return False
    return True


@given(selectors, label_sets)
def test_matches_reference(raw, labels):
    assert parse_selector(raw).matches(labels) == reference(raw, labels)

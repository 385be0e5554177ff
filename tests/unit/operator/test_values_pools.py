"""The chart's pools ConfigMap -> VIPPools: parsing (a bad list is refused whole) and the plan
(only labelled pools are updated or deleted; a user's pool of a listed name is never touched)."""

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from portico_operator.values_pools import (
    POOLS_KEY,
    VALUES_LABEL,
    BadPools,
    Existing,
    desired_pools,
    existing_pool,
    plan,
    pool_body,
)


def data(pools: object) -> dict[str, str]:
    return {POOLS_KEY: yaml.safe_dump(pools)}


def test_the_charts_list_becomes_specs_by_name():
    listed = [
        {"name": "lan", "addresses": ["198.18.32.0/24"], "priority": 3},
        {"name": "v6", "addresses": ["fd00:18::/120"], "autoAssign": False},
    ]
    assert desired_pools(data(listed)) == {
        "lan": {"addresses": ["198.18.32.0/24"], "priority": 3},
        "v6": {"addresses": ["fd00:18::/120"], "autoAssign": False},
    }
    assert desired_pools(data([])) == {}
    assert desired_pools({POOLS_KEY: ""}) == {}  # an empty list as helm may render it


@pytest.mark.parametrize(
    ("pools_yaml", "says"),
    [
        ("- name: lan\n  addresses: [198.18.32.0/24\n", "not YAML"),
        ("name: lan\n", "must be a list"),
        ("- lan\n", "pools[0] must be a mapping"),
        ("- addresses: [198.18.32.0/24]\n", "pools[0].name is required"),
        ("- name: Lan_1\n  addresses: [198.18.32.0/24]\n", "not a DNS subdomain"),
        ("- name: lan\n", "pools[0].addresses"),
        ("- name: lan\n  addresses: []\n", "pools[0].addresses"),
        (
            "- name: lan\n  addresses: [198.18.32.0/24]\n"
            "- name: lan\n  addresses: [198.18.33.0/24]\n",
            "pools[1].name 'lan' is listed twice",
        ),
    ],
)
def test_a_bad_list_is_refused_whole_with_where(pools_yaml, says):
    with pytest.raises(BadPools, match=says.replace("[", r"\[").replace("]", r"\]")):
        desired_pools({POOLS_KEY: pools_yaml})


def test_a_configmap_without_the_key_is_refused():
    with pytest.raises(BadPools, match=POOLS_KEY):
        desired_pools({"other": "[]"})
    with pytest.raises(BadPools):
        desired_pools(None)


def test_existing_reads_the_label_and_version():
    obj = {"metadata": {"name": "a", "labels": {VALUES_LABEL: "true"}, "resourceVersion": "7"}}
    assert existing_pool(obj) == Existing("a", True, "7")
    assert existing_pool({"metadata": {"name": "b"}}) == Existing("b", False, "")
    assert not existing_pool({"metadata": {"name": "c", "labels": {VALUES_LABEL: "no"}}}).managed


def test_plan_creates_updates_deletes_and_leaves_users_pools():
    desired = {"new": {"addresses": ["198.18.32.0/28"]}, "ours": {"addresses": ["198.18.33.0/28"]}}
    desired["mine"] = {"addresses": ["198.18.34.0/28"]}
    existing = [
        Existing("ours", True, "5"),
        Existing("gone", True, "6"),
        Existing("mine", False, "7"),  # a user's pool of a listed name
        Existing("other", False, "8"),  # a user's pool, not listed
    ]
    p = plan(desired, existing)
    assert p.create == {"new": pool_body("new", desired["new"])}
    assert p.update == {"ours": pool_body("ours", desired["ours"], "5")}
    assert p.delete == ("gone",)
    assert p.taken == ("mine",)
    body = p.update["ours"]
    assert body["metadata"] == {
        "name": "ours",
        "labels": {VALUES_LABEL: "true"},
        "resourceVersion": "5",
    }
    assert (body["apiVersion"], body["kind"]) == ("portico.dev/v1alpha1", "VIPPool")
    assert "resourceVersion" not in p.create["new"]["metadata"]


names = st.sampled_from([f"p{i}" for i in range(8)])


@given(
    desired=st.dictionaries(names, st.just({"addresses": ["198.18.32.0/28"]})),
    existing=st.dictionaries(names, st.booleans()),
)
def test_plan_properties(desired, existing):
    pools = [Existing(n, managed, "1") for n, managed in existing.items()]
    p = plan(desired, pools)
    users = {n for n, managed in existing.items() if not managed}
    written = set(p.create) | set(p.update) | set(p.delete)
    # A user's pool is never written, whatever the values say.
    assert not written & users
    # Every listed pool is written or reported, exactly once.
    assert sorted([*p.create, *p.update, *p.taken]) == sorted(desired)
    assert set(p.taken) == users & set(desired)
    # Only labelled pools that are no longer listed go.
    assert set(p.delete) == {n for n, m in existing.items() if m and n not in desired}
    # Each body is the listed spec with the label.
    for name, body in {**p.create, **p.update}.items():
        assert body["spec"] == desired[name]
        assert body["metadata"]["labels"] == {VALUES_LABEL: "true"}
    # After the plan is carried out, a second plan only updates (no-op applies).
    after = [e for e in pools if e.name not in p.delete]
    after += [Existing(n, True, "2") for n in p.create]
    again = plan(desired, after)
    assert not again.create and not again.delete and again.taken == p.taken


def test_the_flag_and_its_variable_name_one_configmap(monkeypatch):
    from portico_operator.main import parse_args
    from portico_operator.values_sync import parse_configmap_ref

    assert parse_configmap_ref("portico-system/portico-pools") == (
        "portico-system",
        "portico-pools",
    )
    for bad in ("portico-pools", "/x", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_configmap_ref(bad)
    assert parse_args([]).pools_configmap == ""
    monkeypatch.setenv("PORTICO_POOLS_CONFIGMAP", "ns/cm")
    assert parse_args([]).pools_configmap == "ns/cm"

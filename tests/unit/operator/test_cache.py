"""The operator's caches (pure): what each event changes, late events, and the corrections a
fresh listing brings."""

from __future__ import annotations

from typing import Any

from portico_operator.cache import Change, ClusterCache


def svc(name: str, rv: str, uid: str = "u1", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": uid},
        "spec": {"type": "LoadBalancer", **spec},
    }


def gone(name: str, rv: str = "", ns: str | None = "ns") -> dict[str, Any]:
    meta = {"name": name, "resourceVersion": rv} if rv else {"name": name}
    return {"metadata": {**meta, **({"namespace": ns} if ns else {})}}


def test_a_late_event_changes_nothing() -> None:
    c = ClusterCache()
    assert c.apply("services", "ADDED", svc("a", "10")) == Change("services", "ns/a", False, True)
    assert c.apply("services", "MODIFIED", svc("a", "12", uid="u2")) is not None
    assert c.apply("services", "MODIFIED", svc("a", "11")) is None  # older: a lagging watch
    assert c.services["ns/a"].uid == "u2"
    # a lagging deletion of the older incarnation does not drop the new one
    assert c.apply("services", "DELETED", gone("a", "11")) is None
    assert "ns/a" in c.services
    # a listing's correction (no resourceVersion) always applies
    assert c.apply("services", "DELETED", gone("a")) == Change("services", "ns/a", True, True)
    assert "ns/a" not in c.services


def test_only_what_the_operator_acts_on_counts_as_changed() -> None:
    c = ClusterCache()
    pool = {"metadata": {"name": "p", "resourceVersion": "1"}, "spec": {"addresses": ["x"]}}
    assert c.apply("pools", "ADDED", pool).changed  # type: ignore[union-attr]
    status_only = {**pool, "metadata": {"name": "p", "resourceVersion": "2"}, "status": {"a": 1}}
    assert not c.apply("pools", "MODIFIED", status_only).changed  # type: ignore[union-attr]
    ns = {"metadata": {"name": "team", "resourceVersion": "3", "labels": {"a": "1"}}}
    assert c.apply("namespaces", "ADDED", ns).changed  # type: ignore[union-attr]
    same = {"metadata": {"name": "team", "resourceVersion": "4", "labels": {"a": "1"}}}
    assert not c.apply("namespaces", "MODIFIED", same).changed  # type: ignore[union-attr]
    assert c.apply("noderules", "ADDED", ns) is None  # not cached here


def test_slices_are_kept_by_service_and_forgotten_by_name() -> None:
    c = ClusterCache()
    sl = {
        "metadata": {
            "name": "a-x1",
            "namespace": "ns",
            "resourceVersion": "5",
            "labels": {"kubernetes.io/service-name": "a"},
        },
        "endpoints": [{"addresses": ["198.19.1.2"], "nodeName": "node-1"}],
    }
    assert c.apply("slices", "ADDED", sl) == Change("slices", "ns/a", False, True)
    assert [e.address for e in c.slices["ns/a"]["a-x1"]] == ["198.19.1.2"]
    # a deletion without labels (a listing's correction) still finds its Service
    assert c.apply("slices", "DELETED", gone("a-x1")) == Change("slices", "ns/a", True, True)
    assert "ns/a" not in c.slices
    orphan = {"metadata": {"name": "o", "namespace": "ns", "resourceVersion": "6"}}
    assert c.apply("slices", "ADDED", orphan) is None  # no Service: nothing to keep


def test_corrections_take_what_the_watch_missed_and_drop_what_vanished() -> None:
    c = ClusterCache()
    c.apply("services", "ADDED", svc("kept", "1"))
    c.apply("services", "ADDED", svc("vanished", "2"))
    since = c.stamp
    c.apply("services", "ADDED", svc("late", "9"))  # after the listing began: newer than it
    listing = {"services": [svc("kept", "1"), svc("missed", "3")]}
    events = [(k, t, o["metadata"]["name"]) for k, t, o in c.corrections(listing, since)]
    assert events == [("services", "MODIFIED", "missed"), ("services", "DELETED", "vanished")]
    for kind, event_type, obj in c.corrections(listing, since):
        c.apply(kind, event_type, obj)
    assert sorted(c.services) == ["ns/kept", "ns/late", "ns/missed"]

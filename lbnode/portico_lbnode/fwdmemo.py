"""What one render of the gateway's forwarding table made, kept for the next (pure).

A new Service changes a port or two, yet ``fwdrules.render_fwd`` renders the whole table: every
port's rules as canonical JSON text, every slot map's 4,093 elements, each slot list's text.
With a ``RenderMemo`` passed from render to render, whatever is rendered from the same input as
last time is taken from the last render instead (bench/gateway_e2e.py: the new Service's
programming pass waited for the whole table, 26 ms at 100 Services, and the probe answers that
came meanwhile waited for the GIL). The output is the same with or without a memo.

A memo keeps exactly what the last render used (each render starts a new generation; what it
did not look up is forgotten at its end), so it is as large as one table. Entries keyed by a
tuple's ``id`` hold the tuple itself: while held, the id cannot be reused by another object.
Values are shared between renders and must not be changed by their users.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Generation(Generic[K, V]):
    """A dict whose entries live as long as each render looks them up."""

    def __init__(self) -> None:
        self._old: dict[K, V] = {}
        self._new: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        found = self._new.get(key)
        if found is None:
            found = self._old.get(key)
            if found is not None:
                self._new[key] = found
        return found

    def put(self, key: K, value: V) -> V:
        self._new[key] = value
        return value

    def end(self) -> None:
        """The render is done: what it did not use goes."""
        self._old, self._new = self._new, {}

    def __len__(self) -> int:
        return len(self._new) + sum(1 for k in self._old if k not in self._new)


class RenderMemo:
    """Pass the same one to each ``render_fwd`` of a table (one render at a time)."""

    def __init__(self) -> None:
        # id(slot tuple) -> (the tuple, its text content): the slot list as text
        self.slot_texts: Generation[int, tuple[tuple[Any, ...], Any]] = Generation()
        # id(slot tuple) -> (the tuple, its distinct addresses)
        self.slot_nodes: Generation[int, tuple[tuple[Any, ...], tuple[Any, ...]]] = Generation()
        # (id(text content), its nodes' ids) -> (the content, the slot map's elements)
        self.slot_elements: Generation[
            tuple[int, tuple[tuple[str, str], ...]], tuple[Any, dict[str, str | None]]
        ] = Generation()
        # (service, VIP, protocol, port) -> port id
        self.port_ids: Generation[tuple[Any, ...], str] = Generation()
        # what a port's rules depend on -> (its rules, its dispatch element key and value)
        self.port_rules: Generation[tuple[Any, ...], tuple[tuple[str, ...], str, str]] = (
            Generation()
        )
        # (family, source ranges) -> the source set's elements
        self.sources: Generation[tuple[Any, ...], dict[str, str | None]] = Generation()
        # The last render's output and its slot maps (name -> content), which the next render
        # would otherwise read back from that output (``FwdRules.slot_maps``) when it is passed
        # as ``previous``.
        self.last: object | None = None
        self.last_slot_maps: dict[str, Any] = {}

    def end(self, out: object, slot_maps: dict[str, Any]) -> None:
        for g in (
            self.slot_texts,
            self.slot_nodes,
            self.slot_elements,
            self.port_ids,
            self.port_rules,
            self.sources,
        ):
            g.end()
        self.last, self.last_slot_maps = out, slot_maps

    def slot_maps_of(self, previous: object) -> dict[str, Any] | None:
        """The slot maps of ``previous`` when it is the last render's output, else None."""
        return self.last_slot_maps if previous is not None and previous is self.last else None

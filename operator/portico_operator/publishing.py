"""Stage two, per Service: the finalizer, the node rules and the LoadBalancer CR, from stage one's
last outcome. A Service's addresses are released here once its CR no longer carries them.
What the CR and the rules say is pure (``lbspec``, ``noderules_push``).

A new Service passes here about three times: when stage one allocated it and wrote its status
(its node rules are wanted then, and the finalizer written; the CR with it when the rules are
written already), when the rules writer wrote them (the CR is written, if it
was not), when the agents report them applied (Programmed turns True); and, if a node had not
applied them yet when one of these looked, once more ``PROGRAMMED_GRACE_SECONDS`` after they
were written (Programmed turns False if it still has not).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from portico_common.clock import now_rfc3339 as now
from portico_common.conditions import condition
from portico_common.model import Endpoint

from .cache import ClusterCache
from .decisions import Outcome
from .lbspec import lb_conditions, lb_status_current, render_spec
from .noderules_push import node_rules_entry
from .reachability import reachable_condition
from .rules_writer import NodeRulesWriter
from .service import ServiceView
from .settings import OperatorSettings
from .term import Term
from .withdrawing import Withdrawing
from .writes import Writes

# What a NodeRules entry and a LoadBalancer CR spec say that is not the Service's
# configuration: what is rendered afresh while a new term keeps a bad-input Service's
# configuration as written.
ENTRY_NOT_CONFIG = ("namespace", "name", "vips", "endpoints")
SPEC_NOT_CONFIG = ("service", "vips", "pool", "backends", "excludedNodes")


class Publishing:
    def __init__(
        self,
        term: Term,
        cache: ClusterCache,
        writes: Writes,
        rules: NodeRulesWriter,
        withdrawing: Withdrawing,
        settings: OperatorSettings,
    ) -> None:
        self.term = term
        self.cache = cache
        self.writes = writes
        self.rules = rules
        self.withdrawing = withdrawing
        self.settings = settings

    async def publish(self, key: str) -> None:
        view = self.cache.services.get(key)
        outcome = self.term.outcome(key)
        if outcome is None:
            if self.term.withdrawals.deferred(key):
                # The publish the withdrawal waited for failed before it could finish it (a
                # conflict, say): this retry does, once the CR is surely gone.
                await self.withdrawing.abandon(key, view)
            return
        if view is None or view.deleting:
            return
        if not view.served_by(self.settings.load_balancer_class):
            return
        # The last valid configuration while the input is bad: as stage one judged it, or as
        # the view says already (a publish may run before stage one has seen an edit).
        bad = outcome.input_error or view.input_error()
        basis = (self._good(key) or view) if bad else view
        # One reading of the endpoints for the CR and the node rules (a slice that changes
        # meanwhile queues this publish again).
        endpoints = [ep for eps in self.cache.slices.get(key, {}).values() for ep in eps]
        # Endpoints on a node the gateway cannot reach: every other node leaves them out.
        down = self.cache.reachability.unreachable
        if down:
            endpoints = [
                dataclasses.replace(ep, unreachable=True) if ep.node in down else ep
                for ep in endpoints
            ]
        # A new term (a restart, the Lease moving) knows no last valid configuration: what is
        # in force is what the previous leader wrote. Rendered from the bad input it would be
        # replaced (a new port, a raw range) while the Valid condition says it stays, so the
        # configuration written is kept, and only what is not configuration follows (the
        # addresses, the endpoints, the nodes). Nothing written (never valid): as rendered.
        keep = bool(bad) and self._good(key) is None
        entry = (
            node_rules_entry(basis, outcome.vips, outcome.mode, endpoints) if outcome.vips else None
        )
        if keep and entry is not None and key in self.rules.written:
            entry = {**self.rules.written[key], **{k: entry[k] for k in ENTRY_NOT_CONFIG}}
        if entry is not None:
            # The node rules first, then the CR. The gateway forwards a Service's addresses to
            # every node that passes its health probe, and for a Cluster Service that is every
            # node whose agent's rules are current, whether they carry this Service yet or not:
            # a CR written first would send its traffic to nodes that drop it. Written, the
            # entry queues this publish again (``on_written``), which writes the CR.
            self.rules.want(key, entry)
        held = entry is None or self.rules.holds(key, entry)
        if not view.has_finalizer:
            # The finalizer while the entry is being written, and with the CR when the entry
            # is written already (a new Service's traffic waited for these writes one after
            # the other). Should the Service go meanwhile, its withdrawal removes the entry and
            # the CR (``forget_gone``: as for a Service deleted before it had our finalizer).
            finalizing = self.writes.add_finalizer(view)
            with_cr = held
            if with_cr:
                await asyncio.gather(
                    finalizing, self._apply_lb(view, basis, outcome, endpoints, keep)
                )
            else:
                await finalizing
            if self.term.outcome(key) is None:
                await self._withdrawn(key, view)
                return
            refreshed = self.cache.services[key]
            basis = refreshed if basis is view else basis
            view = refreshed
            if not with_cr and entry is not None and self.rules.holds(key, entry):
                held = True  # written meanwhile
                await self._apply_lb(view, basis, outcome, endpoints, keep)
        elif held:
            await self._apply_lb(view, basis, outcome, endpoints, keep)
        if not held:
            return
        if self.term.outcome(key) is None:
            await self._withdrawn(key, view)  # while this wrote: do not leave a CR behind
            return
        if entry is None:
            self.rules.want(key, None)  # after the CR: the gateway stops forwarding first
        self.withdrawing.published(key, outcome.vips, view)
        if outcome.mode == "NAT":
            self._check_node_ports(view)

    async def _withdrawn(self, key: str, view: ServiceView) -> None:
        """Stage one withdrew the Service while this publish wrote."""
        self.rules.want(key, None)
        await self.withdrawing.abandon(key, view)

    def _good(self, key: str) -> ServiceView | None:
        st = self.term.states.get(key)
        return st.good if st is not None else None

    async def _apply_lb(
        self,
        view: ServiceView,
        basis: ServiceView,
        outcome: Outcome,
        endpoints: list[Endpoint],
        keep: bool = False,
    ) -> None:
        """The CR: identity from ``view``, configuration from ``basis`` (the last valid one), or,
        with ``keep``, the configuration the CR already has (see ``publish``)."""
        vips, pool, mode = outcome.vips, outcome.pool, outcome.mode
        spec = render_spec(basis, vips, pool, mode, self.cache.nodes.values(), endpoints)
        current = self.cache.lbs.get(view.key) or {}
        if keep and ((current.get("spec") or {}).get("service") or {}).get("uid") == view.uid:
            spec = {**current["spec"], **{k: spec[k] for k in SPEC_NOT_CONFIG}}
        generation = (current.get("metadata") or {}).get("generation")
        if current.get("spec") != spec:
            current = await self.writes.apply_lb_spec(view, spec)
            generation = current["metadata"].get("generation")
        previous = (current.get("status") or {}).get("conditions") or []
        t, gen = now(), generation or 0
        programmed = self.rules.programmed_condition(view.key, vips, spec, gen, t, previous)
        conds = lb_conditions(
            basis,
            outcome.allocated,
            outcome.reason,
            outcome.message,
            outcome.input_error,
            mode,
            gen,
            t,
            previous,
            programmed,
        )
        reach = reachable_condition(self.cache.reachability, (ep.node for ep in endpoints))
        conds.append(condition("NodesReachable", *reach, gen, t, previous))
        self._reachability_event(view, reach, previous)
        if lb_status_current(current.get("status"), conds, generation):
            return
        await self.writes.apply_lb_status(view, generation, conds)

    def _reachability_event(
        self, view: ServiceView, reach: tuple[bool, str, str], previous: list[Any]
    ) -> None:
        """An Event when the Service's endpoints go out for an unreachable node, and when they
        are back: once per change of the CR's NodesReachable reason."""
        before = next((c for c in previous if c.get("type") == "NodesReachable"), None)
        ok, reason, message = reach
        if before is None and ok:
            return  # a new CR, or an older operator's: nothing happened to tell
        if before is not None and before.get("reason") == reason:
            return
        if not ok:
            self.writes.service_event(view, "Warning", reason, message)
        elif before is not None and before.get("reason") == "NodesUnreachable":
            self.writes.service_event(view, "Normal", reason, message)

    def _check_node_ports(self, view: ServiceView) -> None:
        missing = [p for p in view.ports if not p.node_port]
        if not missing or view.allocate_node_ports:
            return
        st = self.term.state(view.key)
        if st.node_ports_reported:
            return
        st.node_ports_reported = True
        self.writes.service_event(
            view,
            "Warning",
            "NodePortsMissing",
            "forwarding mode NAT sends traffic to nodePorts, but "
            "allocateLoadBalancerNodePorts is false and ports "
            f"{', '.join(str(p.port) for p in missing)} have none: set it to true or "
            "give those ports a nodePort",
        )

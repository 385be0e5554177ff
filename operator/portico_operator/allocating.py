"""Stage one, per Service: allocate (or keep, or withdraw) its addresses and write its status,
which is what a user's `kubectl apply` waits for. The outcome is recorded for stage two
(``publishing``), which writes the LoadBalancer CR. What to decide is ``decisions``; a Service
that is gone or no longer ours is handed to ``withdrawing``.
"""

from __future__ import annotations

import json
import logging
import time

from portico_common.clock import now_rfc3339 as now

from . import decisions, ipam
from .cache import ClusterCache
from .lbspec import service_status, status_differs
from .metrics import Metrics
from .service import ServiceView
from .settings import OperatorSettings
from .term import Term
from .withdrawing import Withdrawing
from .writes import Writes

# One JSON line per reconcile with where the time went (enabled by --trace-timings).
timing_log = logging.getLogger("portico.timing")

# Allocation errors that are the user's typo, not the cluster's state: an addressed Service
# keeps its address through them.
BAD_INPUT_REASONS = (ipam.INVALID_REQUEST, ipam.WRONG_FAMILY)


class Allocating:
    def __init__(
        self,
        term: Term,
        cache: ClusterCache,
        writes: Writes,
        withdrawing: Withdrawing,
        settings: OperatorSettings,
        metrics: Metrics,
    ) -> None:
        self.term = term
        self.alloc = term.alloc
        self.cache = cache
        self.writes = writes
        self.withdrawing = withdrawing
        self.settings = settings
        self.metrics = metrics

    async def reconcile(self, key: str) -> None:
        t_start = time.time()
        st = self.term.states.get(key)
        t_received = st.received if st is not None else None  # the event that queued this
        view = self.cache.services.get(key)
        step = decisions.reconcile_step(view, self.settings.load_balancer_class)
        if step is decisions.Step.FORGET:
            await self.withdrawing.forget_gone(key)
            return
        assert view is not None
        if step is decisions.Step.WITHDRAW:
            await self.withdrawing.withdraw(view)
            return
        self.metrics.services.set(
            sum(1 for k in self.alloc.by_service if not k.startswith(ipam.WITHDRAWING))
        )

        input_error = view.input_error()
        if input_error is not None:
            await self._bad_input(view, input_error)
            return
        mode = view.forwarding_mode()
        try:
            result = self.alloc.assign(view.claim(self.cache.namespaces.get(view.namespace, {})))
        except ipam.AllocationError as e:
            if e.reason in BAD_INPUT_REASONS:
                await self._bad_input(view, str(e), e.reason)
            else:
                await self._fail(view, mode, e.reason, str(e))
            return
        st = self.term.state(key)
        st.good = view
        st.reported = None
        self.term.withdrawals.met(key)
        old = set(view.ingress_ips())
        vips = result.ips
        pools = sorted(set(result.pools))
        message = decisions.allocation_message(vips, pools, (w.message for w in result.warnings))
        desired = service_status(view, vips, mode, True, "Allocated", message, now())
        t_patch = time.time()
        patched = status_differs(view, desired)
        if patched:
            view = self.writes.observed(await self.writes.patch_service_status(view, desired))
        t_patched = time.time()
        if set(vips) != old:
            self.term.dirty_pools = True
            for ip in set(vips) - old:
                self.metrics.allocations.labels(f"ipv{ip.version}").inc()
            self.writes.service_event(view, "Normal", "Allocated", f"Allocated {message}")
        self.term.state(key).outcome = decisions.allocated(vips, pools, mode, message)
        self.term.publish.add(key)
        if timing_log.isEnabledFor(logging.INFO):
            timing_log.info(
                "%s",
                json.dumps(
                    {
                        "key": key,
                        "received": t_received,
                        "start": t_start,
                        "patch": t_patch,
                        "patched": t_patched if patched else None,
                        "end": time.time(),
                        "services": len(self.cache.services),
                    }
                ),
            )

    async def _bad_input(
        self, view: ServiceView, error: str, reason: str = ipam.INVALID_REQUEST
    ) -> None:
        """An annotation or field that cannot be used. A Service that has addresses keeps them
        and its last valid configuration; one that has none waits, as for any unmet request."""
        key = view.key
        kept = decisions.kept_on_bad_input(
            view.ingress_ips(),
            self.alloc.holds(key),
            self.term.outcome(key),
            self._announced_mode(view),
            error,
            self.alloc.pool_of,
        )
        if kept is None:
            await self._fail(view, self._announced_mode(view), reason, error, input_error=error)
            return
        vips, mode, message = kept.vips, kept.mode, kept.message
        desired = service_status(view, vips, mode, True, "Allocated", message, now(), error)
        if status_differs(view, desired):
            view = self.writes.observed(await self.writes.patch_service_status(view, desired))
        st = self.term.state(key)
        if decisions.reason_changed(st.reported, reason, error):
            st.reported = f"{reason}:{error}"
            self.writes.service_event(
                view,
                "Warning",
                reason,
                f"{error}; the Service keeps {', '.join(map(str, vips))} and its last valid "
                "configuration until this is fixed",
            )
        st.outcome = kept
        self.term.publish.add(key)

    def _announced_mode(self, view: ServiceView) -> str:
        """The forwarding mode in force: the CR's, or else what the ingress says."""
        lb = self.cache.lbs.get(view.key) or {}
        return decisions.mode_in_force(lb.get("spec"), view.ingress)

    async def _fail(
        self,
        view: ServiceView,
        mode: str,
        reason: str,
        message: str,
        input_error: str | None = None,
    ) -> None:
        key = view.key
        # What it held stays out of the pool until the CR no longer carries it (publish); it is
        # retried as soon as possible: at any release or pool change.
        self.term.withdrawals.unmet(key)
        self.metrics.failures.labels(reason).inc()
        desired = service_status(view, (), mode, False, reason, message, now(), input_error)
        if status_differs(view, desired):
            view = self.writes.observed(await self.writes.patch_service_status(view, desired))
        st = self.term.state(key)
        if decisions.reason_changed(st.reported, reason, message):
            st.reported = f"{reason}:{message}"
            self.writes.service_event(view, "Warning", reason, message)
        st.outcome = decisions.failed(mode, reason, message, input_error)
        self.term.publish.add(key)

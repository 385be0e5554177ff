"""What one leadership term owns: the allocator, the withdrawal bookkeeping, the two work queues
and what the leader remembers of each Service. A take-over starts a new term, so nothing a
previous term computed survives it, and forgetting a Service is one ``pop``. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ipam
from .decisions import Outcome
from .service import ServiceView
from .withdrawals import Withdrawals
from .workqueue import WorkQueue


@dataclass
class ServiceState:
    """What the leader remembers of one Service between reconciles."""

    outcome: Outcome | None = None  # stage one's last result, for stage two (the CR)
    good: ServiceView | None = None  # the last valid configuration
    reported: str | None = None  # the last failure reported ("reason:message"): Events once
    node_ports_reported: bool = False  # the NodePortsMissing Event was sent
    failures: dict[str, int] = field(default_factory=dict)  # worker kind -> failures in a row
    received: float | None = None  # wall time the Service's last event arrived

    def blank(self) -> bool:
        return self == ServiceState()


@dataclass
class Term:
    alloc: ipam.Allocator
    withdrawals: Withdrawals = field(init=False)
    states: dict[str, ServiceState] = field(default_factory=dict)
    # Two stages: ``queue`` allocates and writes the Service status (what a user's `kubectl
    # apply` waits for); ``publish`` adds the finalizer and writes the LoadBalancer CR.
    # Splitting them keeps CR writes from delaying the next Service's address.
    queue: WorkQueue = field(default_factory=WorkQueue)
    publish: WorkQueue = field(default_factory=WorkQueue)
    dirty_pools: bool = True  # the VIPPools' status is to be written again

    def __post_init__(self) -> None:
        self.withdrawals = Withdrawals(self.alloc)

    # -- per Service -------------------------------------------------------------------------------
    def state(self, key: str) -> ServiceState:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = ServiceState()
        return st

    def outcome(self, key: str) -> Outcome | None:
        st = self.states.get(key)
        return st.outcome if st is not None else None

    def forget(self, key: str) -> None:
        """What the leader remembers of the Service goes (it is gone, or no longer ours)."""
        self.states.pop(key, None)

    # -- the workers' failure counts (``workers.Failures``) ----------------------------------------
    def failed(self, kind: str, key: str) -> int:
        failures = self.state(key).failures
        n = failures[kind] = failures.get(kind, 0) + 1
        return n

    def succeeded(self, kind: str, key: str) -> None:
        st = self.states.get(key)
        if st is None:
            return
        st.failures.pop(kind, None)
        if st.blank():
            del self.states[key]  # a Service forgotten while it failed leaves nothing behind

"""How often the NodeRules writer may write: a token bucket (pure; the caller passes the time).

``burst`` writes may follow one another at once, then one per ``interval`` on average. A new
Service makes two writes in quick succession: its entry as soon as its address is allocated,
and again when its EndpointSlice (which comes at about the same time) adds the endpoints. With
one write per interval and no burst, the second waited most of the interval, and the nodes got
the endpoints the new Service's first answer needs up to 50 ms later. A Deployment's rollout is
still a few writes, as the rate stays one per interval. ``full`` says the writer has been quiet:
then a change need not wait for others to join it.
"""

from __future__ import annotations


class WriteBudget:
    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self.at: float | None = None  # when the last write was counted

    def full(self, now: float) -> bool:
        """No write for long enough that the whole burst is available (the writer is quiet)."""
        if self.at is None or self.interval <= 0:
            return True
        return self.tokens + (now - self.at) / self.interval >= self.burst

    def spend(self, now: float) -> float:
        """Counts one write at ``now``; returns the seconds to wait before the next one."""
        if self.at is not None and self.interval > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.interval)
        self.at = now
        self.tokens -= 1
        return max(0.0, (1 - self.tokens) * self.interval)

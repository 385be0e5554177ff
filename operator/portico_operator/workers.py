"""The workers' loop: take a key from a queue, run its reconcile while this replica leads,
retry with backoff when it fails. The retry policy is pure (``retry_after``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from portico_common.kube import ApiError

from .errors import NotLeading
from .workqueue import WorkQueue

log = logging.getLogger("portico.operator")

RETRY_SECONDS = (0.2, 0.5, 1, 2, 5, 10, 30)
CONFLICT_RETRY_SECONDS = 0.05  # a 409: the watch brings the newer object within milliseconds


class Failures(Protocol):
    """Each key's failures in a row, per kind of worker (shared by the workers of a term)."""

    def failed(self, kind: str, key: str) -> int:
        """One more failure; returns how many in a row."""
        ...

    def succeeded(self, kind: str, key: str) -> None: ...


def retry_after(failures: int, status: int | None) -> float:
    """Seconds before the ``failures``-th failed attempt (1, 2, ...) is tried again. A conflict
    means our view was stale, and the watch brings the new one at once: the first two are
    retried almost at once; anything else backs off up to 30 s."""
    if status == 409 and failures < 3:
        return CONFLICT_RETRY_SECONDS
    return RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]


async def run_worker(
    queue: WorkQueue,
    reconcile: Callable[[str], Awaitable[None]],
    kind: str,
    *,
    leading: Callable[[], bool],
    step_down: Callable[[], None],
    failures: Failures,
    depth: Any,
    seconds: Any,
) -> None:
    """One worker, forever. ``depth`` and ``seconds`` are the queue-depth gauge and the reconcile
    histogram (Prometheus children)."""
    while True:
        depth.set(len(queue))
        key = await queue.get()
        depth.set(len(queue))
        try:
            if leading():
                t0 = time.perf_counter()
                await reconcile(key)
                seconds.observe(time.perf_counter() - t0)
            failures.succeeded(kind, key)
        except NotLeading:
            # This term is over: the elector steps down too, and a next term starts afresh.
            log.info("%s %s: the Lease deadline passed; not writing", kind, key)
            step_down()
        except ApiError as e:
            n = failures.failed(kind, key)
            delay = retry_after(n, e.status)
            if e.status != 409:
                log.warning("%s %s: %s (retry in %ss)", kind, key, e, delay)
            queue.add_after(key, delay)
        except Exception:
            n = failures.failed(kind, key)
            log.exception("%s %s failed", kind, key)
            queue.add_after(key, retry_after(n, None))
        finally:
            queue.done(key)

"""A bounded request loop from a lab client, and what it says about an outage: the lab tests and
the benchmarks of node failures share it.

The loop opens one new HTTP connection per request at a fixed rate (each in a thread of its
own, so a request that hangs does not delay the next), bounded in count and in time by
``timeout`` each; it prints, per request, when it started, the node of the pod that answered
(the echo server says) or the error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from .procs import netns_argv

REQUEST_LOOP = r"""
import json, socket, sys, threading, time
host, rate, count, timeout = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = [None] * count
def one(i):
    t0 = time.time()
    s = None
    try:
        s = socket.create_connection((host, 80), timeout=timeout)
        s.settimeout(max(0.05, timeout - (time.time() - t0)))
        s.sendall(b"GET /load HTTP/1.0\r\n\r\n"); data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            data += chunk
        out[i] = [t0, json.loads(data.split(b"\r\n\r\n", 1)[1])["node"]]
    except Exception as e:
        out[i] = [t0, None, type(e).__name__]
    finally:
        if s is not None: s.close()
start = time.time()
threads = []
for i in range(count):
    delay = start + i / rate - time.time()
    if delay > 0: time.sleep(delay)
    t = threading.Thread(target=one, args=(i,)); t.start(); threads.append(t)
for t in threads: t.join()
print(json.dumps(out))
"""


def start_request_loop(
    netns: str, host: str, rate: float, count: int, timeout: float = 1.0
) -> subprocess.Popen[str]:
    """The loop in ``netns``, started; ``finish`` reads its results."""
    argv = [sys.executable, "-S", "-c", REQUEST_LOOP, host, str(rate), str(count), str(timeout)]
    return subprocess.Popen(
        netns_argv(netns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@dataclass(frozen=True)
class Request:
    at: float  # wall-clock start
    node: str | None  # the node of the pod that answered; None: failed
    error: str = ""


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> list[Request]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"request loop failed: {err}")
    return [Request(r[0], r[1], r[2] if len(r) > 2 else "") for r in json.loads(out)]


@dataclass(frozen=True)
class Outage:
    failed: int
    total: int
    last_failure_after: float | None  # seconds from the event to the start of the last failure
    failed_during: int  # requests started after the event that failed

    @property
    def share(self) -> float:
        return self.failed / self.total if self.total else 0.0


def outage(requests: list[Request], event_at: float) -> Outage:
    """The failures around an event (a link going down) at ``event_at``."""
    failed = [r for r in requests if r.node is None]
    after = [r for r in failed if r.at >= event_at - 1.0]  # a request in flight counts too
    last = max((r.at for r in after), default=None)
    return Outage(
        len(failed),
        len(requests),
        None if last is None else last - event_at,
        sum(1 for r in failed if r.at >= event_at),
    )

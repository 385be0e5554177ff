"""Timestamps as the Kubernetes API writes them."""

from __future__ import annotations

import datetime as dt


def now_rfc3339(*, micro: bool = False) -> str:
    """Now in UTC as RFC 3339: metav1.Time (seconds) or, with ``micro``, metav1.MicroTime (a
    Lease's renewTime)."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)

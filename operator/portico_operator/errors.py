"""Errors the operator's parts share."""

from __future__ import annotations


class NotLeading(Exception):
    """A write was about to happen after this replica's Lease deadline passed."""

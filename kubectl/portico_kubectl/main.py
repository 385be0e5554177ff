"""``kubectl-portico``: kubectl runs it as ``kubectl portico`` (plugins are found on PATH by
that name). ``status SERVICE`` explains one LoadBalancer Service's path and why it is not
reachable; ``status --all`` gives one line per Service.

Exit status: 0 reachable, 1 not reachable (any of them, with ``--all``), 2 the question could
not be answered (bad arguments, no access to the API)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.config.config_exception import ConfigException
from portico_common.kube import ApiError, KubeClient, load_credentials

from . import fetch
from .diagnose import DEFAULT_CLASS, Status, diagnose
from .paths import BEHIND
from .text import render, render_all, verdict

REACHABLE, NOT_REACHABLE, CANNOT_TELL = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl portico",
        description="Explain Portico's path to LoadBalancer Services.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "status",
        help="a Service's addresses, gateway, nodes and endpoints, and why it is not reachable",
        description="Exit status: 0 reachable, 1 not reachable, 2 cannot tell.",
    )
    st.add_argument("service", nargs="?", help="the LoadBalancer Service's name")
    st.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    st.add_argument(
        "--all",
        action="store_true",
        help="every LoadBalancer Service of the namespace, one line each",
    )
    st.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="with --all: in every namespace",
    )
    st.add_argument(
        "--from",
        dest="client",
        metavar="ADDRESS",
        help="a client address: is it admitted (source ranges, an address of its family)?",
    )
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    st.add_argument("--kubeconfig", help="default: $KUBECONFIG, then ~/.kube/config")
    st.add_argument(
        "--load-balancer-class",
        default=DEFAULT_CLASS,
        help="the class Portico's operator serves (its --load-balancer-class)",
    )
    return p


def as_json(st: Status) -> dict[str, Any]:
    out = dataclasses.asdict(st)
    out["verdict"] = verdict(st)
    for node, row in zip(out["nodes"], st.nodes, strict=True):
        node["usable"] = row.usable
    return out


# An agent applies a NodeRules change in milliseconds, but the shard's generation moves with
# every Service in it: a node seen behind is looked at once more, this much later, before the
# report calls its rules not applied.
RECHECK_SECONDS = 1.0


async def settled(read: Callable[[], Awaitable[Status]], wait: float = RECHECK_SECONDS) -> Status:
    """A Service's status, read again once after ``wait`` if a node's rules looked behind."""
    first = await read()
    if not any(n.rules == BEHIND for n in first.nodes):
        return first
    await asyncio.sleep(wait)
    return await read()


async def _statuses(args: argparse.Namespace) -> list[Status]:
    creds = load_credentials(args.kubeconfig)
    namespace = args.namespace or creds.namespace
    kube = KubeClient(creds)
    now = datetime.now(UTC)
    try:
        if args.all:
            found = await fetch.listing(kube, None if args.all_namespaces else namespace)
            return [
                diagnose(found.snapshot(ns, name), now, args.client, args.load_balancer_class)
                for ns, name in found.load_balancer_services()
            ]

        async def read() -> Status:
            snap = await fetch.snapshot(kube, namespace, args.service)
            return diagnose(snap, datetime.now(UTC), args.client, args.load_balancer_class)

        return [await settled(read)]
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if bool(args.service) == bool(args.all):
        p.error("status: name one Service, or give --all")
    try:
        statuses = asyncio.run(_statuses(args))
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return CANNOT_TELL
    except ConfigException as e:  # no kubeconfig, or one the loader cannot read
        print(f"error: {e}", file=sys.stderr)
        return CANNOT_TELL
    if args.output == "json":
        body: Any = [as_json(s) for s in statuses] if args.all else as_json(statuses[0])
        print(json.dumps(body, indent=2))
    elif args.all:
        print(render_all(statuses), end="")
    else:
        print(render(statuses[0]), end="")
    return REACHABLE if all(s.reachable for s in statuses) else NOT_REACHABLE

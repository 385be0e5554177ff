"""The gateway's ``GatewayReport`` (cluster scoped, named after the gateway): which nodes it
can reach, for the operator, which takes the endpoints of the nodes it cannot out of every
node's Cluster rules (``portico_operator.reachability``). What the status says is pure
(``neighbours.report_status``); this module writes it: at once when a verdict changes, and
every ``heartbeat`` seconds besides, so that the operator can tell a live report from one a
stopped gateway left behind. A stopped gateway leaves its report (the operator ignores it 30 s
later): a restart reads it back first, so a node that is down stays out across the restart.
A clean stop marks the report ``stoppedTime`` (``mark_stopped``) so that ``kubectl portico
status`` can say the gateway is gone at once; the next run's first write clears the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from portico_common import API_GROUP, API_VERSION
from portico_common.apipaths import group_path
from portico_common.kube import ApiError, KubeClient, patch_status_creating

from .neighbours import stopped_status

log = logging.getLogger("portico.lbnode.report")

HEARTBEAT_SECONDS = 10.0
MIN_INTERVAL = 0.02  # a burst of verdicts (a switch losing power) goes as one write
STOP_TIMEOUT = 2.0  # a stop does not wait longer for an API server that does not answer


def report_path(name: str | None = None) -> str:
    return group_path(API_GROUP, API_VERSION, "gatewayreports", None, name)


class ReportWriter:
    def __init__(
        self,
        kube: KubeClient,
        gateway: str,
        status: Callable[[], dict[str, object]],
        previous: Callable[[Any], None],
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.kube = kube
        self.gateway = gateway
        self.status = status
        self.previous = previous
        self.heartbeat = heartbeat
        self.dirty = asyncio.Event()

    async def run(self) -> None:
        # The previous run's report first: its verdicts carry over (neighbours.carried_over)
        # before this run's first write replaces them.
        while True:
            try:
                self.previous((await self.kube.get(report_path(self.gateway))).get("status"))
                break
            except ApiError as e:
                if e.status == 404:
                    break
                log.warning("GatewayReport: %s (retrying)", e)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("GatewayReport: %s (retrying)", e)
            await asyncio.sleep(1.0)
        self.dirty.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), self.heartbeat)
            self.dirty.clear()
            try:
                await self._write()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("GatewayReport: %s (retrying)", e)
                await asyncio.sleep(1.0)
                self.dirty.set()
            await asyncio.sleep(MIN_INTERVAL)

    async def _write(self) -> None:
        await patch_status_creating(
            self.kube,
            report_path(),
            self.gateway,
            "GatewayReport",
            {"gateway": self.gateway},
            self.status(),
        )

    async def mark_stopped(self, stopped: str, timeout: float = STOP_TIMEOUT) -> None:
        """A clean stop, after the announcements are withdrawn: the report says the gateway is
        gone but keeps its verdicts. The operator still honours them until the heartbeat is
        30 s old, as it does for a gateway that died: a restart takes seconds and carries them
        over, so a dead node does not return to the rules in between."""
        path = report_path(self.gateway) + "/status"
        try:
            await asyncio.wait_for(
                self.kube.patch(path, {"status": stopped_status(stopped)}), timeout
            )
        except ApiError as e:
            if e.status != 404:  # no report: nothing to mark
                log.warning("GatewayReport: could not mark it stopped: %s", e)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("GatewayReport: could not mark it stopped: %s", e)

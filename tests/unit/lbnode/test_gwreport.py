"""The GatewayReport's writer against the in-memory API (merge patches as the apiserver does
them): a clean stop marks the report stopped and keeps its verdicts; the next run reads them
back and its first write clears the mark."""

from __future__ import annotations

import asyncio
from typing import Any

from portico_lbnode.gwreport import ReportWriter
from portico_lbnode.neighbours import UNREACHABLE_MESSAGE, NodeVerdict, report_status

from ..operator.fake_kube import FakeKube

GATEWAY = "gw-1"
STOPPED = "2026-12-05T20:00:00Z"


def status_at(beat: str) -> dict[str, object]:
    verdicts = [
        NodeVerdict("node-1", True, "2026-12-05T19:00:00Z", ""),
        NodeVerdict("node-2", False, "2026-12-05T19:30:00Z", UNREACHABLE_MESSAGE),
    ]
    return report_status(verdicts, ["eth0"], beat)


async def run_until_written(kube: FakeKube, writer: ReportWriter, beat: str) -> None:
    """Runs the writer until the report carries ``beat``, then stops it (as a signal would)."""
    task = asyncio.ensure_future(writer.run())
    try:
        for _ in range(500):  # bounded: 5 s
            obj = kube.get_obj("reports", GATEWAY)
            if obj is not None and (obj.get("status") or {}).get("heartbeatTime") == beat:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the report never carried heartbeat {beat}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_clean_stop_marks_the_report_and_a_restart_clears_the_mark() -> None:
    async def go() -> None:
        kube = FakeKube()
        first = ReportWriter(
            kube, GATEWAY, lambda: status_at("2026-12-05T19:59:50Z"), lambda _: None
        )
        await run_until_written(kube, first, "2026-12-05T19:59:50Z")
        await first.mark_stopped(STOPPED)
        status = kube.get_obj("reports", GATEWAY)["status"]  # type: ignore[index]
        assert status["stoppedTime"] == STOPPED
        # The verdicts stay, for the next run.
        assert status["unreachableNodes"] == ["node-2"]
        assert status["heartbeatTime"] == "2026-12-05T19:59:50Z"

        read_back: list[Any] = []
        second = ReportWriter(
            kube, GATEWAY, lambda: status_at("2026-12-05T20:00:05Z"), read_back.append
        )
        await run_until_written(kube, second, "2026-12-05T20:00:05Z")
        assert read_back[0]["stoppedTime"] == STOPPED
        assert read_back[0]["unreachableNodes"] == ["node-2"]
        status = kube.get_obj("reports", GATEWAY)["status"]  # type: ignore[index]
        assert "stoppedTime" not in status

    asyncio.run(go())


def test_a_stop_without_a_report_creates_none() -> None:
    async def go() -> None:
        kube = FakeKube()
        writer = ReportWriter(kube, GATEWAY, lambda: status_at(STOPPED), lambda _: None)
        await writer.mark_stopped(STOPPED)
        assert kube.get_obj("reports", GATEWAY) is None

    asyncio.run(go())

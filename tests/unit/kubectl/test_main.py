"""The plugin's command line: what it asks for, and exit status 2 when it cannot tell (the
answers themselves, 0 and 1, are the lab tests')."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from portico_kubectl.diagnose import Status, diagnose
from portico_kubectl.main import CANNOT_TELL, main, parser, settled

from .world import NOW, World


def test_status_wants_one_service_or_all() -> None:
    with pytest.raises(SystemExit) as e:
        main(["status"])
    assert e.value.code == CANNOT_TELL
    with pytest.raises(SystemExit):
        main(["status", "web", "--all"])


def test_the_flags_kubectl_users_expect() -> None:
    args = parser().parse_args(
        ["status", "-n", "shop", "web", "--from", "198.18.1.7", "-o", "json"]
    )
    assert (args.namespace, args.service, args.client, args.output) == (
        "shop",
        "web",
        "198.18.1.7",
        "json",
    )


def test_no_kubeconfig_cannot_tell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "web", "--kubeconfig", str(tmp_path / "none")]) == CANNOT_TELL
    assert capsys.readouterr().err.startswith("error: ")


def test_a_node_seen_behind_is_read_once_more() -> None:
    # The shard moved for another Service a moment ago; the agent catches up by the second read.
    readings = [World(lagging={"node-2"}).snapshot(), World().snapshot()]
    reads: list[int] = []

    async def read() -> Status:
        reads.append(1)
        return diagnose(readings[len(reads) - 1], NOW)

    st = asyncio.run(settled(read, wait=0))
    assert len(reads) == 2 and st.reachable and not st.findings
    # Nothing behind: read once.
    reads.clear()
    readings.reverse()
    assert asyncio.run(settled(read, wait=0)).findings == () and len(reads) == 1

"""Teardown leaves nothing behind: no namespace, link, mount or process, also when the test
body fails and when the lab's owner is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from portico_lab.lab import Lab, LabConfig, read_state, stop_lab
from portico_lab.netlab import link_exists, list_netns
from portico_lab.procs import pid_alive


def traces(prefix: str, host_link: str) -> list[str]:
    left = [f"netns {n}" for n in list_netns() if n.startswith(prefix + "-")]
    if link_exists(host_link):
        left.append(f"link {host_link}")
    mounts = Path("/proc/mounts").read_text()
    left += [f"mount {line.split()[1]}" for line in mounts.splitlines() if f"/{prefix}-" in line]
    return left


def test_teardown_after_a_failing_test_body(lab: Lab) -> None:
    # A second, small lab beside the session's: the slots keep them apart.
    seen: dict[str, object] = {}
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        Lab.up(LabConfig(nodes=1, pods_per_node=1, gateways=1, clients=1)) as small,
    ):
        assert small.plan.slot != lab.plan.slot
        seen["prefix"], seen["link"] = small.plan.prefix, small.plan.host_link
        seen["pids"] = [*small.control_plane.pids(), *_netns_pids(small)]  # type: ignore[union-attr]
        assert traces(small.plan.prefix, small.plan.host_link)
        raise RuntimeError("the test failed")
    assert traces(str(seen["prefix"]), str(seen["link"])) == []
    alive = [p for p in seen["pids"] if pid_alive(p)]  # type: ignore[attr-defined]
    assert alive == []
    # The session's lab is untouched.
    assert lab.plan.host_link and link_exists(lab.plan.host_link)


def test_owner_killed_outright_leaves_nothing_after_down(lab: Lab) -> None:
    slot = 3
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portico_lab.cli",
            "--slot",
            str(slot),
            "up",
            "--nodes=1",
            "--pods-per-node=1",
            "--gateways=0",
            "--clients=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            st = read_state(slot)
            if st is not None and st.phase == "ready":
                break
            assert proc.poll() is None, "the lab process died while starting"
            time.sleep(0.2)
        else:
            pytest.fail("the lab in slot 3 never came up")
        cp_pids = st.control_plane_pids
        assert all(pid_alive(p) for p in cp_pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The kernel kills the control plane with its owner (PR_SET_PDEATHSIG) ...
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in cp_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in cp_pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # ... and `portico-lab down` removes the namespaces and their echo servers.
        stop_lab(slot)
    assert traces(f"ptc{slot}", f"ptc{slot}-host") == []


def _netns_pids(lab: Lab) -> list[int]:
    out = []
    for ns in lab.net.namespaces():
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        out += [int(p) for p in res.stdout.split()]
    return out

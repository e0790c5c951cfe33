"""The daemon with `devices.sim.arm: xarm-sdk`: the same sim cell, its arm driven through the
unmodified xArm SDK and the loopback controller emulator (only the config differs)."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_fixtures import TASK_END_TIMEOUT_S, run_daemon

from aimg.episodes import read_episode

pytest.importorskip("xarm.wrapper")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("cell"),
    pytest.mark.usefixtures("port_502"),
]

PLAN_TIMEOUT_S = 240.0


def test_a_task_runs_through_the_sdk_and_is_recorded(tmp_path):
    with run_daemon(tmp_path, {"devices.sim.arm": "xarm-sdk"}) as daemon:
        response = daemon.post(
            "/tasks", {"instruction": "reach the red cube", "max_duration_s": 60}
        )
        assert response.status_code == 202, response.text
        daemon.wait_for(
            lambda s: s["task"] is None or s["task"]["plans"] >= 2, PLAN_TIMEOUT_S, "two plans"
        )
        daemon.post("/stop")
        ended = daemon.wait_for(lambda s: s["task"] is None, TASK_END_TIMEOUT_S, "the task to end")
        assert ended["state"] == "idle", ended
        assert ended["processes"]["servo"]["alive"] and ended["last_error"] is None, ended
        episode = read_episode(ended["last_task"]["episode"], verify=True)
        positions = episode.stream("arm_action")[:, :3]
        moved_mm = 1000.0 * np.linalg.norm(positions - positions[0], axis=1).max()
        assert moved_mm > 5.0, f"the arm moved only {moved_mm:.1f} mm: {ended['events']}"
        assert not any(e["kind"] == "arm_error" for e in ended["events"]), ended["events"]

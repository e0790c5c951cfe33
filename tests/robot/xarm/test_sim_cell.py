"""The emulator as users run it: beside the sim cell's arm, and as `aimg sim xarm-emulator`."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aimg.robot.xarm.arm import XArm
from aimg.robot.xarm.emulator import make_xarm_sim_cell, xarm_config_for_cell

pytest.importorskip("pybullet")
pytest.importorskip("xarm.wrapper")

pytestmark = pytest.mark.slow


def test_the_sdk_drives_the_sim_cell_arm_and_follows_episode_resets(port_502):
    cell, host = make_xarm_sim_cell(seed=0)
    with cell:
        supervisor = cell.supervisor()
        first = supervisor.start_episode("reach", 3)
        with XArm(xarm_config_for_cell(host)) as arm:
            arm.enable()
            start = arm.read_state().tool_pose
            assert start[:3, 3] == pytest.approx(np.asarray(first["start_position"]), abs=2e-3)
            joints_before = np.array(supervisor.snapshot()["joint_positions"])
            goal = start.copy()
            goal[0, 3] += 0.03
            t0 = time.monotonic()
            for k in range(60):
                arm.servo(start + (goal - start) * min(1.0, k / 40))
                time.sleep(max(0.0, t0 + (k + 1) * 0.01 - time.monotonic()))
            time.sleep(0.3)
            state = arm.read_state()
            assert state.ok and state.tool_pose[:3, 3] == pytest.approx(goal[:3, 3], abs=3e-3)
            assert not np.allclose(supervisor.snapshot()["joint_positions"], joints_before)

            second = supervisor.start_episode("reach", 4)  # the world is rebuilt under the arm
            time.sleep(0.5)
            # the rebuild holds the world's lock (reports pause: REPORT_STALE for a moment)
            deadline = time.monotonic() + 5.0
            while not arm.read_state().ok and time.monotonic() < deadline:
                time.sleep(0.05)
            state = arm.read_state()
            assert state.ok, f"C{state.error_code}"
            here = np.asarray(second["start_position"])
            assert state.tool_pose[:3, 3] == pytest.approx(here, abs=3e-3)  # not dragged back
            arm.servo(state.tool_pose)  # streaming goes on from the new start
            assert arm.read_state().ok


def test_the_cli_emulator_serves_the_sdk_until_interrupted(port_502):
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    command = [sys.executable, "-c", "from aimg.cli import main; main()", "sim", "xarm-emulator"]
    process = subprocess.Popen(
        [*command, "--host", host, "--report-hz", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = json.loads(process.stdout.readline())  # printed once it listens
        assert banner["xarm_emulator"] == [f"tcp {host}:502,30001,30002"]
        with XArm(xarm_config_for_cell(host)) as arm:
            arm.enable()
            assert arm.read_state().ok
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0

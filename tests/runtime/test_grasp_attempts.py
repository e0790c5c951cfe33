"""Counting grasps from the measured gripper, and where the hand first closed: what tells a
missed-and-retried pick apart, and a grasp placed off from one closed too high."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aimg.robot.sim.world import top_down_pose
from aimg.runtime.sim_run import PathRecorder, cube_track, first_close_offset, grasp_attempts


def test_one_grasp_that_holds_a_cube_counts_once():
    closing_on_a_cube = [1.0, 1.0, 0.8, 0.56, 0.52, 0.55, 0.53]  # the fingers stop on it
    assert grasp_attempts(closing_on_a_cube) == 1


def test_a_hand_that_reopens_and_closes_again_counts_twice():
    missed_then_retried = [1.0, 0.6, 0.1, 0.0, 0.0, 0.4, 0.9, 1.0, 0.7, 0.3, 0.3]  # 0.9: not yet
    assert grasp_attempts(missed_then_retried) == 2


def test_jitter_inside_the_band_is_not_a_new_grasp():
    assert grasp_attempts([1.0, 0.3, 0.45, 0.85, 0.35, 0.9, 0.3]) == 1
    assert grasp_attempts([1.0, 0.95, 0.8, 0.75, 1.0]) == 0  # never closed


def test_a_hand_that_starts_closed_counts_from_its_first_closing_after_opening():
    assert grasp_attempts([0.0, 0.0, 0.5, 0.95, 0.2]) == 1
    assert grasp_attempts([]) == 0


def _recorder(positions, grippers, yaw: float = 0.0) -> PathRecorder:
    recorder = PathRecorder(cameras=None, servo=None)
    pose = top_down_pose(np.zeros(3), yaw)
    for k, (position, gripper) in enumerate(zip(positions, grippers, strict=True)):
        recorder.positions.append((k * 100_000_000, np.asarray(position, dtype=np.float64)))
        recorder.rotations.append(pose[:3, :3])
        recorder.grippers.append(gripper)
    return recorder


def test_the_first_close_is_measured_from_the_cube_in_the_tools_frame():
    cube = {"position": [0.40, 0.10, 0.02], "yaw": math.radians(10.0)}
    # descending over the cube, 1 cm off along base x, closing 2.8 cm above its centre
    positions = [[0.41, 0.10, 0.10], [0.41, 0.10, 0.06], [0.41, 0.10, 0.048], [0.41, 0.10, 0.048]]
    offset = first_close_offset(_recorder(positions, [1.0, 1.0, 0.5, 0.0], yaw=0.0), cube)
    assert offset["height_m"] == pytest.approx(0.028)
    assert offset["horizontal_m"] == pytest.approx(0.01)
    # the tool points down (tool y = -base y, tool z = -base z), so the offset reads (1, 0, -2.8) cm
    np.testing.assert_allclose(offset["tool_xyz_m"], [0.01, 0.0, -0.028], atol=1e-9)
    assert offset["yaw_error_deg"] == pytest.approx(-10.0)
    assert offset["speed_m_s"] == pytest.approx(0.12)  # 12 mm in the 0.1 s before


def test_yaw_off_a_cube_is_taken_modulo_its_four_faces():
    cube = {"position": [0.4, 0.0, 0.02], "yaw": 0.0}
    at = [[0.4, 0.0, 0.01]] * 2
    turned = first_close_offset(_recorder(at, [1.0, 0.0], yaw=math.radians(100.0)), cube)
    assert turned["yaw_error_deg"] == pytest.approx(10.0)


def test_a_hand_that_never_closes_has_no_first_close():
    cube = {"position": [0.4, 0.0, 0.02], "yaw": 0.0}
    assert first_close_offset(_recorder([[0.4, 0.0, 0.1]] * 3, [1.0, 0.95, 0.8]), cube) is None


def test_the_cube_track_tells_a_dropped_cube_and_a_shoved_one():
    cube = {"position": [0.40, 0.10, 0.02], "yaw": 0.0}
    hand = [[0.40, 0.10, 0.10], [0.40, 0.10, 0.02], [0.40, 0.10, 0.02], [0.40, 0.10, 0.12]]
    recorder = _recorder(hand, [1.0, 1.0, 0.5, 0.0])
    # shoved 3 cm along y before the close, lifted 6 cm, then dropped back to the table
    for position in (
        [0.40, 0.10, 0.02],
        [0.40, 0.13, 0.02],
        [0.40, 0.13, 0.08],
        [0.40, 0.13, 0.02],
    ):
        recorder.cube_positions.append(np.asarray(position))
    track = cube_track(recorder, cube)
    assert track["pushed_at_close_m"] == pytest.approx(0.03)
    assert track["peak_lift_m"] == pytest.approx(0.06)
    assert track["final_lift_m"] == pytest.approx(0.0)
    assert cube_track(_recorder(hand, [1.0] * 4), cube) is None  # not tracked (reach)

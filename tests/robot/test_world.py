"""The simulated arm: servo tracking, speed limits, gripper, xArm error codes, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aimg.geometry import rotation_angle_between
from aimg.robot.interfaces import ArmErrorCode
from aimg.robot.sim.world import CellConfig, SimWorld, top_down_pose


def _servo_line(world: SimWorld, target: np.ndarray, seconds: float) -> None:
    """Stream servo targets along a straight line to `target` at 60 Hz, then hold."""
    start = world.tool_pose()
    ticks = round(seconds * 60)
    for k in range(1, ticks + 1):
        a = k / ticks
        pose = top_down_pose((1 - a) * start[:3, 3] + a * target[:3, 3])
        pose[:3, :3] = target[:3, :3] if a == 1 else pose[:3, :3]
        world.set_servo_target(pose)
        world.step(4)


def test_arm_starts_at_home_pointing_down(fresh_world):
    state = fresh_world.arm_state()
    expected = top_down_pose(np.array(CellConfig().home_tcp))
    np.testing.assert_allclose(state.tool_pose, expected, atol=1e-4)
    assert state.gripper == pytest.approx(1.0, abs=1e-3)
    assert state.error_code == 0 and state.enabled


def test_servo_tracks_a_streamed_target_to_sub_millimetre(fresh_world):
    target = top_down_pose(np.array([0.45, 0.15, 0.08]), yaw=0.4)
    _servo_line(fresh_world, target, seconds=2.0)
    fresh_world.set_servo_target(target)
    fresh_world.advance(0.5)
    pose = fresh_world.tool_pose()
    assert np.linalg.norm(pose[:3, 3] - target[:3, 3]) < 1e-3
    assert rotation_angle_between(pose[:3, :3], target[:3, :3]) < 1e-2
    assert fresh_world.error_code == ArmErrorCode.NONE


def test_joint_speeds_stay_within_the_limit_when_the_target_jumps(fresh_world):
    limit = fresh_world.config.joint_speed_limit
    fresh_world.set_servo_target(top_down_pose(np.array([0.36, 0.05, 0.27]), yaw=1.2))
    previous = fresh_world.joints()
    dt = fresh_world.config.control_decimation / fresh_world.config.physics_hz
    speeds = []
    for _ in range(60):
        fresh_world.step(fresh_world.config.control_decimation)
        current = fresh_world.joints()
        speeds.append(np.abs(current - previous).max() / dt)
        previous = current
    assert max(speeds) > 0.5 * limit  # the jump does drive a joint near its limit...
    assert max(speeds) < 1.1 * limit  # ...but never beyond it


def test_gripper_openness_is_continuous(fresh_world):
    fresh_world.set_gripper_target(0.5)
    fresh_world.advance(0.2)
    midway = fresh_world.gripper_openness()
    fresh_world.advance(0.8)
    assert 0.5 < midway < 1.0
    assert fresh_world.gripper_openness() == pytest.approx(0.5, abs=0.02)


def test_target_outside_the_workspace_raises_boundary_error_and_holds(fresh_world):
    before = fresh_world.tool_pose()
    fresh_world.set_servo_target(top_down_pose(np.array([0.3, 0.0, 0.9])))
    fresh_world.advance(0.3)
    state = fresh_world.arm_state()
    assert state.error_code == ArmErrorCode.BOUNDARY and not state.enabled
    np.testing.assert_allclose(state.tool_pose[:3, 3], before[:3, 3], atol=2e-3)


def test_target_jump_beyond_servo_step_raises_speed_error(fresh_world):
    fresh_world.set_servo_target(top_down_pose(np.array([0.5, 0.0, 0.3])))
    assert fresh_world.error_code == ArmErrorCode.SPEED_LIMIT


def test_unreachable_target_raises_kinematics_error(fresh_world):
    _servo_line(fresh_world, top_down_pose(np.array([0.78, 0.0, 0.05])), seconds=4.0)
    fresh_world.advance(0.5)
    assert fresh_world.error_code == ArmErrorCode.KINEMATICS


def test_folding_the_arm_raises_joint_limit_error(fresh_world):
    _servo_line(fresh_world, top_down_pose(np.array([0.13, 0.0, 0.02])), seconds=3.0)
    assert fresh_world.error_code == ArmErrorCode.JOINT_LIMIT


def test_pressing_a_closed_gripper_into_the_table_raises_collision_error(fresh_world):
    fresh_world.set_gripper_target(0.0)
    fresh_world.advance(0.6)
    _servo_line(fresh_world, top_down_pose(np.array([0.4, 0.0, 0.0])), seconds=3.0)
    fresh_world.advance(0.5)
    assert fresh_world.error_code == ArmErrorCode.COLLISION


def test_arm_touching_itself_raises_self_collision_error(fresh_world):
    fresh_world.reset_joints(np.array([0.0, -1.5, 0.0, 0.0, 3.0, 0.0]))
    fresh_world.step(2 * fresh_world.config.control_decimation)  # detected at the next tick
    assert fresh_world.error_code == ArmErrorCode.SELF_COLLISION


def test_error_ignores_motion_until_cleared_and_enabled(fresh_world):
    fresh_world.emergency_stop()
    assert fresh_world.error_code == ArmErrorCode.EMERGENCY_STOP
    target = top_down_pose(np.array([0.32, 0.0, 0.3]))
    fresh_world.set_servo_target(target)
    fresh_world.advance(0.5)
    assert fresh_world.tool_pose()[0, 3] == pytest.approx(0.30, abs=2e-3)
    with pytest.raises(ValueError, match="clear_errors"):
        fresh_world.enable()
    fresh_world.clear_errors()
    fresh_world.enable()
    fresh_world.set_servo_target(target)
    fresh_world.advance(0.5)
    assert fresh_world.tool_pose()[0, 3] == pytest.approx(0.32, abs=1e-3)


def test_same_seed_gives_identical_physics():
    def run(seed: int) -> np.ndarray:
        with SimWorld(seed=seed) as world:
            world.add_cube(
                "red", (1, 0, 0, 1), world.rng.uniform([0.3, -0.1, 0.02], [0.4, 0.1, 0.02]), 0.3
            )
            _servo_line(world, top_down_pose(np.array([0.4, 0.1, 0.1])), seconds=1.0)
            return np.concatenate([world.joints(), world.object_pose("red").ravel()])

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_real_time_mode_advances_with_the_wall_clock(fresh_world):
    fresh_world.start_real_time()
    try:
        start_sim, start_wall = fresh_world.time_s, time.monotonic()
        fresh_world.set_servo_target(top_down_pose(np.array([0.33, 0.0, 0.3])))
        time.sleep(0.6)
        sim_elapsed, wall_elapsed = fresh_world.time_s - start_sim, time.monotonic() - start_wall
    finally:
        fresh_world.stop_real_time()
    assert 0.0 < sim_elapsed <= wall_elapsed + 0.05
    assert fresh_world.tool_pose()[0, 3] > 0.301

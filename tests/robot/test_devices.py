"""SimArm and SimCameraRig behind the Arm / CameraRig interfaces, in-process and remote."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from aimg.geometry import action_to_matrix
from aimg.robot.interfaces import Arm, ArmError, ArmErrorCode, CameraRig
from aimg.robot.remote import RemoteArm, RemoteCameraRig, spawn_server
from aimg.robot.sim.devices import SimArm, SimCameraRig, make_sim_devices
from aimg.robot.sim.world import top_down_pose


def test_sim_arm_refuses_commands_before_connect():
    arm = SimArm()
    with pytest.raises(ArmError, match="connect"):
        arm.read_state()


def test_sim_arm_context_manager_servos_in_lock_step(fresh_world):
    with SimArm(fresh_world) as arm:
        assert isinstance(arm, Arm) and arm.is_connected
        arm.enable()
        target = top_down_pose(np.array([0.33, 0.02, 0.28]))
        arm.servo(target)
        arm.set_gripper(0.0)
        fresh_world.advance(1.0)
        state = arm.read_state()
    assert not arm.is_connected
    np.testing.assert_allclose(state.tool_pose[:3, 3], target[:3, 3], atol=1e-3)
    assert state.gripper < 0.02
    assert state.timestamp_ns == pytest.approx(1.0e9, abs=5e7)
    np.testing.assert_allclose(state.action[:3], target[:3, 3], atol=1e-3)


def test_sim_arm_rejects_malformed_pose(fresh_world):
    with SimArm(fresh_world) as arm, pytest.raises(ValueError, match=r"\[4, 4\]"):
        arm.servo(np.eye(3))


def test_sim_arm_enable_during_error_raises_arm_error(fresh_world):
    with SimArm(fresh_world) as arm:
        arm.emergency_stop()
        assert arm.read_state().error_code == ArmErrorCode.EMERGENCY_STOP
        with pytest.raises(ArmError, match="C1"):
            arm.enable()
        arm.clear_errors()
        arm.enable()
        assert arm.read_state().ok


def test_camera_rig_reads_synchronised_calibrated_views(fresh_world):
    rig = SimCameraRig(fresh_world, height=64, width=96)
    assert isinstance(rig, CameraRig)
    fresh_world.advance(0.25)
    with rig:
        frames = rig.read()
    assert set(frames.images) == set(rig.view_names) == {"left", "right"}
    for name, image in frames.images.items():
        assert image.shape == (64, 96, 3) and image.dtype == np.uint8
        assert rig.cameras[name].width == 96 and rig.cameras[name].height == 64
        assert frames.device_timestamps_ns[name] == fresh_world.time_ns
    assert len(set(frames.device_timestamps_ns.values())) == 1


def test_arm_and_rig_in_another_process_follow_commands_in_real_time():
    channel = spawn_server(functools.partial(make_sim_devices, real_time=True, height=64, width=64))
    with channel:
        arm, rig = RemoteArm(channel, "arm"), RemoteCameraRig(channel, "rig")
        arm.connect()
        rig.connect()
        arm.enable()
        start = arm.read_state()
        target = top_down_pose(np.array([0.34, -0.03, 0.27]))
        arm.servo(target)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            state = arm.read_state()
            if np.linalg.norm(state.tool_pose[:3, 3] - target[:3, 3]) < 1e-3:
                break
            time.sleep(0.05)
        frames = rig.read()
        arm.emergency_stop()
        with pytest.raises(ArmError, match="clear_errors"):
            arm.enable()
    assert state.timestamp_ns > start.timestamp_ns
    np.testing.assert_allclose(state.tool_pose[:3, 3], target[:3, 3], atol=1e-3)
    assert frames.images["left"].shape == (64, 64, 3)
    assert not channel.server_alive


def test_servo_action_takes_an_action_vector_with_the_gripper(fresh_world):
    with SimArm(fresh_world) as arm:
        action = arm.read_state().action
        action[0] += 0.03
        action[6] = 0.4
        arm.servo_action(action)
        fresh_world.advance(1.0)
        # Compare poses as matrices: top-down Euler angles sit on the +-pi wrap.
        reached = action_to_matrix(arm.read_state().action)
        np.testing.assert_allclose(reached, action_to_matrix(action), atol=2e-3)
        assert arm.read_state().gripper == pytest.approx(0.4, abs=0.02)
        with pytest.raises(ValueError, match="7-vector"):
            arm.servo_action(action[:6])

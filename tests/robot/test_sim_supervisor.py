"""SimSupervisor (episodes, success, snapshots), extra server channels, and the mirrored rig."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from aimg.robot.remote import RemoteCameraRig, RemoteDevice, RemoteError, spawn_server
from aimg.robot.sim.mirror import MirroredSimCameraRig, make_physics_devices, make_sim_cell
from aimg.robot.sim.supervisor import SimSupervisor, scene_from_dict, trajectory_from_plan
from aimg.robot.sim.tasks import COLOURS, CUBE_SIZE_M, get_task
from aimg.robot.sim.world import ARM_JOINTS, GRIPPER_DRIVE, GRIPPER_MIMIC


@pytest.fixture
def supervisor(fresh_world):
    return SimSupervisor(fresh_world)


@pytest.fixture(scope="module")
def lock_step_cell():
    """A physics server stepped only by `supervisor.advance`, with an in-server rig to compare."""
    with make_sim_cell(views=2, height=64, width=80, real_time=False, rig_views=2) as cell:
        yield cell


def test_start_episode_lays_out_the_scene_run_episode_would(supervisor, fresh_world):
    info = supervisor.start_episode("pick", 7)
    expected = get_task("pick").sample_scene(np.random.default_rng(7))
    assert scene_from_dict(info) == expected
    assert info["instruction"] == f"pick up the {expected.target.colour} cube"
    assert info["target"] == expected.target.colour
    assert sorted(fresh_world.objects) == sorted(obj.colour for obj in expected.objects)
    for obj in expected.objects:
        np.testing.assert_allclose(
            fresh_world.object_pose(obj.colour)[:3, 3], obj.position, atol=2e-3
        )
    np.testing.assert_allclose(fresh_world.tool_pose(), info["start_pose"], atol=2e-3)
    assert info["start_time_ns"] == fresh_world.time_ns > 0


def test_the_simulated_clock_keeps_running_across_episodes(supervisor, fresh_world):
    first = supervisor.start_episode("reach", 1)["start_time_ns"]
    fresh_world.advance(0.1)
    second = supervisor.start_episode("reach", 2)["start_time_ns"]
    assert second > first + 0.1e9
    assert fresh_world.steps % fresh_world.config.control_decimation == 0


def test_success_is_the_task_rule_after_following_the_expert(supervisor, fresh_world):
    info = supervisor.start_episode("reach", 3)
    plan = trajectory_from_plan(supervisor.expert_plan())
    reference = get_task("reach").plan(scene_from_dict(info))
    np.testing.assert_array_equal(plan.times, reference.times)
    assert not supervisor.success()
    decimation = fresh_world.config.control_decimation
    steps = round((plan.duration_s + 0.4) * fresh_world.config.physics_hz)
    for step in range(0, steps, decimation):
        t = step / fresh_world.config.physics_hz
        fresh_world.set_servo_target(plan.pose(t))
        fresh_world.set_gripper_target(plan.gripper(t))
        fresh_world.step(decimation)
    assert supervisor.success()
    cube = supervisor.target_cube_position()
    np.testing.assert_allclose(cube, fresh_world.object_pose(info["target"])[:3, 3])


def test_snapshot_has_joints_and_every_object(supervisor, fresh_world):
    info = supervisor.start_episode("reach", 4)
    snapshot = supervisor.snapshot()
    assert snapshot["time_ns"] == fresh_world.time_ns and snapshot["episode"] == info["episode"]
    movable = (*ARM_JOINTS, GRIPPER_DRIVE, *GRIPPER_MIMIC)
    assert tuple(snapshot["joint_indices"]) == movable
    assert len(snapshot["joint_positions"]) == len(movable)
    np.testing.assert_allclose(snapshot["joint_positions"][:6], fresh_world.joints())
    assert set(snapshot["objects"]) == set(fresh_world.objects)
    for name, obj in snapshot["objects"].items():
        np.testing.assert_allclose(obj["pose"], fresh_world.object_pose(name), atol=1e-12)
        np.testing.assert_allclose(obj["size"], [CUBE_SIZE_M] * 3)
        np.testing.assert_allclose(obj["rgba"], COLOURS[name], atol=1e-6)


def test_episode_questions_before_any_episode_are_refused(supervisor):
    with pytest.raises(ValueError, match="start_episode"):
        supervisor.success()


def test_a_server_refuses_methods_a_device_does_not_expose():
    channel = spawn_server(functools.partial(make_physics_devices, real_time=False, nice=0))
    with channel:
        device = RemoteDevice(channel, "supervisor")
        assert device.call("cell_config").physics_hz == 240
        with pytest.raises(ValueError, match="not part of the 'supervisor' interface"):
            device.call("_require_episode")
        with pytest.raises(ValueError, match="not part of the 'arm' interface"):
            RemoteDevice(channel, "arm").call("world")


def test_extra_channels_reach_the_same_devices_and_close_alone(lock_step_cell):
    supervisor = lock_step_cell.supervisor()
    supervisor.start_episode("reach", 11)
    with lock_step_cell.address.connect() as extra:
        remote = lock_step_cell.supervisor(extra)
        assert remote.scene()["seed"] == 11
        assert remote.snapshot()["time_ns"] == supervisor.snapshot()["time_ns"]
    assert supervisor.scene()["seed"] == 11 and lock_step_cell.channel.server_alive


def test_closing_the_owner_channel_stops_the_server():
    cell = make_sim_cell(real_time=False)
    extra = cell.address.connect()
    cell.close()
    assert not cell.channel.server_alive
    with pytest.raises(RemoteError):
        cell.supervisor(extra).snapshot()
    with pytest.raises(RemoteError, match="no device server"):
        cell.address.connect(timeout_s=0.2)


def test_mirror_renders_bitwise_the_images_of_the_physics_world(lock_step_cell):
    supervisor, arm = lock_step_cell.supervisor(), lock_step_cell.arm()
    rig = RemoteCameraRig(lock_step_cell.channel, "rig")
    mirror = MirroredSimCameraRig(lock_step_cell.address, views=2, height=64, width=80)
    arm.connect()
    rig.connect()
    compared = 0
    with mirror:
        for seed in (5, 6):  # a second episode replaces the mirror's cubes
            supervisor.start_episode("pick", seed)
            arm.enable()
            plan = supervisor.expert_trajectory()
            for t in np.arange(0.0, plan.duration_s, 0.5):
                arm.servo(plan.pose(t))
                arm.set_gripper(plan.gripper(t))
                supervisor.advance(0.5)
                direct, mirrored = rig.read(), mirror.read()
                assert mirrored.device_timestamps_ns == direct.device_timestamps_ns
                for name in direct.images:
                    np.testing.assert_array_equal(mirrored.images[name], direct.images[name])
                compared += 1
        assert len(mirror.world.objects) == 0  # cubes exist only as visual bodies there
    assert compared >= 8


class _RecordingChannel:
    """A channel that remembers every (device, method) it forwards."""

    def __init__(self, channel):
        self.channel, self.calls = channel, []

    def call(self, device, method, *args, **kwargs):
        self.calls.append((device, method))
        return self.channel.call(device, method, *args, **kwargs)


def test_a_mirror_read_asks_the_physics_server_for_one_snapshot_only(lock_step_cell):
    lock_step_cell.supervisor().start_episode("reach", 9)
    recording = _RecordingChannel(lock_step_cell.channel)
    with MirroredSimCameraRig(recording, views=2, height=64, width=80) as mirror:
        recording.calls.clear()
        frames = mirror.read()
        mirror.read()
    assert recording.calls == [("supervisor", "snapshot")] * 2
    assert all(image.std() > 5 for image in frames.images.values())


class _InProcessChannel:
    """A channel to devices in this process (calls them directly)."""

    def __init__(self, **devices):
        self.devices = devices

    def call(self, device, method, *args, **kwargs):
        return getattr(self.devices[device], method)(*args, **kwargs)


def test_objects_gone_from_the_physics_world_are_removed_from_the_mirror(supervisor, fresh_world):
    supervisor.start_episode("reach", 12)
    channel = _InProcessChannel(supervisor=supervisor)
    with MirroredSimCameraRig(channel, views=1, height=48, width=64) as mirror:
        before = mirror.read().images["left"]
        gone = sorted(fresh_world.objects)[0]
        fresh_world.client.removeBody(fresh_world.objects.pop(gone))
        after = mirror.read().images["left"]
        mirror_bodies = mirror.world.client.getNumBodies()
    assert mirror_bodies == 2 + len(fresh_world.objects)  # table, robot, the remaining cubes
    assert np.any(before != after)

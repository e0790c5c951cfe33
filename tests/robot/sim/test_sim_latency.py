"""Simulated latency: commands take effect late, frames arrive late and show the past."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from aimg.robot.interfaces import ArmErrorCode  # noqa: E402
from aimg.robot.sim.cameras import default_camera_specs  # noqa: E402
from aimg.robot.sim.devices import SimArm, SimCameraRig  # noqa: E402
from aimg.robot.sim.latency import LatencyCell, with_latency  # noqa: E402

SIZE = 64


def make_cell(world, arm_latency_s=0.05, camera_latency_s=0.07, **kwargs) -> LatencyCell:
    arm = SimArm(world)
    rig = SimCameraRig(world, default_camera_specs(2), SIZE, SIZE)
    arm.connect()
    rig.connect()
    return LatencyCell(world, arm, rig, arm_latency_s, camera_latency_s, **kwargs)


def lifted(pose: np.ndarray, dz: float) -> np.ndarray:
    target = pose.copy()
    target[2, 3] += dz
    return target


def test_a_servo_target_takes_effect_only_after_the_arm_latency(fresh_world):
    cell = make_cell(fresh_world, arm_latency_s=0.05)
    start = cell.arm.read_state().tool_pose
    cell.arm.servo(lifted(start, 0.03))
    cell.wait(0.045)  # the controller has not seen the target yet
    held = cell.arm.read_state().tool_pose
    assert abs(held[2, 3] - start[2, 3]) < 2e-4
    assert cell.arm.pending == 1
    cell.wait(0.01)
    assert cell.arm.pending == 0
    cell.wait(0.3)
    assert cell.arm.read_state().tool_pose[2, 3] - start[2, 3] > 0.02


def test_read_state_reports_the_present_on_the_sim_clock(fresh_world):
    cell = make_cell(fresh_world)
    cell.wait(0.1)
    state = cell.arm.read_state()
    assert state.timestamp_ns == cell.clock_ns() == fresh_world.time_ns
    np.testing.assert_allclose(state.tool_pose, fresh_world.tool_pose())


def test_emergency_stop_acts_at_once_and_drops_queued_commands(fresh_world):
    cell = make_cell(fresh_world, arm_latency_s=0.1)
    cell.arm.servo(lifted(cell.arm.read_state().tool_pose, 0.03))
    cell.arm.emergency_stop()
    assert cell.arm.read_state().error_code == ArmErrorCode.EMERGENCY_STOP
    assert cell.arm.pending == 0


def test_a_frame_arrives_camera_latency_after_exposure_and_shows_the_world_then(fresh_world):
    world = fresh_world
    cell = make_cell(world, camera_latency_s=0.07, fps=30.0)
    specs = default_camera_specs(2)
    marker = world.add_marker(np.array([0.45, -0.15, 0.12]), radius=0.05)
    cell.wait(0.2)
    before = cell.rig.inner.read().images  # the world now, marker at A
    world.move_marker(marker, np.array([0.45, 0.15, 0.12]))
    moved_ns = cell.clock_ns()
    after = cell.rig.inner.read().images  # the world now, marker at B
    assert any(not np.array_equal(before[s.name], after[s.name]) for s in specs)

    def shows(images, world_then, world_other) -> bool:
        """Every view is nearer (in pixels) to `world_then` than to `world_other`."""
        return all(
            np.abs(images[v].astype(int) - world_then[v]).sum()
            < np.abs(images[v].astype(int) - world_other[v]).sum()
            for v in images
        )

    cell.wait(0.05)  # the world shows B, but what has arrived was exposed before the move
    frames = cell.rig.read()
    for view in cell.rig.view_names:
        assert frames.host_timestamps_ns[view] - frames.device_timestamps_ns[view] == 70_000_000
        assert frames.device_timestamps_ns[view] < moved_ns
        assert frames.host_timestamps_ns[view] <= cell.clock_ns()
    assert shows(frames.images, before, after)
    cell.wait(0.1)
    frames = cell.rig.read()
    assert all(t >= moved_ns for t in frames.device_timestamps_ns.values())
    assert shows(frames.images, after, before)


def test_exposures_follow_the_frame_rate_on_the_sim_clock(fresh_world):
    cell = make_cell(fresh_world, camera_latency_s=0.03, fps=20.0)
    exposures = set()
    for _ in range(12):
        cell.wait(1 / 60)
        exposures.add(cell.rig.read().device_timestamps_ns["left"])
    gaps = np.diff(sorted(exposures)) / 1e9
    assert len(exposures) >= 3
    np.testing.assert_allclose(gaps, 0.05, atol=1 / 240 + 1e-9)  # on whole physics ticks


def test_per_camera_latency_and_jitter_bound_host_minus_device(fresh_world):
    cell = make_cell(
        fresh_world, camera_latency_s={"left": 0.02, "right": 0.06}, camera_jitter_s=0.01, seed=3
    )
    delays: dict[str, set[int]] = {"left": set(), "right": set()}
    for _ in range(30):
        cell.wait(1 / 30)
        frames = cell.rig.read()
        for view in delays:
            delays[view].add(frames.host_timestamps_ns[view] - frames.device_timestamps_ns[view])
    for view, low in (("left", 0.02), ("right", 0.06)):
        seconds = np.array(sorted(delays[view])) / 1e9
        assert len(seconds) > 5  # the jitter differs frame by frame
        assert seconds.min() >= low and seconds.max() <= low + 0.01
    assert cell.truth.camera_median_s == pytest.approx({"left": 0.025, "right": 0.065})
    assert cell.rig.timestamp_domains == {"left": "sim_time", "right": "sim_time"}


def test_the_first_read_advances_sim_time_until_a_frame_has_arrived(fresh_world):
    cell = make_cell(fresh_world, camera_latency_s=0.07)
    start = cell.clock_ns()
    frames = cell.rig.read()
    assert cell.clock_ns() - start >= 70_000_000
    assert frames.device_timestamps_ns["left"] == start


def test_latencies_must_name_the_rig_cameras_and_be_sane(fresh_world):
    with pytest.raises(ValueError, match="camera latency is given for"):
        make_cell(fresh_world, camera_latency_s={"left": 0.03})
    with pytest.raises(ValueError, match="arm latency"):
        make_cell(fresh_world, arm_latency_s=-0.01)
    with pytest.raises(TypeError, match="pass a sim cell"):
        with_latency(object())

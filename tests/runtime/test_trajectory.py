"""Trajectory: interpolation through timestamped waypoints, holding at the ends, seamless joins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aimg.runtime.trajectory import Trajectory, join
from aimg.runtime.waypoints import Waypoints

T0 = 10_000_000_000  # an arbitrary monotonic time (ns)
MS = 1_000_000


def make_waypoints(
    positions, dt_s: float = 0.2, t0: int = T0, yaws=None, gripper=None, plan_id: int = 1
) -> Waypoints:
    positions = np.asarray(positions, dtype=np.float64)
    k = len(positions)
    yaws = np.linspace(0.0, 0.6, k) if yaws is None else np.asarray(yaws, dtype=np.float64)
    down = np.diag([1.0, -1.0, -1.0])
    rotations = np.array([Rotation.from_euler("z", y).as_matrix() @ down for y in yaws])
    rotations = rotations.reshape(k, 3, 3)
    gripper = np.linspace(1.0, 0.0, k) if gripper is None else np.asarray(gripper, float)
    times = t0 + np.round(np.arange(k) * dt_s * 1e9).astype(np.int64)
    return Waypoints(times, positions, rotations, gripper, np.ones(k), plan_id=plan_id)


WIGGLE = [[0.30, 0.00, 0.30], [0.34, 0.05, 0.26], [0.40, 0.02, 0.22], [0.42, -0.04, 0.25]]


def finite_difference(traj: Trajectory, t_ns: int, h_ns: int = 10_000) -> np.ndarray:
    return (traj.sample(t_ns + h_ns)[0][:3, 3] - traj.sample(t_ns - h_ns)[0][:3, 3]) / (
        2 * h_ns * 1e-9
    )


def test_passes_through_every_waypoint():
    wp = make_waypoints(WIGGLE)
    traj = Trajectory(wp)
    for i, t in enumerate(wp.times_ns):
        pose, gripper = traj.sample(int(t))
        np.testing.assert_allclose(pose[:3, 3], wp.positions[i], atol=1e-12)
        np.testing.assert_allclose(pose[:3, :3], wp.rotations[i], atol=1e-12)
        assert gripper == pytest.approx(wp.gripper[i], abs=1e-12)
        np.testing.assert_allclose(pose[3], [0, 0, 0, 1])


def test_velocity_is_continuous_at_waypoints_and_matches_the_path():
    wp = make_waypoints(WIGGLE)
    traj = Trajectory(wp)
    for t in wp.times_ns[1:-1]:
        before, _ = traj.velocity(int(t) - 1000)
        after, _ = traj.velocity(int(t) + 1000)
        np.testing.assert_allclose(before, after, atol=1e-4)
    for t in np.linspace(wp.times_ns[0] + MS, wp.times_ns[-1] - MS, 37).astype(np.int64):
        np.testing.assert_allclose(
            traj.velocity(int(t))[0], finite_difference(traj, int(t)), atol=1e-5
        )


def test_never_overshoots_the_waypoints():
    wp = make_waypoints(WIGGLE)
    traj = Trajectory(wp)
    for i in range(len(wp) - 1):
        lo = np.minimum(wp.positions[i], wp.positions[i + 1]) - 1e-12
        hi = np.maximum(wp.positions[i], wp.positions[i + 1]) + 1e-12
        for t in np.linspace(wp.times_ns[i], wp.times_ns[i + 1], 25).astype(np.int64):
            p = traj.sample(int(t))[0][:3, 3]
            assert np.all(p >= lo) and np.all(p <= hi)


def test_rotation_is_a_slerp_with_constant_angular_velocity_per_segment():
    wp = make_waypoints(WIGGLE[:2], dt_s=0.5, yaws=[0.0, 0.8])
    traj = Trajectory(wp)
    mid = int(wp.times_ns[0] + 250 * MS)
    expected = Rotation.from_euler("z", 0.4).as_matrix() @ wp.rotations[0]
    np.testing.assert_allclose(traj.sample(mid)[0][:3, :3], expected, atol=1e-12)
    _, omega = traj.velocity(mid)
    np.testing.assert_allclose(omega, [0.0, 0.0, 0.8 / 0.5], atol=1e-9)


def test_gripper_is_piecewise_linear():
    wp = make_waypoints(WIGGLE[:3], gripper=[1.0, 0.0, 0.5])
    traj = Trajectory(wp)
    assert traj.sample(int(wp.times_ns[0] + 50 * MS))[1] == pytest.approx(0.75)
    assert traj.sample(int(wp.times_ns[1] + 100 * MS))[1] == pytest.approx(0.25)


DESCENT = [[0.40, 0.0, 0.30], [0.40, 0.0, 0.20], [0.40, 0.0, 0.10], [0.40, 0.0, 0.05]]


def test_progress_is_the_time_the_path_passes_nearest_the_tool():
    wp = make_waypoints(DESCENT, gripper=[1.0, 1.0, 1.0, 0.0])
    traj = Trajectory(wp)
    late = int(wp.times_ns[-1]) + 300 * MS  # the clock is past the plan's end
    at = traj.progress_ns(np.array([0.40, 0.0, 0.20]), late)
    assert abs(at - int(wp.times_ns[1])) <= 20 * MS  # where the tool is, not the clock
    assert traj.gripper(at) == pytest.approx(1.0)
    assert traj.gripper(late) == 0.0
    # off the path: the nearest point along it counts (the 2 mm tolerance leans late)
    at = traj.progress_ns(np.array([0.45, 0.02, 0.10]), late)
    assert 0 <= at - int(wp.times_ns[2]) <= 60 * MS


def test_progress_on_a_path_that_comes_back_is_on_the_way_there():
    """Down to the cube, close, straight back up: a tool half way down is not on the lift."""
    path = [[0.40, 0.0, 0.20], [0.40, 0.0, 0.05], [0.40, 0.0, 0.05], [0.40, 0.0, 0.20]]
    wp = make_waypoints(path, dt_s=0.3, gripper=[1.0, 1.0, 0.0, 0.0])
    traj = Trajectory(wp)
    now = int(wp.times_ns[-1])  # the plan's clock is at the top of the lift
    at = traj.progress_ns(np.array([0.40, 0.0, 0.12]), now)
    assert wp.times_ns[0] < at < wp.times_ns[1]
    assert traj.gripper(at) == 1.0


def test_progress_at_a_dwell_is_its_end_and_never_before_the_window():
    wp = make_waypoints(DESCENT + [DESCENT[-1]], gripper=[1.0, 1.0, 1.0, 1.0, 0.0])
    traj = Trajectory(wp)
    now = int(wp.times_ns[-1]) + 100 * MS
    assert traj.progress_ns(np.array(DESCENT[-1]), now) == now  # arrived: the dwell's end
    far = np.array([0.40, 0.0, 0.60])  # above the whole path: the window's start is nearest
    now = int(wp.times_ns[2]) + 100 * MS
    assert 0 <= traj.progress_ns(far, now, window_ns=200 * MS) - (now - 200 * MS) <= 20 * MS


def test_holds_the_first_pose_before_and_the_last_pose_after():
    wp = make_waypoints(WIGGLE)
    traj = Trajectory(wp)
    assert traj.start_ns == wp.times_ns[0] and traj.end_ns == wp.times_ns[-1]
    for t, i in ((traj.start_ns - 10**9, 0), (traj.end_ns + 10**9, -1)):
        pose, gripper = traj.sample(t)
        np.testing.assert_allclose(pose[:3, 3], wp.positions[i])
        np.testing.assert_allclose(pose[:3, :3], wp.rotations[i])
        assert gripper == wp.gripper[i]
        linear, angular = traj.velocity(t)
        assert not linear.any() and not angular.any()
    # ... and arrives at rest (zero end slopes), so the hold does not start with a jerk
    np.testing.assert_allclose(traj.velocity(traj.end_ns - 1000)[0], 0.0, atol=1e-4)


def test_hold_is_a_one_point_trajectory():
    pose = np.eye(4)
    pose[:3, 3] = [0.4, 0.1, 0.2]
    traj = Trajectory.hold(pose, 0.3, T0)
    for t in (T0 - 10**9, T0, T0 + 10**9):
        sampled, gripper = traj.sample(t)
        np.testing.assert_allclose(sampled, pose)
        assert gripper == 0.3
        assert not traj.velocity(t)[0].any()


def test_rejects_non_finite_or_empty_waypoints():
    wp = make_waypoints(WIGGLE)
    wp.positions[1, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        Trajectory(wp)
    with pytest.raises(ValueError, match="at least one waypoint"):
        Trajectory(make_waypoints(np.zeros((0, 3))))


def seam_numbers(current: Trajectory, joined: Trajectory, at: int, h: int = 100_000):
    """Position jump and one-sided velocity jump at `at`, computed here independently."""
    jump = np.linalg.norm(joined.sample(at)[0][:3, 3] - current.sample(at)[0][:3, 3])
    left = (current.sample(at)[0][:3, 3] - current.sample(at - h)[0][:3, 3]) / (h * 1e-9)
    right = (joined.sample(at + h)[0][:3, 3] - joined.sample(at)[0][:3, 3]) / (h * 1e-9)
    return jump, np.linalg.norm(right - left)


def test_join_has_no_position_or_velocity_jump_at_the_seam():
    current = Trajectory(make_waypoints(WIGGLE, dt_s=0.3))
    at = T0 + 450 * MS  # mid-segment, moving at ~0.2 m/s
    assert np.linalg.norm(current.velocity(at)[0]) > 0.1
    new = make_waypoints(
        [[0.35, 0.10, 0.20], [0.45, 0.12, 0.18], [0.50, 0.10, 0.15]], dt_s=0.3, t0=at - 50 * MS
    )
    joined = join(current, new, at, blend_s=0.3)
    jump, velocity_jump = seam_numbers(current, joined, at)
    assert jump < 1e-12
    assert velocity_jump < 2e-3  # first-order differences over 0.1 ms
    seam = joined.seam
    assert seam.replaced and seam.at_ns == at
    assert seam.position_jump_m < 1e-12 and seam.rotation_jump_rad < 1e-9
    assert seam.velocity_jump_m_s < 1e-4 and seam.angular_velocity_jump_rad_s < 1e-3
    np.testing.assert_allclose(joined.velocity(at)[0], current.velocity(at)[0], atol=1e-12)


def test_join_is_smooth_through_the_blend_and_then_follows_the_new_plan():
    current = Trajectory(make_waypoints(WIGGLE, dt_s=0.3))
    at = T0 + 450 * MS
    new_wp = make_waypoints([[0.35, 0.10, 0.20], [0.45, 0.12, 0.18]], dt_s=0.4, t0=at + 100 * MS)
    joined = join(current, new_wp, at, blend_s=0.3)
    new = Trajectory(new_wp)
    ts = np.arange(at, at + 300 * MS, 2 * MS)
    speeds = np.array([joined.velocity(int(t))[0] for t in ts])
    assert np.max(np.linalg.norm(np.diff(speeds, axis=0), axis=1)) < 0.05  # no velocity step
    for t in (at + 300 * MS, at + 400 * MS, new.end_ns + 10**9):
        np.testing.assert_allclose(joined.sample(t)[0], new.sample(t)[0], atol=1e-12)
    assert joined.end_ns == new.end_ns and joined.plan_id == new_wp.plan_id


def test_join_absorbs_waypoints_inside_the_blend_and_drops_older_ones():
    current = Trajectory.hold(_pose(WIGGLE[0]), 1.0, T0)
    new = make_waypoints(
        [[0.9, 0.9, 0.9], [0.30, 0.00, 0.30], [0.32, 0.00, 0.28], [0.36, 0.0, 0.26]],
        dt_s=0.1,
        t0=T0 - 150 * MS,
    )
    joined = join(current, new, T0, blend_s=0.3)
    # the far-away waypoint 150 ms in the past never pulls the path
    for t in range(T0, T0 + 400 * MS, 5 * MS):
        assert np.linalg.norm(joined.sample(t)[0][:3, 3] - [0.3, 0.0, 0.3]) < 0.08
    # the one 50 ms into the blend is only partly reached (absorbed), the later ones exactly
    inside = joined.sample(T0 + 50 * MS)[0][:3, 3]
    assert 0.30 < inside[0] < 0.32
    np.testing.assert_allclose(joined.sample(T0 + 350 * MS)[0][:3, 3], [0.36, 0.0, 0.26])


def _pose(position) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = position
    return pose


def test_join_keeps_current_when_new_is_empty_or_in_the_past():
    current = Trajectory(make_waypoints(WIGGLE))
    at = T0 + 300 * MS
    empty = make_waypoints(np.zeros((0, 3)))
    past = make_waypoints([[0.6, 0.2, 0.4], [0.6, 0.3, 0.4]], t0=T0 - 10**9)
    for new in (empty, past):
        kept = join(current, new, at)
        assert not kept.seam.replaced
        assert kept.plan_id == current.plan_id
        for t in (at, at + 200 * MS, current.end_ns + 10**9):
            np.testing.assert_allclose(kept.sample(t)[0], current.sample(t)[0])
        # ... and holds the last pose once it ends (never zeros)
        np.testing.assert_allclose(kept.sample(current.end_ns + 10**10)[0][:3, 3], WIGGLE[-1])


def test_join_during_a_blend_is_seamless_and_replanning_stays_small():
    traj = Trajectory(make_waypoints(WIGGLE, dt_s=0.3))
    at = T0 + 100 * MS
    rng = np.random.default_rng(0)
    for n in range(40):  # a new plan every 0.1 s: each join lands inside the previous blend
        start = rng.uniform([0.3, -0.1, 0.2], [0.4, 0.1, 0.3])
        pts = start + np.cumsum(rng.normal(0, 0.02, (4, 3)), axis=0)
        new = make_waypoints(pts, dt_s=0.2, t0=at - 20 * MS, plan_id=n + 2)
        joined = join(traj, new, at, blend_s=0.3)
        jump, velocity_jump = seam_numbers(traj, joined, at)
        assert jump < 1e-12 and velocity_jump < 5e-3
        assert joined.seam.velocity_jump_m_s < 1e-3
        traj, at = joined, at + 100 * MS
    depth, path = 0, traj._path
    while hasattr(path, "old"):
        depth, path = depth + 1, path.old
    assert depth <= 5  # finished blends were collapsed


def test_join_needs_a_positive_blend():
    current = Trajectory(make_waypoints(WIGGLE))
    with pytest.raises(ValueError, match="blend_s"):
        join(current, make_waypoints(WIGGLE), T0, blend_s=0.0)


def test_positions_match_position_through_a_blend():
    first = Trajectory(make_waypoints(WIGGLE))
    second = make_waypoints(DESCENT, t0=T0 + 300 * MS, plan_id=2)
    traj = join(first, second, T0 + 350 * MS, 0.3)
    times = T0 + np.arange(-200, 1400, 7, dtype=np.int64) * MS
    expected = np.array([traj.sample(int(t))[0][:3, 3] for t in times])
    np.testing.assert_allclose(traj._path.positions(times), expected, atol=1e-12)


def test_a_dropped_frame_does_not_start_the_gripper_ramp_early():
    """Frames 0.2 s apart, the one at 0.4 s dropped: the hand stays open until 0.2 s before
    the closed frame, as it would have with the frame there."""
    wp = make_waypoints(WIGGLE + [WIGGLE[-1]], gripper=[1.0, 1.0, 1.0, 0.0, 0.0])
    keep = np.array([True, True, False, True, True])
    dropped = Waypoints(
        wp.times_ns[keep],
        wp.positions[keep],
        wp.rotations[keep],
        wp.gripper[keep],
        wp.confidence[keep],
    )
    traj = Trajectory(dropped)
    assert traj.gripper(T0 + 350 * MS) == 1.0
    assert traj.gripper(T0 + 500 * MS) == pytest.approx(0.5)
    assert traj.gripper(T0 + 600 * MS) == 0.0


def test_a_gripper_ramp_shorter_than_the_frames_closes_the_hand_at_the_bottom():
    """Open 10 cm up, closed at the bottom 0.8 s later: with the hand's own travel time
    (0.35 s) as the ramp it stays open down to the last centimetres of the descent."""
    path = [[0.40, 0.0, 0.15], [0.40, 0.0, 0.05], [0.40, 0.0, 0.20]]
    wp = make_waypoints(path, dt_s=0.8, gripper=[1.0, 0.0, 0.0])
    short = Trajectory(wp, gripper_ramp_ns=350 * MS)
    frame = Trajectory(wp)
    bottom = int(wp.times_ns[1])
    assert short.gripper(bottom - 350 * MS) == 1.0
    assert short.gripper(bottom - 175 * MS) == pytest.approx(0.5)
    assert short.gripper(bottom) == 0.0
    assert frame.gripper(bottom - 400 * MS) == pytest.approx(0.5)  # half shut 2.5 cm higher
    # where the hand is half shut: near the bottom with the short ramp, far above it without
    half_short = short.sample(bottom - 175 * MS)[0][2, 3]
    half_frame = frame.sample(bottom - 400 * MS)[0][2, 3]
    assert half_short - 0.05 < 0.015 < half_frame - 0.05
    # the ramp is never longer than the frames: the shorter of the two wins
    long = Trajectory(wp, gripper_ramp_ns=2_000 * MS)
    assert long.gripper(bottom - 400 * MS) == pytest.approx(0.5)
    # joins keep it
    start = Trajectory.hold(short.sample(T0)[0], 1.0, T0 - 100 * MS)
    joined = join(start, wp, T0 - 100 * MS, 0.3, gripper_ramp_ns=350 * MS)
    assert joined.gripper(bottom - 350 * MS) == 1.0
    assert joined.gripper(bottom - 175 * MS) == pytest.approx(0.5)

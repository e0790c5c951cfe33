"""Scheduler pieces that need no processes: latency estimate, ensembling, the pose history.

The whole scheduler runs against the real processes in test_sim_run.py."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest

from aimg.runtime.scheduler import LatencyEstimate, PoseHistory, Scheduler, SchedulerConfig
from aimg.runtime.trajectory import Trajectory
from aimg.runtime.waypoints import Waypoints


def _waypoints(t0_ns: int, xs, plan_id: int = 1) -> Waypoints:
    k = len(xs)
    positions = np.stack([[x, 0.0, 0.2] for x in xs])
    rotations = np.repeat(np.diag([1.0, -1.0, -1.0])[None], k, axis=0)
    times = t0_ns + np.arange(k, dtype=np.int64) * 800_000_000
    return Waypoints(times, positions, rotations, np.ones(k), np.ones(k), plan_id)


def test_a_slow_plan_raises_the_latency_estimate_at_once_and_a_fast_one_lowers_it_slowly():
    estimate = LatencyEstimate(initial_s=0.5)
    for value in (0.4, 0.4, 0.4):
        estimate.update(value)
    estimate.update(1.2)
    assert estimate.seconds == 1.2
    estimate.update(0.4)
    assert estimate.seconds == 0.4  # median of the window again
    assert LatencyEstimate(0.7).seconds == 0.7


def test_ensembling_averages_a_new_plan_with_what_earlier_plans_predicted():
    cameras = SimpleNamespace(cameras={})
    scheduler = Scheduler(None, cameras, None, "", SchedulerConfig(ensemble_s=1e9))
    t0 = 1_000_000_000_000
    earlier = _waypoints(t0, [0.30, 0.40, 0.50])
    scheduler.history.append((t0, Trajectory(earlier)))
    new = _waypoints(t0, [0.30, 0.50, 0.70])
    averaged = scheduler._ensemble(new, np.ones(3, dtype=bool))
    np.testing.assert_allclose(averaged.positions[:, 0], [0.30, 0.45, 0.60])  # frame 0 kept


def _with_heights(waypoints: Waypoints, zs) -> Waypoints:
    positions = waypoints.positions.copy()
    positions[:, 2] = zs
    return dataclasses.replace(waypoints, positions=positions)


class _Servo:
    limits = SimpleNamespace(min_confidence=0.0)

    def __init__(self) -> None:
        self.sent: list[Waypoints] = []

    def submit(self, waypoints: Waypoints) -> None:
        self.sent.append(waypoints)


@pytest.mark.parametrize(
    ("hand_open", "closes", "own"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_a_plan_that_closes_the_open_hand_keeps_its_own_heights(hand_open, closes, own):
    """An earlier plan, whose schedule the arm lags, already lifts (z 0.10) where the new one
    grasps (z 0.02): the grasp keeps its height. A reach (no close) and a plan drawn after the
    hand has closed (lifting, holding) are averaged in all three axes."""
    servo = _Servo()
    config = SchedulerConfig(ensemble_s=1e9)
    scheduler = Scheduler(None, SimpleNamespace(cameras={}), servo, "", config)
    t0 = time.monotonic_ns() + 1_000_000_000  # every frame still ahead when submitted
    earlier = _with_heights(_waypoints(t0, [0.30, 0.40, 0.50]), [0.2, 0.10, 0.10])
    scheduler.history.append((t0, Trajectory(earlier)))
    new = _with_heights(_waypoints(t0, [0.30, 0.50, 0.70]), [0.2, 0.02, 0.02])
    if closes:
        new = dataclasses.replace(new, gripper=np.array([1.0, 0.0, 0.0]))
    plan = SimpleNamespace(waypoints=new, observation_ns=t0, ready_ns=t0, timings={})
    scheduler._submit(plan, hand_open=hand_open)
    sent = servo.sent[-1]
    np.testing.assert_allclose(sent.positions[1:, 0], [0.45, 0.60])  # x, y: always averaged
    np.testing.assert_allclose(sent.positions[1:, 2], [0.02, 0.02] if own else [0.06, 0.06])
    config = SchedulerConfig(ensemble_s=1e9, own_grasp_height=False)
    keep_all = Scheduler(None, SimpleNamespace(cameras={}), _Servo(), "", config)
    keep_all.history.append((t0, Trajectory(earlier)))
    keep_all._submit(plan, hand_open=hand_open)
    np.testing.assert_allclose(keep_all.servo.sent[-1].positions[1:, 2], [0.06, 0.06])


def test_the_pose_history_interpolates_the_pose_at_capture_time():
    class Servo:
        tick = 0

        def state(self):
            self.tick += 1
            pose = np.eye(4)
            pose[0, 3] = 0.001 * self.tick
            return SimpleNamespace(
                tick=self.tick, time_ns=self.tick * 10_000_000, tool_pose=pose, gripper=1.0
            )

    history = PoseHistory(Servo(), period_s=0.001).start()
    time.sleep(0.1)
    history.close()
    pose, gripper = history.at(25_000_000)  # between ticks 2 and 3
    assert abs(pose[0, 3] - 0.0025) < 1e-9 and gripper == 1.0


def test_the_plan_is_conditioned_on_the_pose_at_exposure_not_at_receipt():
    """With measured camera latencies, the pose looked up is the one the frames show: each
    view's host receipt time less its latency, the earliest of them."""
    from aimg.robot.interfaces import RigFrames

    now = time.monotonic_ns()
    frames = RigFrames(
        images={"left": np.zeros((4, 4, 3), np.uint8), "right": np.zeros((4, 4, 3), np.uint8)},
        device_timestamps_ns={"left": 0, "right": 0},
        host_timestamps_ns={"left": now, "right": now - 10_000_000},
        extras={"frame_counter": np.array(7)},
    )
    asked: list[int] = []

    class Poses:
        def at(self, t_ns):
            asked.append(t_ns)
            return np.eye(4), 1.0

    class Planner:
        def plan(self, images, cameras, tool_pose, observation_ns, *args, **kwargs):
            asked.append(observation_ns)
            raise StopIteration  # the lookup is what is under test

    cameras = SimpleNamespace(cameras={}, wait_newer=lambda *_: frames)
    config = SchedulerConfig(join="blend", camera_latency_s={"left": 0.05, "right": 0.02})
    scheduler = Scheduler(Planner(), cameras, None, "", config, poses=Poses())
    with pytest.raises(StopIteration):
        scheduler.step()
    expected = min(now - 50_000_000, now - 10_000_000 - 20_000_000)
    assert asked == [expected, expected]


def _frame_set(t_ns: int, counter: int):
    """One camera's frame set, captured and received at `t_ns`."""
    from aimg.robot.interfaces import RigFrames

    return RigFrames(
        images={"left": np.zeros((4, 4, 3), np.uint8)},
        device_timestamps_ns={"left": t_ns},
        host_timestamps_ns={"left": t_ns},
        extras={"frame_counter": np.array(counter)},
    )


class _InstantPlanner:
    """Plans at once (a short plan starting now) and records each plan's observation time."""

    def __init__(self, dt_s: float) -> None:
        self.dt_s = dt_s
        self.planned: list[int] = []

    def plan(self, images, cameras, tool_pose, observation_ns, *args, **kwargs):
        self.planned.append(observation_ns)
        waypoints = _waypoints(time.monotonic_ns(), [0.3, 0.31], plan_id=len(self.planned))
        return SimpleNamespace(
            waypoints=waypoints, latency_s=0.001, observation_ns=observation_ns,
            ready_ns=observation_ns, timings={},
        )  # fmt: skip


_SERVO = SimpleNamespace(submit=lambda waypoints: None, hold=lambda reason: None)


def test_a_fast_planner_waits_out_the_replan_period_before_the_next_observation():
    """Each plan runs at least `replan_period_s` before a newer one replaces it; a step that is
    not due within its timeout returns without touching the cameras (the loop stays alive)."""

    class Poses:
        def at(self, t_ns):
            return np.diag([1.0, -1.0, -1.0, 1.0]), 1.0

    cameras = SimpleNamespace(
        cameras={}, wait_newer=lambda counter, _: _frame_set(time.monotonic_ns(), counter + 1)
    )
    for period_s in (None, 0.2):  # None: the planner's frame spacing, 0.2 s here
        planner = _InstantPlanner(dt_s=0.2)
        config = SchedulerConfig(join="blend", ensemble_s=0.0, replan_period_s=period_s)
        scheduler = Scheduler(planner, cameras, _SERVO, "", config, poses=Poses())
        for _ in range(3):
            assert scheduler.step(timeout_s=1.0) is not None
        assert (np.diff(planner.planned) >= 200_000_000).all()
        assert scheduler.step(timeout_s=0.0) is None and len(planner.planned) == 3  # not due
    config = SchedulerConfig(join="blend", ensemble_s=0.0, replan_period_s=0.0)
    scheduler = Scheduler(_InstantPlanner(0.2), cameras, _SERVO, "", config, poses=Poses())
    scheduler.step(timeout_s=1.0)
    assert scheduler.step(timeout_s=0.0) is not None  # no period: plans at once


def test_no_replan_while_the_gripper_closes_unless_it_takes_too_long():
    """A plan made mid-grasp sees half-closed fingers and lifts; the executing plan goes on."""
    base = time.monotonic_ns()
    clock = {"now": base}

    def wait_newer(counter, timeout_s):
        clock["now"] += 100_000_000  # a frame set every 0.1 s
        return _frame_set(clock["now"], counter + 1)

    class Poses:
        closing_from_ns = base + 250_000_000  # the fingers close at 1 openness/s from here on

        def at(self, t_ns):
            gripper = float(np.clip(1.0 - (t_ns - self.closing_from_ns) / 1e9, 0.3, 1.0))
            return np.diag([1.0, -1.0, -1.0, 1.0]), gripper  # 0.3: they stop on the cube

    cameras = SimpleNamespace(cameras={}, wait_newer=wait_newer)
    config = SchedulerConfig(join="blend", ensemble_s=0.0, replan_period_s=0.0,
                             gripper_settle_s=0.4, max_frame_age_s=1e6)  # fmt: skip
    scheduler = Scheduler(_InstantPlanner(0.8), cameras, _SERVO, "", config, poses=Poses())
    outcomes = [scheduler.step() is not None for _ in range(12)]
    # t = 0.1, 0.2 s: open and still, plans; 0.3-0.6: the fingers move, no plan for 0.4 s;
    # 0.7 on: plans again (the settling took too long); 0.95: the fingers stop on the cube
    assert outcomes == [True, True] + [False] * 4 + [True] * 6
    clock["now"] = base
    off = dataclasses.replace(config, gripper_settle_s=0.0)
    scheduler = Scheduler(_InstantPlanner(0.8), cameras, _SERVO, "", off, poses=Poses())
    assert all(scheduler.step() is not None for _ in range(12))

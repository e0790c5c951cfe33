"""Servo process: the real SimArm (PyBullet, real time) in the loop's own process.

Every test checks the commands that reached the arm with the independent `check_commands`.
Timings are never asserted (machines are noisy): only structure and ordering.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from aimg.robot.interfaces import ArmErrorCode
from aimg.robot.sim.devices import SimArm
from aimg.robot.sim.world import top_down_pose
from aimg.runtime.safety import SafetyLimits, check_commands
from aimg.runtime.servo import ServoProcess, ServoState
from aimg.runtime.waypoints import Waypoints

pytest.importorskip("pybullet")

RATE = 100.0
LIMITS = SafetyLimits()
SIM_ARM = functools.partial(SimArm, real_time=True)


class FaultyArm(SimArm):
    """Fault injector: after `fault_after` servo commands it sends its own firmware a target
    outside the firmware boundary, which the simulated xArm answers with a real C35."""

    def __init__(self, fault_after: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fault_after = fault_after
        self.calls = 0

    def servo(self, tool_pose: np.ndarray) -> None:
        self.calls += 1
        if self.calls == self.fault_after:
            tool_pose = top_down_pose(np.array([0.3, 0.0, 0.9]))  # above the firmware box
        super().servo(tool_pose)


class BrokenArm(SimArm):
    """An arm whose connection breaks after `fail_after` servo commands."""

    def __init__(self, fail_after: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_after = fail_after
        self.calls = 0

    def servo(self, tool_pose: np.ndarray) -> None:
        self.calls += 1
        if self.calls >= self.fail_after:
            raise ConnectionError("xArm connection reset by peer")
        super().servo(tool_pose)


def unreachable_arm() -> SimArm:
    raise OSError("no route to host 192.168.1.222")


def servo_process(arm_factory=SIM_ARM, **kwargs) -> ServoProcess:
    return ServoProcess(arm_factory, kwargs.pop("limits", LIMITS), rate_hz=RATE, **kwargs)


def plan(
    start: np.ndarray,
    offsets,
    dt_s: float = 0.3,
    delay_s: float = 0.05,
    confidence: float = 1.0,
    plan_id: int = 1,
    gripper=None,
) -> Waypoints:
    """Waypoints at start + offsets (m), top-down, one every dt_s from now + delay_s."""
    positions = np.asarray(start, dtype=np.float64) + np.asarray(offsets, dtype=np.float64)
    k = len(positions)
    t0 = time.monotonic_ns() + round(delay_s * 1e9)
    times = t0 + np.round(np.arange(k) * dt_s * 1e9).astype(np.int64)
    rotations = np.repeat(top_down_pose(np.zeros(3))[None, :3, :3], k, axis=0)
    gripper = np.ones(k) if gripper is None else np.asarray(gripper, dtype=np.float64)
    return Waypoints(times, positions, rotations, gripper, np.full(k, confidence), plan_id=plan_id)


def wait_for(servo: ServoProcess, predicate, timeout_s: float = 10.0) -> ServoState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = servo.state()
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last state: mode {state.mode}, tick {state.tick}")
        time.sleep(0.02)


def wait_at_rest(servo: ServoProcess, timeout_s: float = 10.0) -> ServoState:
    """Wait until the loop holds and the commands stopped changing."""
    wait_for(servo, lambda s: s.mode == "holding", timeout_s)
    time.sleep(0.3)
    return wait_for(servo, lambda s: s.mode == "holding", timeout_s)


def assert_no_violations(servo: ServoProcess) -> list:
    commands = servo.commands()
    assert commands, "no command reached the arm"
    assert check_commands(commands, servo.limits, 1.0 / servo.rate_hz) == []
    return commands


def kinds(events) -> set[str]:
    return {e.kind for e in events}


HOME = np.array([0.3, 0.0, 0.3])  # the simulated arm starts here


def test_tracks_a_plan_on_the_sim_arm():
    with servo_process() as servo:
        start = wait_for(servo, lambda s: s.mode == "idle")
        assert start.realtime  # says what scheduling the loop got
        np.testing.assert_allclose(start.tool_pose[:3, 3], HOME, atol=1e-3)
        offsets = [[0, 0, 0], [0.03, 0.04, -0.02], [0.08, 0.06, -0.06], [0.1, 0.03, -0.1]]
        servo.submit(plan(HOME, offsets, plan_id=7))
        tracking = wait_for(servo, lambda s: s.mode == "tracking")
        assert tracking.plan_id == 7 and tracking.plans == 1
        assert tracking.seam_position_jump_m < 1e-9 and tracking.seam_velocity_jump_m_s < 1e-3
        final = wait_at_rest(servo)
        assert final.error_code == 0
        target = HOME + offsets[-1]
        assert np.linalg.norm(final.command_pose[:3, 3] - target) < 1e-6
        assert np.linalg.norm(final.tool_pose[:3, 3] - target) < 0.005
        commands = assert_no_violations(servo)
        assert [c.time_ns for c in commands] == sorted(c.time_ns for c in commands)
        stats = servo.stats()
        assert stats["ticks"] > 100 and stats["samples"] > 100
        for key in ("jitter_ms", "work_ms"):
            p = stats[key]
            assert 0 <= p["p50"] <= p["p99"] <= p["max"]
        assert stats["overruns"] >= 0 and stats["realtime"] == start.realtime
    assert servo.state().mode == "stopped" and servo.state().exit_reason == "closed"


def test_replanning_mid_motion_is_seamless():
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0.1, 0.0, 0.0], [0.2, 0.0, 0.0]], dt_s=0.5))
        time.sleep(0.5)
        moving = servo.state()
        second = plan(moving.command_pose[:3, 3], [[0, 0, 0], [0.0, 0.1, -0.05]], plan_id=2)
        servo.submit(second)
        replanned = wait_for(servo, lambda s: s.plan_id == 2)
        assert replanned.plans == 2
        assert replanned.seam_position_jump_m < 1e-9
        assert replanned.seam_velocity_jump_m_s < 1e-3
        final = wait_at_rest(servo)
        assert np.linalg.norm(final.command_pose[:3, 3] - second.positions[-1]) < 1e-6
        assert_no_violations(servo)


BAD_PLANS = {
    # beyond the filter's box and the firmware's (y 0.5): the filter stops at its own edge
    "outside_workspace": (
        {"offsets": [[0, 0, 0], [0.0, 0.3, 0], [0.0, 0.6, 0]], "dt_s": 0.6},
        "clamp_workspace",
    ),
    # 0.3 m in 50 ms (the firmware faults on jumps over 0.1 m): slowed to the limits
    "jump": ({"offsets": [[0.0, 0.0, 0.0], [0.3, 0.0, -0.1]], "dt_s": 0.05}, "clamp_speed"),
    "nan": ({"offsets": [[0, 0, 0], [0.05, 0, 0], [np.nan, 0, 0]]}, "reject_nonfinite"),
    "low_confidence": (
        {"offsets": [[0, 0, 0], [0.1, 0, 0]], "confidence": 0.05},
        "reject_low_confidence",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plans_end_in_a_hold_without_violations(case):
    kwargs, kind = BAD_PLANS[case]
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, **kwargs))
        final = wait_at_rest(servo)
        events = servo.events()
        assert kind in kinds(events), [e.kind for e in events]
        assert final.error_code == 0  # the firmware never had to step in
        position = final.command_pose[:3, 3]
        assert np.all(position >= LIMITS.workspace_low) and np.all(
            position <= LIMITS.workspace_high
        )
        if case in ("nan", "low_confidence"):
            assert np.linalg.norm(position - HOME) < 1e-3  # rejected before moving
        assert_no_violations(servo)


def test_estop_latches_until_reset():
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0.1, 0.05, -0.05]], dt_s=0.6))
        wait_for(servo, lambda s: s.mode == "tracking")
        time.sleep(0.2)
        servo.estop("operator")
        stopped = wait_for(servo, lambda s: s.mode == "estopped")
        assert stopped.error_code == ArmErrorCode.EMERGENCY_STOP
        sent = len(servo.commands())
        servo.submit(plan(HOME, [[0, 0, 0], [0.05, 0, 0]], plan_id=3))
        time.sleep(0.3)
        assert servo.state().mode == "estopped"
        assert len(servo.commands()) == sent  # nothing reached the arm while latched
        events = servo.events()
        assert {"estop", "plan_ignored"} <= kinds(events)
        servo.reset()
        recovered = wait_for(servo, lambda s: s.mode == "holding")
        assert recovered.error_code == 0 and recovered.segment == stopped.segment + 1
        assert "reset" in kinds(servo.events())
        servo.submit(plan(recovered.tool_pose[:3, 3], [[0, 0, 0], [0.0, 0.05, 0.0]], plan_id=4))
        wait_for(servo, lambda s: s.plan_id == 4 and s.mode == "tracking")
        wait_at_rest(servo)
        assert_no_violations(servo)


def test_arm_error_mid_motion_holds_until_reset():
    factory = functools.partial(FaultyArm, fault_after=60, real_time=True)
    with servo_process(factory) as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0.1, 0.1, 0.0]], dt_s=1.5))
        faulted = wait_for(servo, lambda s: s.mode == "error")
        assert faulted.error_code == ArmErrorCode.BOUNDARY
        events = servo.events()
        error = next(e for e in events if e.kind == "arm_error")
        assert "C35 safety boundary" in error.message and error.severity == "hold"
        sent = len(servo.commands())
        time.sleep(0.3)
        assert servo.state().mode == "error" and len(servo.commands()) == sent
        servo.reset()
        recovered = wait_for(servo, lambda s: s.mode == "holding")
        assert recovered.error_code == 0
        servo.submit(plan(recovered.tool_pose[:3, 3], [[0, 0, 0], [0.0, -0.05, 0.0]], plan_id=2))
        wait_for(servo, lambda s: s.plan_id == 2)
        assert wait_at_rest(servo).error_code == 0
        assert_no_violations(servo)


def test_overruns_are_reported_and_repeated_ones_hold():
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0.15, 0.0, 0.0]], dt_s=2.0))
        wait_for(servo, lambda s: s.mode == "tracking")
        servo.inject_tick_delay(3.0 / RATE, ticks=LIMITS.max_consecutive_overruns + 2)
        state = wait_at_rest(servo)
        assert state.overruns >= LIMITS.max_consecutive_overruns
        events = servo.events()
        overruns = [e for e in events if e.kind == "overrun"]
        assert any(e.severity == "info" for e in overruns)  # the first late tick is reported
        assert any(e.severity == "hold" for e in overruns)  # ... and a run of them holds
        assert servo.stats()["overruns"] == state.overruns
        assert np.linalg.norm(state.command_pose[:3, 3] - (HOME + [0.15, 0, 0])) > 0.01
        assert_no_violations(servo)


def test_client_hold_and_stale_frames_bring_the_arm_to_rest():
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0.15, 0.0, 0.0]], dt_s=2.0))
        wait_for(servo, lambda s: s.mode == "tracking")
        servo.hold("operator wants a pause")
        wait_at_rest(servo)
        hold = next(e for e in servo.events() if e.kind == "hold")
        assert "pause" in hold.message and hold.severity == "hold"
        here = servo.state().command_pose[:3, 3]
        servo.submit(plan(here, [[0, 0, 0], [0.0, 0.15, 0.0]], dt_s=2.0, plan_id=2))
        wait_for(servo, lambda s: s.mode == "tracking" and s.plan_id == 2)
        servo.heartbeat(frame_age_s=2.0, planner_ok=True)
        wait_at_rest(servo)
        assert "stale_frames" in kinds(servo.events())
        assert_no_violations(servo)


def test_a_failing_arm_factory_is_reported_by_start():
    with pytest.raises(RuntimeError, match="no route to host"):
        servo_process(unreachable_arm).start()


def test_an_arm_failure_stops_the_loop_with_a_reason():
    factory = functools.partial(BrokenArm, fail_after=30, real_time=True)
    servo = servo_process(factory).start()
    try:
        wait_for(servo, lambda s: not s.alive, timeout_s=10.0)
        state = servo.state()
        assert "connection reset" in state.exit_reason and state.mode == "error"
        failed = [e for e in servo.events() if e.kind == "servo_failed"]
        assert failed and "connection reset" in failed[0].message
        with pytest.raises(RuntimeError, match="connection reset"):
            servo.submit(plan(HOME, [[0, 0, 0]]))
    finally:
        servo.close()


@pytest.mark.parametrize("rate", [10.0, 49.0, 251.0, 1000.0])
def test_rate_outside_50_to_250_hz_is_refused(rate):
    with pytest.raises(ValueError, match="rate_hz"):
        ServoProcess(SIM_ARM, LIMITS, rate_hz=rate)


def bench_is_sane(result: dict, rate: float, load: str) -> None:
    assert result["rate_hz"] == rate and result["load"] == load
    for key in ("jitter_ms", "work_ms"):
        p = result[key]
        assert 0 <= p["p50"] <= p["p99"] <= p["max"]
    assert result["ticks"] > 0 and result["overruns"] >= 0 and result["realtime"]
    assert result["violations"] == 0


@pytest.mark.parametrize("arm", ["server", "process"])
def test_jitter_bench_reports_sane_statistics(arm):
    from aimg.runtime.servo_bench import bench_servo_jitter

    bench_is_sane(bench_servo_jitter(100.0, 1.0, "none", arm=arm), 100.0, "none")


@pytest.mark.slow
def test_jitter_bench_under_planner_load():
    from aimg.runtime.servo_bench import DEFAULT_CHECKPOINT, bench_servo_jitter

    if not (DEFAULT_CHECKPOINT / "config.json").is_file():
        pytest.skip("the sim-tiny checkpoint is not in this checkout")
    result = bench_servo_jitter(250.0, 1.5, "planner")
    bench_is_sane(result, 250.0, "planner")
    assert result["plans_per_s"] > 0


def test_pause_sends_nothing_until_reset_restarts_from_the_measured_pose():
    """What `aimg run --sim` does around the simulator's teleport to a new start pose."""
    with servo_process() as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.pause("teleport")
        paused = wait_for(servo, lambda s: s.mode == "paused")
        sent = len(servo.commands())
        servo.submit(plan(HOME, [[0, 0, 0], [0.05, 0, 0]], plan_id=2))
        time.sleep(0.3)
        assert servo.state().mode == "paused" and len(servo.commands()) == sent
        assert {"pause", "plan_ignored"} <= kinds(servo.events())
        servo.reset()
        resumed = wait_for(servo, lambda s: s.mode == "holding")
        assert resumed.segment == paused.segment + 1
        assert_no_violations(servo)


@pytest.mark.parametrize("follows_arm", [True, False])
def test_the_hand_closes_where_the_plan_closes_it_once_the_arm_is_there(follows_arm):
    """A plan faster than the speed limit: the arm falls behind its clock. The plan then closes
    the hand slowly at the bottom (a ramp of under 0.02 per tick, as a model's plans do): it
    closes there (gripper_follows_arm), not where the arm happens to be at the plan's time.
    The ramp spans the whole 0.6 s frame, as a model's sparser frames have it."""
    bottom = HOME + np.array([0.0, 0.0, -0.25])
    with servo_process(gripper_follows_arm=follows_arm, gripper_ramp_s=None) as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        fast = plan(
            HOME, [[0, 0, 0], [0, 0, -0.25], [0, 0, -0.25]], dt_s=0.6, gripper=[1.0, 1.0, 0.0]
        )
        servo.submit(fast)
        wait_at_rest(servo)
        commands = assert_no_violations(servo)
    first = next(c for c in commands if c.gripper < 0.9)
    above = float(np.linalg.norm(first.pose[:3, 3] - bottom))
    if follows_arm:
        assert above < 0.01
    else:  # the old behaviour, for contrast: the plan's clock shuts the hand on the way down
        assert above > 0.05
    assert commands[-1].gripper == 0.0


@pytest.mark.parametrize("ramp_s", [0.35, None])
def test_the_hand_starts_shutting_near_the_bottom_with_a_ramp_of_its_own_travel_time(ramp_s):
    """One 0.8 s frame from 10 cm above to the bottom, open then shut: ramped over the hand's
    travel time (the default) the fingers start closing in the last 4 cm of the descent, not
    at its top as a ramp over the whole frame has them."""
    bottom = HOME + np.array([0.0, 0.0, -0.10])
    with servo_process(gripper_ramp_s=ramp_s) as servo:
        wait_for(servo, lambda s: s.mode == "idle")
        servo.submit(plan(HOME, [[0, 0, 0], [0, 0, -0.10]], dt_s=0.8, gripper=[1.0, 0.0]))
        wait_at_rest(servo)
        commands = assert_no_violations(servo)
    first = next(c for c in commands if c.gripper < 0.9)
    above = float(first.pose[2, 3] - bottom[2])
    if ramp_s is not None:
        assert above < 0.045
    else:
        assert above > 0.07
    assert commands[-1].gripper == 0.0


def test_a_gripper_ramp_outside_0_to_5_s_is_refused():
    with pytest.raises(ValueError, match="gripper_ramp_s"):
        ServoProcess(SIM_ARM, LIMITS, rate_hz=RATE, gripper_ramp_s=0.0)

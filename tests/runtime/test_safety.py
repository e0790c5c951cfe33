"""Safety filter: every clamp, every hold, the estop latch, and no command ever out of bounds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aimg.robot.interfaces import ArmErrorCode, ArmState
from aimg.robot.sim.world import CellConfig, top_down_pose
from aimg.runtime.safety import (
    Command,
    Health,
    SafetyFilter,
    SafetyLimits,
    check_command,
    check_commands,
)

RATE = 100.0
DT = 1.0 / RATE
HOME = np.array([0.35, 0.0, 0.3])


def arm_state(pose: np.ndarray, gripper: float = 1.0, error: int = 0) -> ArmState:
    return ArmState(pose, np.zeros(6), gripper, error, 0, 0)


class Run:
    """A filter in closed loop with a perfect arm (the measured pose is the last command)."""

    def __init__(self, limits: SafetyLimits | None = None, rate: float = RATE, start=HOME):
        self.limits = limits or SafetyLimits()
        self.filter = SafetyFilter(self.limits, rate)
        self.state = arm_state(top_down_pose(np.asarray(start, dtype=np.float64)))
        self.commands: list[Command] = []
        self.events = []
        self.decisions = []
        self.t_ns = 0
        self.rate = rate

    def tick(self, target, gripper=1.0, confidence=1.0, health=None):
        decision = self.filter.filter(target, gripper, confidence, self.state, self.t_ns, health)
        self.decisions.append(decision)
        self.events.extend(decision.events)
        if decision.mode != "estop":
            self.commands.append(Command(self.t_ns, decision.pose, decision.gripper))
            self.state = arm_state(decision.pose, decision.gripper)
        self.t_ns += round(1e9 / self.rate)
        return decision

    def run(self, target, ticks: int, **kwargs):
        for _ in range(ticks):
            decision = self.tick(target, **kwargs)
        return decision

    def kinds(self) -> set[str]:
        return {e.kind for e in self.events}

    def violations(self) -> list[str]:
        return check_commands(self.commands, self.limits, 1.0 / self.rate)

    def speeds(self) -> np.ndarray:
        p = np.array([c.pose[:3, 3] for c in self.commands])
        return np.linalg.norm(np.diff(p, axis=0), axis=1) * self.rate


# -- limits --------------------------------------------------------------------------------------


def test_default_box_is_strictly_inside_the_sim_firmware_box():
    limits, cell = SafetyLimits(), CellConfig()
    assert np.all(np.array(limits.workspace_low) > np.array(cell.workspace_low))
    assert np.all(np.array(limits.workspace_high) < np.array(cell.workspace_high))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_speed_m_s", -1.0),
        ("max_accel_m_s2", float("nan")),
        ("workspace_low", (0.9, 0.0, 0.0)),
        ("workspace_high", (1.0, 2.0)),
        ("orientation_cone_deg", 200.0),
        ("min_confidence", 1.5),
        ("max_consecutive_overruns", 0),
        ("cone_axis", (0.0, 0.0, 0.0)),
    ],
)
def test_invalid_limits_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(SafetyLimits(), **{field: value})


def test_limits_from_a_config_mapping():
    limits = SafetyLimits.from_dict({"max_speed_m_s": 0.1, "workspace_low": [0.2, -0.3, 0.01]})
    assert limits.max_speed_m_s == 0.1 and limits.workspace_low == (0.2, -0.3, 0.01)
    assert SafetyLimits.from_dict(limits.to_dict()) == limits
    with pytest.raises(ValueError, match="max_sped_m_s"):
        SafetyLimits.from_dict({"max_sped_m_s": 0.1})


# -- clamps --------------------------------------------------------------------------------------


def test_target_outside_the_box_is_projected_into_it():
    run = Run()
    outside = top_down_pose(np.array([0.35, 0.0, -0.2]))
    run.run(outside, 200)
    assert "clamp_workspace" in run.kinds()
    z = run.commands[-1].pose[2, 3]
    assert z == pytest.approx(run.limits.workspace_low[2], abs=1e-6)
    assert not run.violations()


def test_far_target_is_approached_at_the_speed_limit_without_overshoot():
    run = Run()
    target = top_down_pose(HOME + [0.2, 0.1, -0.1])
    run.run(target, 300)
    assert {"clamp_speed", "clamp_accel"} <= run.kinds()
    speeds = run.speeds()
    assert speeds.max() == pytest.approx(run.limits.max_speed_m_s, rel=1e-3)
    distance = np.linalg.norm([c.pose[:3, 3] - target[:3, 3] for c in run.commands], axis=1)
    assert np.all(np.diff(distance) <= 1e-12)  # monotone approach: no overshoot
    assert distance[-1] < 1e-9
    assert not run.violations()


def test_step_limit_binds_when_tighter_than_the_speed_limit():
    limits = SafetyLimits(max_step_m=0.001, max_speed_m_s=0.25)  # 0.1 m/s at 100 Hz
    run = Run(limits)
    run.run(top_down_pose(HOME + [0.2, 0.0, 0.0]), 200)
    assert "clamp_step" in run.kinds()
    assert run.speeds().max() <= 0.1 + 1e-9
    assert not run.violations()


def test_rotation_is_rate_limited_and_kept_in_the_cone():
    run = Run()
    tilted = np.eye(4)
    tilted[:3, :3] = Rotation.from_euler("x", 100, degrees=True).as_matrix() @ np.diag([1, -1, -1])
    tilted[:3, 3] = HOME
    run.run(tilted, 300)
    assert {"clamp_orientation", "clamp_speed", "clamp_accel"} <= run.kinds()
    z = run.commands[-1].pose[:3, 2]
    angle = math.degrees(math.acos(np.clip(z @ [0, 0, -1], -1, 1)))
    assert 55.0 < angle <= 60.0
    assert not run.violations()


def test_gripper_rate_is_limited():
    run = Run()
    target = top_down_pose(HOME)
    run.run(target, 100, gripper=0.0)
    assert "clamp_gripper_rate" in run.kinds()
    grippers = np.array([c.gripper for c in run.commands])
    assert np.max(np.abs(np.diff(grippers))) <= run.limits.max_gripper_rate_per_s * DT + 1e-12
    assert grippers[-1] == 0.0
    run.run(target, 10, gripper=1.7)
    assert "clamp_gripper_range" in run.kinds() and run.commands[-1].gripper <= 1.0
    assert not run.violations()


# -- holds ---------------------------------------------------------------------------------------


def moving_run() -> tuple[Run, np.ndarray]:
    """A run cruising at the speed limit, and its (far) target."""
    run = Run()
    target = top_down_pose(HOME + [0.3, 0.0, 0.0])
    run.run(target, 40)
    assert run.speeds()[-1] == pytest.approx(run.limits.max_speed_m_s, rel=1e-3)
    return run, target


def assert_comes_to_rest(run: Run, kind: str):
    assert kind in run.kinds()
    assert all(d.mode == "hold" for d in run.decisions[-30:])
    assert run.speeds()[-1] == 0.0
    assert not run.violations()  # decelerated within the acceleration limit


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("reject_low_confidence", {"confidence": 0.1}),
        ("reject_low_confidence", {"confidence": float("nan")}),
        ("reject_nonfinite", {"gripper": float("nan")}),
        ("stale_plan", {"health": Health(plan_age_s=4.5)}),
        ("stale_frames", {"health": Health(frame_age_s=0.8)}),
        ("planner_silent", {"health": Health(planner_silence_s=7.0)}),
        ("overrun", {"health": Health(consecutive_overruns=5)}),
    ],
)
def test_untrusted_input_holds_and_decelerates(kind, kwargs):
    run, target = moving_run()
    run.run(target, 60, **kwargs)
    assert_comes_to_rest(run, kind)
    assert all(kind in d.hold_reasons for d in run.decisions[-60:])
    event = next(e for e in run.events if e.kind == kind)
    assert event.severity == "hold" and any(ch.isdigit() for ch in event.message)


def test_non_finite_target_pose_holds():
    run, target = moving_run()
    bad = target.copy()
    bad[0, 3] = np.inf
    run.run(bad, 60)
    assert_comes_to_rest(run, "reject_nonfinite")


def test_invalid_rotation_holds():
    run, target = moving_run()
    bad = target.copy()
    bad[:3, :3] *= 2.0
    run.run(bad, 60)
    assert_comes_to_rest(run, "reject_invalid_pose")


def test_no_target_comes_to_rest_quietly():
    run, _ = moving_run()
    before = len(run.events)
    run.run(None, 60)
    assert run.decisions[-1].hold_reasons == ("no_target",)
    assert len(run.events) == before and run.speeds()[-1] == 0.0
    assert not run.violations()


def test_tracking_error_holds():
    run = Run()
    run.tick(top_down_pose(HOME))
    run.state = arm_state(top_down_pose(HOME + [0.0, 0.0, 0.06]))  # the arm lags 6 cm
    decision = run.tick(top_down_pose(HOME + [0.1, 0.0, 0.0]))
    assert decision.mode == "hold" and "tracking_error" in run.kinds()


def test_arm_error_latches_until_reset():
    run, target = moving_run()
    run.tick(target, health=Health(arm_error=int(ArmErrorCode.COLLISION)))
    event = next(e for e in run.events if e.kind == "arm_error")
    assert "C31 collision" in event.message and event.severity == "hold"
    run.run(target, 20, health=Health(arm_error=0))  # still latched though the code cleared
    assert run.filter.faulted and all(d.mode == "hold" for d in run.decisions[-20:])
    run.filter.reset(run.t_ns)
    assert run.tick(target).mode == "move"


def test_estop_latches_until_an_explicit_reset():
    run, target = moving_run()
    event = run.filter.estop("operator pressed the button", run.t_ns)
    assert event.kind == "estop" and event.severity == "estop" and "button" in event.message
    for _ in range(50):
        assert run.tick(target).mode == "estop"
    assert run.filter.estopped
    reset = run.filter.reset(run.t_ns)
    assert reset.kind == "reset" and "estop" in reset.message
    assert not run.filter.estopped
    # commanding restarts from the measured pose, as a new segment
    run.commands = []
    decision = run.tick(target)
    assert decision.mode == "move"
    assert np.linalg.norm(decision.pose[:3, 3] - run.commands[0].pose[:3, 3]) < 1e-12


def test_events_announce_a_condition_once_not_every_tick():
    run, target = moving_run()
    run.run(target, 50, confidence=0.0)  # 0.5 s
    assert sum(e.kind == "reject_low_confidence" for e in run.events) == 1
    assert run.filter.counts["reject_low_confidence"] == 50


def test_tracks_a_smooth_target_exactly():
    run = Run()
    errors = []
    for k in range(400):
        t = k * DT
        p = HOME + [0.08 * math.sin(t), 0.08 * (1 - math.cos(t)), 0.02 * math.sin(2 * t)]
        pose = top_down_pose(p, yaw=0.3 * math.sin(t))
        decision = run.tick(pose)
        errors.append(np.linalg.norm(decision.pose[:3, 3] - p))
    assert max(errors[100:]) < 1e-9
    assert not run.violations()


# -- the property: no sequence of targets gets a bad command through ----------------------------


def random_targets(rng: np.random.Generator, ticks: int):
    target = top_down_pose(HOME)
    gripper = 1.0
    for _ in range(ticks):
        r = rng.random()
        if r < 0.02:  # anything, anywhere
            target = np.eye(4)
            target[:3, :3] = Rotation.random(random_state=rng).as_matrix()
            target[:3, 3] = rng.uniform(-1.0, 1.5, 3)
        elif r < 0.03:
            target = target.copy()
            target[rng.integers(3), 3] = rng.choice([np.nan, np.inf])
        elif r < 0.05:  # a wild jump, often out of the box
            target = top_down_pose(
                rng.uniform([0.0, -0.7, -0.2], [1.0, 0.7, 0.8]), rng.uniform(-3, 3)
            )
        elif r < 0.06:  # on the table edge, tilted to the cone's edge and beyond
            target = np.eye(4)
            target[:3, :3] = Rotation.from_rotvec([0, 2.0 + rng.random(), 0]).as_matrix()
            target[:3, 3] = [0.7, 0.4, 0.01]
        elif r < 0.5 and np.all(np.isfinite(target)):  # jitter
            target = target.copy()
            target[:3, 3] += rng.normal(0, 0.004, 3)
            target[:3, :3] = (
                Rotation.from_rotvec(rng.normal(0, 0.03, 3)).as_matrix() @ target[:3, :3]
            )
        if rng.random() < 0.05:
            gripper = rng.choice([rng.uniform(-0.5, 1.5), np.nan])
        confidence = rng.choice([0.05, 0.9, 1.0], p=[0.02, 0.49, 0.49])
        health = Health(frame_age_s=rng.choice([0.1, 0.9], p=[0.99, 0.01]))
        yield target, gripper, confidence, health


@pytest.mark.parametrize("rate", [50.0, 100.0, 250.0])
def test_random_targets_never_produce_a_violation(rate):
    run = Run(rate=rate)
    rng = np.random.default_rng(int(rate))
    for target, gripper, confidence, health in random_targets(rng, 5000):
        run.tick(target, gripper=gripper, confidence=confidence, health=health)
    assert run.violations() == []
    counts = run.filter.counts
    for kind in ("clamp_workspace", "clamp_speed", "clamp_accel", "clamp_orientation"):
        assert counts[kind] > 0, kind  # the sequence really exercised the clamps
    assert counts["reject_nonfinite"] > 0 and counts["stale_frames"] > 0
    positions = np.array([c.pose[:3, 3] for c in run.commands])
    assert np.ptp(positions, axis=0).min() > 0.05  # ... and really moved


# -- the checker ---------------------------------------------------------------------------------


def test_check_command_finds_each_kind_of_violation():
    limits = SafetyLimits()
    pose = top_down_pose(HOME)
    c0 = Command(0, pose, 1.0)
    assert check_command(None, None, c0, limits, DT) == []
    jump = Command(1, top_down_pose(HOME + [0.02, 0, 0]), 1.0)
    assert any("step" in v for v in check_command(None, c0, jump, limits, DT))
    fast = Command(1, top_down_pose(HOME + [0.004, 0, 0]), 1.0)
    violations = check_command(None, c0, fast, limits, DT)
    assert any("speed" in v for v in violations) and not any("step" in v for v in violations)
    accel = Command(2, top_down_pose(HOME + [0.0021, 0, 0]), 1.0)
    assert any("acceleration" in v for v in check_command(c0, c0, accel, limits, DT))
    outside = Command(0, top_down_pose([0.35, 0.0, 0.6]), 1.0)
    assert any("box" in v for v in check_command(None, None, outside, limits, DT))
    tilted = pose.copy()
    tilted[:3, :3] = Rotation.from_euler("x", 61, degrees=True).as_matrix() @ pose[:3, :3]
    assert any("cone" in v for v in check_command(None, None, Command(0, tilted, 1.0), limits, DT))
    snap = Command(1, pose, 0.9)
    assert any("gripper rate" in v for v in check_command(None, c0, snap, limits, DT))
    turn = pose.copy()
    turn[:3, :3] = Rotation.from_euler("z", 0.02).as_matrix() @ pose[:3, :3]
    assert any(
        "angular speed" in v for v in check_command(None, c0, Command(1, turn, 1.0), limits, DT)
    )
    nan = Command(1, np.full((4, 4), np.nan), 1.0)
    assert check_command(None, c0, nan, limits, DT)


def test_check_commands_restarts_at_each_segment():
    limits = SafetyLimits()
    a = Command(0, top_down_pose(HOME), 1.0, segment=0)
    b = Command(1, top_down_pose(HOME + [0.05, 0, 0]), 1.0, segment=1)
    assert check_commands([a, b], limits, DT) == []
    assert check_commands([a, dataclasses.replace(b, segment=0)], limits, DT)

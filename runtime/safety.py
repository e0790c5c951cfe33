"""The safety filter between every planned target and the arm, and the checker that audits it.

`SafetyFilter.filter` turns a target pose (from the trajectory) into the next servo command,
which is always within every `SafetyLimits` bound relative to the previous commands: the step
per tick, the linear and angular speed and acceleration (from the last two commands), the
workspace box, the tool-axis cone and the gripper rate. It clamps what can be clamped and holds
(decelerates to a stop within the acceleration limits) when the input cannot be trusted;
`estop` latches until an explicit `reset`. `check_command` re-derives every bound from three
consecutive commands, independently of the filter, for tests and the runtime's monitor.

How the bounds stay satisfiable: the new velocity is searched along the segment from a braking
velocity (the previous one reduced within the acceleration limit, always admissible) towards
the desired one, and velocities towards a wall of the box or the edge of the cone are capped by
the speed from which the arm can still stop before it. Units: metres, radians, seconds; poses
are 4x4 TCP-to-base; angular velocities are rotation vectors in the base frame per second.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from aimg.robot.interfaces import ArmState
from aimg.robot.xarm.codes import error_meaning  # the code tables only, not the SDK

SEVERITIES = ("info", "clamp", "hold", "estop")
#: Internal slack: the filter aims this much (relative) inside every limit, so float rounding
#: never lets a command exceed one by more than `check_command`'s 1e-9.
_MARGIN = 1e-7
#: The filter keeps the tool axis this far (rad) inside the cone, room for the second-order
#: drift of sideways rotations that the first-order cone brake does not see.
_CONE_MARGIN_RAD = math.radians(2.0)
#: Events of one kind are repeated at most this often while the condition lasts.
_REPEAT_NS = 1_000_000_000
_CLAMP_SLACK = 1e-12


# -- small SO(3) helpers (the filter runs every tick: scipy's per-call overhead is too high) --


def _hat(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] of a rotation vector [3] (rad), Rodrigues' formula."""
    angle = math.sqrt(float(rotvec @ rotvec))
    k = _hat(rotvec)
    if angle < 1e-8:
        return np.eye(3) + k + 0.5 * (k @ k)
    return (
        np.eye(3) + (math.sin(angle) / angle) * k + ((1.0 - math.cos(angle)) / angle**2) * (k @ k)
    )


def so3_log(rotation: np.ndarray) -> np.ndarray:
    """Rotation vector [3] (rad, angle in [0, pi]) of a rotation matrix [3, 3]."""
    r = rotation
    cos = max(-1.0, min(1.0, (r[0, 0] + r[1, 1] + r[2, 2] - 1.0) / 2.0))
    angle = math.acos(cos)
    vee = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return 0.5 * vee * (1.0 + angle * angle / 6.0)
    if angle < math.pi - 1e-4:
        return (angle / (2.0 * math.sin(angle))) * vee
    b = (r + r.T) / 2.0 - cos * np.eye(3)  # = (1 - cos) k k^T
    i = int(np.argmax(np.diag(b)))
    axis = b[i] / math.sqrt(max(b[i, i] * (1.0 - cos), 1e-300))
    axis /= np.linalg.norm(axis)
    if axis @ vee < 0.0:
        axis = -axis
    return angle * axis


def _norm(v: np.ndarray) -> float:
    return math.sqrt(float(v @ v))


def _stop_speed(distance: np.ndarray | float, decel: float, dt: float) -> np.ndarray | float:
    """Largest speed v with v*dt + v^2/(2*decel) <= distance: moving at v this tick, the arm
    can still stop within `distance` braking by decel*dt per tick (0 for distance <= 0)."""
    d = np.maximum(distance, 0.0)
    return decel * (np.sqrt(dt * dt + 2.0 * d / decel) - dt)


def _ball_limit(start: np.ndarray, direction: np.ndarray, center: np.ndarray, radius: float):
    """Largest lam in [0, 1] with |start + lam*direction - center| <= radius (0 if none)."""
    c = start - center
    dd = float(direction @ direction)
    if dd == 0.0:
        return 1.0
    cd = float(c @ direction)
    disc = cd * cd - dd * (float(c @ c) - radius * radius)
    if disc < 0.0:
        return 0.0
    return min(1.0, max(0.0, (-cd + math.sqrt(disc)) / dd))


# -- limits, events, decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class SafetyLimits:
    """What the filter lets through (defaults fit the simulated cell).

    The box must lie strictly inside the arm firmware's own boundary (the sim's is x 0.12..0.80,
    y -0.5..0.5, z -0.01..0.65) so the filter, not the firmware, is what stops a bad target.
    `cone_axis` is a base-frame direction; the tool z axis stays within `orientation_cone_deg`
    of it ((0, 0, -1): pointing down). Ages and silences are seconds; overruns count ticks.
    `max_tracking_error_m` holds when the measured TCP lags the last command by more than that,
    far below the firmware's 0.10 m servo-jump limit. `min_confidence` gates the planner's
    per-waypoint confidence (`aimg.runtime.policy.waypoint_confidence`: how well the views
    agree on the pose, in metres at the tool; 0.2 is an RMS disagreement of about 1.8 cm).
    """

    workspace_low: tuple[float, float, float] = (0.15, -0.45, 0.005)
    workspace_high: tuple[float, float, float] = (0.75, 0.45, 0.55)
    max_speed_m_s: float = 0.25
    max_accel_m_s2: float = 1.5
    max_angular_speed_rad_s: float = 1.5
    max_angular_accel_rad_s2: float = 6.0
    max_step_m: float = 0.008
    max_step_rad: float = 0.05
    orientation_cone_deg: float = 60.0
    cone_axis: tuple[float, float, float] = (0.0, 0.0, -1.0)
    max_gripper_rate_per_s: float = 2.0
    min_confidence: float = 0.2
    max_plan_age_s: float = 4.0
    max_frame_age_s: float = 0.5
    max_planner_silence_s: float = 6.0
    max_consecutive_overruns: int = 5
    max_tracking_error_m: float = 0.05

    def __post_init__(self) -> None:
        for name in ("workspace_low", "workspace_high", "cone_axis"):
            value = getattr(self, name)
            try:
                vector = tuple(float(x) for x in value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"SafetyLimits.{name} must be 3 numbers, got {value!r}") from exc
            if len(vector) != 3 or not all(math.isfinite(x) for x in vector):
                raise ValueError(f"SafetyLimits.{name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, vector)
        low, high = np.array(self.workspace_low), np.array(self.workspace_high)
        if np.any(low >= high):
            raise ValueError(
                f"SafetyLimits.workspace_low {self.workspace_low} must be below workspace_high "
                f"{self.workspace_high} on every axis"
            )
        axis = np.array(self.cone_axis)
        if _norm(axis) < 1e-9:
            raise ValueError("SafetyLimits.cone_axis must be a non-zero direction")
        object.__setattr__(self, "cone_axis", tuple(float(x) for x in axis / _norm(axis)))
        positive = (
            "max_speed_m_s",
            "max_accel_m_s2",
            "max_angular_speed_rad_s",
            "max_angular_accel_rad_s2",
            "max_step_m",
            "max_step_rad",
            "max_gripper_rate_per_s",
            "max_plan_age_s",
            "max_frame_age_s",
            "max_planner_silence_s",
            "max_tracking_error_m",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"SafetyLimits.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SafetyLimits.{name} must be finite and > 0, got {value}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < float(self.orientation_cone_deg) <= 180.0:
            raise ValueError(
                "SafetyLimits.orientation_cone_deg must be in (0, 180], got "
                f"{self.orientation_cone_deg}"
            )
        if math.radians(self.orientation_cone_deg) <= 2 * _CONE_MARGIN_RAD:
            raise ValueError(
                f"SafetyLimits.orientation_cone_deg must exceed "
                f"{2 * math.degrees(_CONE_MARGIN_RAD):.0f} (the filter keeps a margin inside)"
            )
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError(
                f"SafetyLimits.min_confidence must be in [0, 1], got {self.min_confidence}"
            )
        overruns = self.max_consecutive_overruns
        if isinstance(overruns, bool) or not isinstance(overruns, int) or overruns < 1:
            raise ValueError(
                f"SafetyLimits.max_consecutive_overruns must be an integer >= 1, got {overruns!r}"
            )

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> SafetyLimits:
        """From a cell config's `safety` mapping; unknown keys are an error (typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown safety limits {unknown}; known: {sorted(known)}")
        return cls(**dict(mapping))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SafetyEvent:
    """Something the filter or the servo loop did about safety.

    kind: a short stable name ("clamp_speed", "stale_plan", "estop", ...); severity: "info",
    "clamp" (the command was limited), "hold" (the arm is brought to rest) or "estop";
    message: what and why, with numbers.
    """

    time_ns: int
    kind: str
    severity: str
    message: str


@dataclass(frozen=True)
class Health:
    """What the servo loop knows about its inputs; None = unknown (not checked)."""

    frame_age_s: float | None = None
    plan_age_s: float | None = None
    planner_silence_s: float | None = None
    arm_error: int | None = None
    consecutive_overruns: int | None = None


@dataclass(frozen=True)
class Decision:
    """The command for this tick: pose [4, 4], gripper, mode "move" | "hold" | "estop", the
    events raised now, and every hold reason active now (events only announce new ones)."""

    pose: np.ndarray
    gripper: float
    mode: str
    events: tuple[SafetyEvent, ...] = ()
    hold_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A command as it reached the arm. `segment` numbers continuous command sequences (a new
    one starts whenever commanding resumes from the measured pose, e.g. after a reset)."""

    time_ns: int
    pose: np.ndarray
    gripper: float
    segment: int = 0


# -- the filter --------------------------------------------------------------------------------


class SafetyFilter:
    """Limits each target to a command that is safe after the previous ones (see module doc).

    Call `filter` once per tick of a loop running at `rate_hz`; the bounds per tick use the
    nominal period 1/rate_hz.
    """

    def __init__(self, limits: SafetyLimits, rate_hz: float) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz}")
        self.limits = limits
        self.rate_hz = float(rate_hz)
        self.dt = 1.0 / self.rate_hz
        dt, shrink = self.dt, 1.0 - _MARGIN
        step_bound = limits.max_step_m / dt
        self._step_limited = step_bound < limits.max_speed_m_s
        self._v_max = min(limits.max_speed_m_s, step_bound) * shrink
        self._a_max = limits.max_accel_m_s2 * shrink
        ang_step_bound = limits.max_step_rad / dt
        self._ang_step_limited = ang_step_bound < limits.max_angular_speed_rad_s
        self._w_max = min(limits.max_angular_speed_rad_s, ang_step_bound) * shrink
        self._alpha_max = limits.max_angular_accel_rad_s2 * shrink
        self._g_step = limits.max_gripper_rate_per_s * dt * shrink
        self._low = np.array(limits.workspace_low)
        self._high = np.array(limits.workspace_high)
        self._axis = np.array(limits.cone_axis)
        self._cone = math.radians(limits.orientation_cone_deg)
        self._cone_inner = self._cone - _CONE_MARGIN_RAD
        self.counts: Counter[str] = Counter()
        self._estop: str | None = None
        self._fault: int | None = None
        self._emitted: dict[str, int] = {}
        self._active: set[str] = set()
        self._clear_history()

    # -- latches ----------------------------------------------------------------------------

    @property
    def estopped(self) -> bool:
        return self._estop is not None

    @property
    def faulted(self) -> bool:
        """An arm error is latched: hold and send nothing until `reset()`."""
        return self._fault is not None

    @property
    def previous(self) -> tuple[np.ndarray, float] | None:
        """The last command (pose [4, 4], gripper), None before the first."""
        if self._p1 is None:
            return None
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = self._r1, self._p1
        return pose, self._g1

    def estop(self, reason: str, now_ns: int | None = None) -> SafetyEvent:
        """Latch an emergency stop: every later decision is "estop" until `reset()`."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self._estop = reason
        self.counts["estop"] += 1
        return SafetyEvent(now_ns, "estop", "estop", f"emergency stop: {reason}")

    def reset(self, now_ns: int | None = None) -> SafetyEvent:
        """Clear the estop and arm-error latches; the next command starts from the measured
        pose (a new command segment)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        what = [f"estop ({self._estop})"] if self._estop else []
        if self._fault is not None:
            what.append(f"arm error C{self._fault}")
        self._estop, self._fault = None, None
        self._active.clear()
        self._emitted.clear()
        self._clear_history()
        self.counts["reset"] += 1
        cleared = ", ".join(what) if what else "nothing latched"
        return SafetyEvent(now_ns, "reset", "info", f"reset: cleared {cleared}; holding")

    def _clear_history(self) -> None:
        self._p1 = self._p2 = None
        self._r1 = self._r2 = None
        self._g1 = 0.0
        self._target_p: np.ndarray | None = None
        self._target_r: np.ndarray | None = None

    # -- one tick -----------------------------------------------------------------------------

    def filter(
        self,
        target_pose: np.ndarray | None,
        target_gripper: float | None,
        confidence: float | None,
        state: ArmState | None,
        now_ns: int,
        health: Health | None = None,
    ) -> Decision:
        """The command for this tick. `target_pose` None means no plan: come to rest quietly.

        `state` is the latest measurement; it seeds the command history on the first call
        (and after `reset`) and feeds the tracking-error check.
        """
        health = health or Health()
        conditions: dict[str, tuple[str, str]] = {}
        if self._p1 is None:
            if state is None:
                raise ValueError("the first filter() call needs the measured ArmState")
            self._seed(state)
        if self._estop is not None:
            return Decision(*self.previous, "estop", (), ("estop",))
        self._check_health(health, state, conditions)
        target_ok = target_pose is not None and not conditions  # health holds come first
        if target_ok:
            target_ok = self._check_target(target_pose, target_gripper, confidence, conditions)
        if target_ok:
            v_des, w_des, g_target = self._desired(target_pose, target_gripper, conditions)
            mode = "move"
        else:
            v_des, w_des, g_target = np.zeros(3), np.zeros(3), self._g1
            self._target_p = self._target_r = None
            mode = "hold"
        v = self._velocity(v_des, conditions if target_ok else None)
        w = self._angular_velocity(w_des, conditions if target_ok else None)
        g_step = max(-self._g_step, min(self._g_step, g_target - self._g1))
        if target_ok and abs(g_target - self._g1) > self._g_step + _CLAMP_SLACK:
            conditions["clamp_gripper_rate"] = (
                "clamp",
                f"gripper {self._g1:.3f} -> {g_target:.3f} needs "
                f"{abs(g_target - self._g1) * self.rate_hz:.2f}/s > "
                f"{self.limits.max_gripper_rate_per_s}/s",
            )
        p_new = self._p1 + v * self.dt
        r_new = so3_exp(w * self.dt) @ self._r1
        if self._cone_angle(r_new) > self._cone:  # cannot happen unless the margin is broken
            r_new = self._r1.copy()
            self.counts["cone_fallback"] += 1
        g_new = min(1.0, max(0.0, self._g1 + g_step))
        self._p2, self._p1 = self._p1, p_new
        self._r2, self._r1 = self._r1, r_new
        self._g1 = g_new
        events = self._events(conditions, now_ns)
        reasons = tuple(k for k, (sev, _) in conditions.items() if sev == "hold")
        if target_pose is None and not reasons:
            reasons = ("no_target",)
        return Decision(*self.previous, mode, events, reasons)

    def _seed(self, state: ArmState) -> None:
        pose = np.asarray(state.tool_pose, dtype=np.float64)
        u, _, vt = np.linalg.svd(pose[:3, :3])
        rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        self._p1, self._p2 = pose[:3, 3].copy(), pose[:3, 3].copy()
        self._r1, self._r2 = rotation, rotation.copy()
        gripper = float(state.gripper)
        self._g1 = min(1.0, max(0.0, gripper)) if math.isfinite(gripper) else 1.0

    def _check_health(
        self, health: Health, state: ArmState | None, conditions: dict[str, tuple[str, str]]
    ) -> None:
        lim = self.limits
        code = health.arm_error
        if code is None and state is not None:
            code = state.error_code
        if code and self._fault is None:
            self._fault = int(code)
        if self._fault is not None:
            conditions["arm_error"] = (
                "hold",
                f"arm reports error {error_meaning(self._fault)}; holding, no motion until reset()",
            )
        overruns = health.consecutive_overruns
        if overruns is not None and overruns >= lim.max_consecutive_overruns:
            conditions["overrun"] = (
                "hold",
                f"{overruns} consecutive servo ticks overran their period "
                f"(limit {lim.max_consecutive_overruns})",
            )
        ages = (
            ("stale_plan", health.plan_age_s, lim.max_plan_age_s, "newest plan is"),
            ("stale_frames", health.frame_age_s, lim.max_frame_age_s, "newest camera frame is"),
            ("planner_silent", health.planner_silence_s, lim.max_planner_silence_s, "planner"),
        )
        for kind, age, limit, what in ages:
            if age is not None and not age <= limit:  # NaN ages hold too
                verb = "silent for" if kind == "planner_silent" else ""
                conditions[kind] = ("hold", f"{what} {verb} {age:.2f} s old > {limit} s".strip())
        if state is not None and self._p1 is not None:
            measured = np.asarray(state.tool_pose, dtype=np.float64)[:3, 3]
            lag = _norm(self._p1 - measured) if np.all(np.isfinite(measured)) else math.inf
            if lag > lim.max_tracking_error_m:
                conditions["tracking_error"] = (
                    "hold",
                    f"measured TCP is {lag * 1000:.1f} mm from the last command "
                    f"(limit {lim.max_tracking_error_m * 1000:.0f} mm)",
                )

    def _check_target(
        self,
        pose: np.ndarray,
        gripper: float | None,
        confidence: float | None,
        conditions: dict[str, tuple[str, str]],
    ) -> bool:
        pose = np.asarray(pose, dtype=np.float64)
        g = 1.0 if gripper is None else gripper
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)) or not math.isfinite(g):
            conditions["reject_nonfinite"] = (
                "hold",
                f"target is not a finite [4, 4] pose and gripper (shape {pose.shape}, gripper {g})",
            )
            return False
        rotation = pose[:3, :3]
        error = float(np.max(np.abs(rotation.T @ rotation - np.eye(3))))
        if error > 1e-3 or np.linalg.det(rotation) < 0:
            conditions["reject_invalid_pose"] = (
                "hold",
                f"target rotation is not a rotation (|R^T R - I| = {error:.2g}, "
                f"det {np.linalg.det(rotation):.3f})",
            )
            return False
        c = 1.0 if confidence is None else float(confidence)
        if not c >= self.limits.min_confidence:
            conditions["reject_low_confidence"] = (
                "hold",
                f"planner confidence {c:.3f} < {self.limits.min_confidence}",
            )
            return False
        return True

    def _desired(
        self, pose: np.ndarray, gripper: float | None, conditions: dict[str, tuple[str, str]]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Desired linear and angular velocity and gripper target towards a valid target."""
        dt = self.dt
        pose = np.asarray(pose, dtype=np.float64)
        target_p = pose[:3, 3]
        clipped = np.clip(target_p, self._low, self._high)
        if np.any(clipped != target_p):
            conditions["clamp_workspace"] = (
                "clamp",
                f"target {np.round(target_p, 4).tolist()} outside the box "
                f"{list(self.limits.workspace_low)}..{list(self.limits.workspace_high)}: "
                f"projected to {np.round(clipped, 4).tolist()}",
            )
        target_r = pose[:3, :3]
        if float(np.max(np.abs(target_r.T @ target_r - np.eye(3)))) > 1e-9:
            u, _, vt = np.linalg.svd(target_r)
            target_r = u @ vt
        target_r = self._project_to_cone(target_r, conditions)
        v_ff = (clipped - self._target_p) / dt if self._target_p is not None else np.zeros(3)
        w_ff = (
            so3_log(target_r @ self._target_r.T) / dt if self._target_r is not None else np.zeros(3)
        )
        self._target_p, self._target_r = clipped, target_r
        v_des = v_ff + self._approach(clipped - self._p1 - v_ff * dt, 0.5 * self._a_max)
        error = so3_log(target_r @ self._r1.T) - w_ff * dt
        w_des = w_ff + self._approach(error, 0.5 * self._alpha_max)
        g = 1.0 if gripper is None else float(gripper)
        if not 0.0 <= g <= 1.0:
            conditions["clamp_gripper_range"] = (
                "clamp",
                f"gripper target {g:.3f} outside [0, 1]",
            )
        return v_des, w_des, min(1.0, max(0.0, g))

    def _approach(self, residual: np.ndarray, decel: float) -> np.ndarray:
        """Velocity that closes `residual` in one tick, or at the speed that can still stop."""
        distance = _norm(residual)
        if distance == 0.0:
            return np.zeros(3)
        speed = min(distance / self.dt, float(_stop_speed(distance, decel, self.dt)))
        return residual * (speed / distance)

    def _project_to_cone(
        self, rotation: np.ndarray, conditions: dict[str, tuple[str, str]]
    ) -> np.ndarray:
        angle = self._cone_angle(rotation)
        if angle <= self._cone_inner:
            return rotation
        z = rotation[:, 2]
        axis = np.cross(z, self._axis)
        if _norm(axis) < 1e-9:  # pointing exactly away: any perpendicular turns it back
            axis = np.cross(self._axis, [1.0, 0.0, 0.0])
            if _norm(axis) < 1e-9:
                axis = np.cross(self._axis, [0.0, 1.0, 0.0])
        axis = axis / _norm(axis)
        if angle > self._cone:
            conditions["clamp_orientation"] = (
                "clamp",
                f"tool axis {math.degrees(angle):.1f} deg from {list(self.limits.cone_axis)} "
                f"> {self.limits.orientation_cone_deg} deg: turned back inside the cone",
            )
        return so3_exp(axis * (angle - self._cone_inner)) @ rotation

    def _cone_angle(self, rotation: np.ndarray) -> float:
        return math.acos(max(-1.0, min(1.0, float(rotation[:, 2] @ self._axis))))

    # -- velocity selection -----------------------------------------------------------------

    def _velocity(
        self, v_des: np.ndarray, conditions: dict[str, tuple[str, str]] | None
    ) -> np.ndarray:
        """Linear velocity for this tick: speed, acceleration and box bounds (see module doc)."""
        dt = self.dt
        a_dt = self._a_max * dt
        v_prev = (self._p1 - self._p2) / dt
        wall_decel = self._a_max / math.sqrt(3.0)
        upper = _stop_speed(self._high - self._p1, wall_decel, dt)
        lower = -_stop_speed(self._p1 - self._low, wall_decel, dt)
        speed = _norm(v_des)
        if speed > self._v_max:
            if conditions is not None:
                kind = "clamp_step" if self._step_limited else "clamp_speed"
                limit = (
                    f"step {self.limits.max_step_m * 1000:.1f} mm/tick"
                    if self._step_limited
                    else f"{self.limits.max_speed_m_s} m/s"
                )
                conditions[kind] = ("clamp", f"linear speed {speed:.3f} m/s > {limit}")
            v_des = v_des * (self._v_max / speed)
        walled = np.clip(v_des, lower, upper)
        if conditions is not None and np.any(np.abs(walled - v_des) > _CLAMP_SLACK):
            conditions.setdefault(
                "clamp_workspace",
                ("clamp", "slowing down to stop before the workspace boundary"),
            )
        change = walled - v_prev
        size = _norm(change)
        candidate = walled
        if size > a_dt:
            candidate = v_prev + change * (a_dt / size)
            if conditions is not None and size > a_dt * (1 + 1e-6):
                conditions["clamp_accel"] = (
                    "clamp",
                    f"linear acceleration {size / dt:.2f} m/s^2 > "
                    f"{self.limits.max_accel_m_s2} m/s^2",
                )
        brake = np.sign(v_prev) * np.maximum(np.abs(v_prev) - wall_decel * dt, 0.0)
        return self._admissible(brake, candidate, v_prev, a_dt, self._v_max, lower, upper)

    def _admissible(
        self,
        safe: np.ndarray,
        candidate: np.ndarray,
        previous: np.ndarray,
        max_change: float,
        max_norm: float,
        lower: np.ndarray,
        upper: np.ndarray,
    ) -> np.ndarray:
        """The point furthest towards `candidate` on the segment from `safe` that keeps every
        bound (|v| <= max_norm, |v - previous| <= max_change, lower <= v <= upper)."""
        if (
            _norm(candidate) <= max_norm
            and _norm(candidate - previous) <= max_change
            and np.all(candidate <= upper)
            and np.all(candidate >= lower)
        ):
            return candidate
        direction = candidate - safe
        lam = min(
            _ball_limit(safe, direction, np.zeros(3), max_norm),
            _ball_limit(safe, direction, previous, max_change),
        )
        for i in range(3):
            if direction[i] > 0:
                lam = min(lam, max(0.0, (upper[i] - safe[i]) / direction[i]))
            elif direction[i] < 0:
                lam = min(lam, max(0.0, (lower[i] - safe[i]) / direction[i]))
        return safe + (lam * (1.0 - 1e-12)) * direction

    def _angular_velocity(
        self, w_des: np.ndarray, conditions: dict[str, tuple[str, str]] | None
    ) -> np.ndarray:
        """Angular velocity for this tick: speed, acceleration and cone bounds."""
        dt = self.dt
        alpha_dt = self._alpha_max * dt
        w_prev = so3_log(self._r1 @ self._r2.T) / dt
        speed = _norm(w_des)
        if speed > self._w_max:
            if conditions is not None:
                kind = "clamp_step" if self._ang_step_limited else "clamp_speed"
                limit = (
                    f"step {self.limits.max_step_rad} rad/tick"
                    if self._ang_step_limited
                    else f"{self.limits.max_angular_speed_rad_s} rad/s"
                )
                conditions.setdefault(kind, ("clamp", f"angular speed {speed:.3f} rad/s > {limit}"))
            w_des = w_des * (self._w_max / speed)
        # The cone: the rate at which the tool axis leaves the cone axis is w . n.
        z = self._r1[:, 2]
        n = np.cross(self._axis, z)
        sin = _norm(n)
        lower, upper = np.full(3, -np.inf), np.full(3, np.inf)
        # Rotate into a frame whose first axis is n, so the cone bound is a box bound there.
        basis = np.eye(3)
        bound = math.inf
        if sin > 1e-9:
            n = n / sin
            other = np.cross(n, z)
            basis = np.stack([n, z, other])  # rows: orthonormal
            room = self._cone_inner - self._cone_angle(self._r1)
            cone_decel = self._alpha_max / math.sqrt(2.0) * 0.9
            bound = float(_stop_speed(room, cone_decel, dt)) if room > 0 else -0.2 * (-room) / dt
            upper[0] = bound
        local_des, local_prev = basis @ w_des, basis @ w_prev
        if conditions is not None and local_des[0] > bound + _CLAMP_SLACK:
            conditions.setdefault(
                "clamp_orientation",
                ("clamp", "slowing the rotation to stop at the orientation cone"),
            )
        local_des[0] = min(local_des[0], bound)
        change = local_des - local_prev
        size = _norm(change)
        candidate = local_des
        if size > alpha_dt:
            candidate = local_prev + change * (alpha_dt / size)
            if conditions is not None and size > alpha_dt * (1 + 1e-6):
                conditions["clamp_accel"] = (
                    "clamp",
                    f"angular acceleration {size / dt:.2f} rad/s^2 > "
                    f"{self.limits.max_angular_accel_rad_s2} rad/s^2",
                )
        # Braking: the cone component down by alpha/sqrt(2) per second (only where it is too
        # high), the rest shrunk by the same amount; together within the acceleration limit.
        part = alpha_dt / math.sqrt(2.0)
        safe = local_prev.copy()
        if safe[0] > bound:
            safe[0] = max(safe[0] - part, bound)
        rest = _norm(safe[1:])
        if rest > 0:
            safe[1:] *= max(rest - part, 0.0) / rest
        if _norm(safe) > self._w_max:  # only when a cone correction adds speed
            safe *= self._w_max / _norm(safe)
        upper[0] = max(bound, safe[0])
        local = self._admissible(safe, candidate, local_prev, alpha_dt, self._w_max, lower, upper)
        return basis.T @ local

    # -- events ------------------------------------------------------------------------------

    def _events(
        self, conditions: dict[str, tuple[str, str]], now_ns: int
    ) -> tuple[SafetyEvent, ...]:
        """Events for conditions that just began, or persist past the repeat interval."""
        events = []
        for kind, (severity, message) in conditions.items():
            self.counts[kind] += 1
            last = self._emitted.get(kind)
            if kind in self._active and last is not None and now_ns - last < _REPEAT_NS:
                continue
            self._emitted[kind] = now_ns
            events.append(SafetyEvent(now_ns, kind, severity, message))
        self._active = set(conditions)
        return tuple(events)


# -- the independent check ----------------------------------------------------------------------


def _rotvec(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotation).as_rotvec()


def check_command(
    prev2: Command | None,
    prev: Command | None,
    cmd: Command,
    limits: SafetyLimits,
    dt: float,
) -> list[str]:
    """Violations of `limits` by `cmd` after `prev` and `prev2` (None: no such command yet).

    Speeds use the nominal tick `dt` (s); every bound has 1e-9 relative slack for rounding.
    Independent of `SafetyFilter` (scipy rotations, no shared code) so it can audit it.
    """
    slack = 1.0 + 1e-9
    out: list[str] = []
    pose = np.asarray(cmd.pose, dtype=np.float64)
    g = float(cmd.gripper)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)) or not math.isfinite(g):
        return [f"command is not a finite [4, 4] pose and gripper: {pose!r}, {g!r}"]
    rotation, position = pose[:3, :3], pose[:3, 3]
    if float(np.max(np.abs(rotation.T @ rotation - np.eye(3)))) > 1e-6 or (
        np.linalg.det(rotation) < 0
    ):
        out.append("rotation is not orthonormal with det +1")
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        out.append(f"last row is {pose[3].tolist()}, not [0, 0, 0, 1]")
    low, high = np.array(limits.workspace_low), np.array(limits.workspace_high)
    tol = 1e-9 * np.maximum(np.abs(low), np.abs(high))
    if np.any(position < low - tol) or np.any(position > high + tol):
        out.append(f"position {position.tolist()} outside the box {low.tolist()}..{high.tolist()}")
    cos = float(np.clip(rotation[:, 2] @ np.array(limits.cone_axis), -1.0, 1.0))
    angle = math.degrees(math.acos(cos))
    if angle > limits.orientation_cone_deg * slack:
        out.append(f"tool axis {angle:.4f} deg from the cone axis > {limits.orientation_cone_deg}")
    if not 0.0 <= g <= 1.0:
        out.append(f"gripper {g} outside [0, 1]")
    if prev is None:
        return out
    p1 = np.asarray(prev.pose, dtype=np.float64)
    step = float(np.linalg.norm(position - p1[:3, 3]))
    if step > limits.max_step_m * slack:
        out.append(f"step {step * 1000:.4f} mm > {limits.max_step_m * 1000} mm")
    if step / dt > limits.max_speed_m_s * slack:
        out.append(f"speed {step / dt:.5f} m/s > {limits.max_speed_m_s}")
    turn = _rotvec(rotation @ p1[:3, :3].T)
    turn_angle = float(np.linalg.norm(turn))
    if turn_angle > limits.max_step_rad * slack:
        out.append(f"rotation step {turn_angle:.5f} rad > {limits.max_step_rad}")
    if turn_angle / dt > limits.max_angular_speed_rad_s * slack:
        out.append(f"angular speed {turn_angle / dt:.5f} rad/s > {limits.max_angular_speed_rad_s}")
    rate = abs(g - float(prev.gripper)) / dt
    if rate > limits.max_gripper_rate_per_s * slack:
        out.append(f"gripper rate {rate:.4f}/s > {limits.max_gripper_rate_per_s}")
    if prev2 is None:
        return out
    p2 = np.asarray(prev2.pose, dtype=np.float64)
    accel = float(np.linalg.norm((position - p1[:3, 3]) - (p1[:3, 3] - p2[:3, 3]))) / dt**2
    if accel > limits.max_accel_m_s2 * slack:
        out.append(f"acceleration {accel:.5f} m/s^2 > {limits.max_accel_m_s2}")
    before = _rotvec(p1[:3, :3] @ p2[:3, :3].T)
    ang_accel = float(np.linalg.norm(turn - before)) / dt**2
    if ang_accel > limits.max_angular_accel_rad_s2 * slack:
        out.append(
            f"angular acceleration {ang_accel:.5f} rad/s^2 > {limits.max_angular_accel_rad_s2}"
        )
    return out


def check_commands(commands: Sequence[Command], limits: SafetyLimits, dt: float) -> list[str]:
    """`check_command` over a recorded sequence, restarting at each new `segment`."""
    out = []
    history: list[Command] = []
    for cmd in commands:
        if history and history[-1].segment != cmd.segment:
            history = []
        prev = history[-1] if history else None
        prev2 = history[-2] if len(history) > 1 else None
        violations = check_command(prev2, prev, cmd, limits, dt)
        out.extend(f"command {cmd.time_ns}: {v}" for v in violations)
        history = [*history[-1:], cmd]
    return out

"""`Trajectory`: the continuous tool path the servo loop samples, and `join` for replanning.

Position follows a shape-preserving (PCHIP-style) cubic Hermite spline through the waypoints,
chosen over a C2 `CubicSpline` because it never overshoots: between two waypoints each
coordinate stays between their values, so a plan that keeps off the table and inside the box
yields a path that does too (a C2 spline through a noisy grasp approach dips below its lowest
waypoint). It is C1 (continuous velocity); the safety filter bounds acceleration anyway. The
end slopes are zero, so holding the first pose before the plan and the last pose after it is
still C1. Rotation is a slerp between consecutive waypoints (piecewise-constant angular
velocity); gripper openness ramps linearly before each waypoint that changes it, over the
plan's frame spacing or a shorter `gripper_ramp_ns` (the hand's travel time, so a hand the
plan shuts at the bottom of a descent is not half shut half-way down). Nothing is ever
extrapolated.

`join` replans without a seam: from `at_ns` the executing path blends into the new plan with
a min-jerk weight s(u) = 10u^3 - 15u^4 + 6u^5, whose first and second derivatives vanish at
both ends, so position, velocity and acceleration are continuous where the blend starts and
where it ends. Times are `time.monotonic_ns()`; positions in metres, rotations TCP-to-base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicHermiteSpline
from scipy.spatial.transform import Rotation

from aimg.runtime.waypoints import Waypoints

#: Finished blends older than this (before a new join's `at_ns`) are collapsed into their
#: target path, so replanning for hours keeps the trajectory small.
_PRUNE_MARGIN_NS = 50_000_000
#: Step of the one-sided differences that measure a seam's velocity jump, and of the central
#: difference for angular velocity inside a blend.
_DIFF_STEP_NS = 200_000


def _exp(rotvec: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(rotvec).as_matrix()


def _log(rotation: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(rotation).as_rotvec()


def pchip_slopes(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shape-preserving slopes [K, D] at knots t [K] (s) of values y [K, D]; zero at both ends.

    Interior slopes are the weighted harmonic mean of the neighbouring secants (Fritsch and
    Butland), zero where the secants change sign, which keeps each segment monotone.
    """
    slopes = np.zeros_like(y)
    if len(t) < 3:
        return slopes
    h = np.diff(t)[:, None]
    secant = np.diff(y, axis=0) / h
    left, right = secant[:-1], secant[1:]
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    same_sign = left * right > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (w1 + w2) / (w1 / left + w2 / right)
    slopes[1:-1] = np.where(same_sign, mean, 0.0)
    return slopes


def min_jerk_weight(u):
    """Blend weight s(u) for u (a float or an array) already clamped to [0, 1]."""
    return u**3 * (10.0 + u * (-15.0 + 6.0 * u))


def min_jerk(u: float) -> tuple[float, float]:
    """Blend weight s(u) and ds/du for u in [0, 1] (clamped outside)."""
    if u <= 0.0:
        return 0.0, 0.0
    if u >= 1.0:
        return 1.0, 0.0
    return min_jerk_weight(u), 30.0 * u * u * (1.0 - u) ** 2


class _Path:
    """A tool path over time: what `Trajectory` wraps."""

    start_ns: int
    end_ns: int

    def position(self, t_ns: int) -> np.ndarray:
        raise NotImplementedError

    def positions(self, times_ns: np.ndarray) -> np.ndarray:
        """Positions [N, 3] at many times [N] (int64 ns) in one vectorised call."""
        raise NotImplementedError

    def linear_velocity(self, t_ns: int) -> np.ndarray:
        raise NotImplementedError

    def rotation(self, t_ns: int) -> np.ndarray:
        raise NotImplementedError

    def angular_velocity(self, t_ns: int) -> np.ndarray:
        raise NotImplementedError

    def gripper(self, t_ns: int) -> float:
        raise NotImplementedError

    def confidence(self, t_ns: int) -> float:
        raise NotImplementedError


class _SplinePath(_Path):
    """Spline through finite waypoints (see the module docstring)."""

    def __init__(self, waypoints: Waypoints, gripper_ramp_ns: int | None = None) -> None:
        if len(waypoints) == 0:
            raise ValueError("a Trajectory needs at least one waypoint (use Trajectory.hold)")
        if not np.all(waypoints.finite):
            bad = np.flatnonzero(~waypoints.finite).tolist()
            raise ValueError(f"waypoints {bad} are not finite: filter them before planning a path")
        self._t0 = int(waypoints.times_ns[0])
        self.start_ns = self._t0
        self.end_ns = int(waypoints.times_ns[-1])
        self._times_ns = waypoints.times_ns.astype(np.int64)
        self._t = (self._times_ns - self._t0) * 1e-9
        self._positions = waypoints.positions.astype(np.float64)
        self._rotations = Rotation.from_matrix(waypoints.rotations).as_matrix()
        self._gripper = waypoints.gripper.astype(np.float64)
        gaps = np.diff(self._times_ns)
        #: the gripper ramps over at most this before a waypoint: the plan's frame spacing, or
        #: the shorter `gripper_ramp_ns` (see the module docstring)
        self._ramp_ns = int(gaps.min()) if len(gaps) else 0
        if gripper_ramp_ns is not None:
            self._ramp_ns = min(self._ramp_ns, int(gripper_ramp_ns))
        self._confidence = np.nan_to_num(waypoints.confidence.astype(np.float64), nan=0.0)
        self._spline = None
        if len(self._t) > 1:
            slopes = pchip_slopes(self._t, self._positions)
            self._spline = CubicHermiteSpline(self._t, self._positions, slopes, axis=0)
            relative = self._rotations[1:] @ np.swapaxes(self._rotations[:-1], 1, 2)
            self._steps = Rotation.from_matrix(relative).as_rotvec()  # base frame, [K-1, 3]
            self._omega = self._steps / np.diff(self._t)[:, None]

    def _segment(self, t_ns: int) -> tuple[int, float] | None:
        """(i, u): t lies in segment i at fraction u; None outside the waypoints' span."""
        if self._spline is None or t_ns <= self.start_ns or t_ns >= self.end_ns:
            return None
        i = int(np.searchsorted(self._times_ns, t_ns, side="right")) - 1
        span = int(self._times_ns[i + 1] - self._times_ns[i])
        return i, (t_ns - int(self._times_ns[i])) / span

    def _clamped_s(self, t_ns: int) -> float:
        return (min(max(t_ns, self.start_ns), self.end_ns) - self._t0) * 1e-9

    def position(self, t_ns: int) -> np.ndarray:
        if self._spline is None:
            return self._positions[0].copy()
        if t_ns <= self.start_ns:
            return self._positions[0].copy()
        if t_ns >= self.end_ns:
            return self._positions[-1].copy()
        return np.asarray(self._spline(self._clamped_s(t_ns)), dtype=np.float64)

    def positions(self, times_ns: np.ndarray) -> np.ndarray:
        if self._spline is None:
            return np.repeat(self._positions[:1], len(times_ns), axis=0)
        clamped = (np.clip(times_ns, self.start_ns, self.end_ns) - self._t0) * 1e-9
        return np.asarray(self._spline(clamped), dtype=np.float64)

    def linear_velocity(self, t_ns: int) -> np.ndarray:
        if self._spline is None or t_ns <= self.start_ns or t_ns >= self.end_ns:
            return np.zeros(3)
        return np.asarray(self._spline(self._clamped_s(t_ns), 1), dtype=np.float64)

    def rotation(self, t_ns: int) -> np.ndarray:
        seg = self._segment(t_ns)
        if seg is None:
            return self._rotations[0 if t_ns <= self.start_ns else -1].copy()
        i, u = seg
        return _exp(u * self._steps[i]) @ self._rotations[i]

    def angular_velocity(self, t_ns: int) -> np.ndarray:
        seg = self._segment(t_ns)
        return np.zeros(3) if seg is None else self._omega[seg[0]].copy()

    def gripper(self, t_ns: int) -> float:
        """Linear over the last frame spacing before each waypoint, held before that: where a
        dropped frame left a wider gap, the hand does not start closing a frame early."""
        if len(self._times_ns) < 2 or t_ns <= self.start_ns:
            return float(self._gripper[0])
        if t_ns >= self.end_ns:
            return float(self._gripper[-1])
        i = int(np.searchsorted(self._times_ns, t_ns, side="right")) - 1
        end = int(self._times_ns[i + 1])
        ramp_start = max(int(self._times_ns[i]), end - self._ramp_ns)
        if t_ns <= ramp_start:
            return float(self._gripper[i])
        u = (t_ns - ramp_start) / (end - ramp_start)
        return float(self._gripper[i] + u * (self._gripper[i + 1] - self._gripper[i]))

    def confidence(self, t_ns: int) -> float:
        """The lower of the two waypoints around t (the first / last outside the span)."""
        if t_ns <= self.start_ns:
            return float(self._confidence[0])
        if t_ns >= self.end_ns:
            return float(self._confidence[-1])
        i = int(np.searchsorted(self._times_ns, t_ns, side="right")) - 1
        return float(min(self._confidence[i], self._confidence[i + 1]))


class _BlendPath(_Path):
    """`old` until `at_ns`, a min-jerk blend into `new` over `blend_ns`, then `new`."""

    def __init__(self, old: _Path, new: _Path, at_ns: int, blend_ns: int) -> None:
        self.old, self.new = old, new
        self.at_ns, self.blend_ns = at_ns, blend_ns
        self.start_ns = min(old.start_ns, at_ns)
        self.end_ns = max(new.end_ns, at_ns + blend_ns)

    def _weight(self, t_ns: int) -> tuple[float, float]:
        """s and ds/dt (1/s) at t."""
        s, ds = min_jerk((t_ns - self.at_ns) / self.blend_ns)
        return s, ds / (self.blend_ns * 1e-9)

    def _phase(self, t_ns: int) -> int:
        """-1 before the blend, 0 inside, 1 after."""
        if t_ns <= self.at_ns:
            return -1
        return 0 if t_ns < self.at_ns + self.blend_ns else 1

    def position(self, t_ns: int) -> np.ndarray:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).position(t_ns)
        a, b = self.old.position(t_ns), self.new.position(t_ns)
        s, _ = self._weight(t_ns)
        return a + s * (b - a)

    def positions(self, times_ns: np.ndarray) -> np.ndarray:
        a, b = self.old.positions(times_ns), self.new.positions(times_ns)
        u = np.clip((times_ns - self.at_ns) / self.blend_ns, 0.0, 1.0)
        return a + min_jerk_weight(u)[:, None] * (b - a)

    def linear_velocity(self, t_ns: int) -> np.ndarray:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).linear_velocity(t_ns)
        a, b = self.old.position(t_ns), self.new.position(t_ns)
        va, vb = self.old.linear_velocity(t_ns), self.new.linear_velocity(t_ns)
        s, ds = self._weight(t_ns)
        return va + s * (vb - va) + ds * (b - a)

    def rotation(self, t_ns: int) -> np.ndarray:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).rotation(t_ns)
        ra, rb = self.old.rotation(t_ns), self.new.rotation(t_ns)
        s, _ = self._weight(t_ns)
        return _exp(s * _log(rb @ ra.T)) @ ra

    def angular_velocity(self, t_ns: int) -> np.ndarray:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).angular_velocity(t_ns)
        h = _DIFF_STEP_NS
        delta = self.rotation(t_ns + h) @ self.rotation(t_ns - h).T
        return _log(delta) / (2 * h * 1e-9)

    def gripper(self, t_ns: int) -> float:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).gripper(t_ns)
        s, _ = self._weight(t_ns)
        a, b = self.old.gripper(t_ns), self.new.gripper(t_ns)
        return a + s * (b - a)

    def confidence(self, t_ns: int) -> float:
        phase = self._phase(t_ns)
        if phase:
            return (self.old if phase < 0 else self.new).confidence(t_ns)
        return min(self.old.confidence(t_ns), self.new.confidence(t_ns))


def _prune(path: _Path, before_ns: int) -> _Path:
    """`path` with blends that finished before `before_ns` replaced by their target path."""
    if not isinstance(path, _BlendPath):
        return path
    if path.at_ns + path.blend_ns <= before_ns:
        return _prune(path.new, before_ns)
    old = _prune(path.old, before_ns)
    return path if old is path.old else _BlendPath(old, path.new, path.at_ns, path.blend_ns)


@dataclass(frozen=True)
class Seam:
    """Discontinuities where `join` switched plans, measured on the joined trajectory.

    position_jump_m / rotation_jump_rad: the joined pose at `at_ns` vs the executing one;
    velocity_jump_m_s / angular_velocity_jump_rad_s: one-sided (second-order) finite-difference
    velocities just after vs just before `at_ns`. All ~0 for a good join.
    """

    at_ns: int
    position_jump_m: float = 0.0
    velocity_jump_m_s: float = 0.0
    rotation_jump_rad: float = 0.0
    angular_velocity_jump_rad_s: float = 0.0
    replaced: bool = False


class Trajectory:
    """A tool path sampled by the servo loop: pose [4, 4] and gripper at any time.

    Built from finite `Waypoints` (the caller drops non-finite ones); before the first waypoint
    it holds the first pose, after the last it holds the last (velocity 0). gripper_ramp_ns:
    the gripper's ramp before a waypoint, if shorter than the frame spacing.
    """

    def __init__(self, waypoints: Waypoints, gripper_ramp_ns: int | None = None) -> None:
        self._path: _Path = _SplinePath(waypoints, gripper_ramp_ns)
        self.plan_id = waypoints.plan_id
        self.seam: Seam | None = None

    @classmethod
    def _wrap(cls, path: _Path, plan_id: int, seam: Seam | None) -> Trajectory:
        out = cls.__new__(cls)
        out._path, out.plan_id, out.seam = path, plan_id, seam
        return out

    @classmethod
    def hold(cls, pose: np.ndarray, gripper: float, t_ns: int) -> Trajectory:
        """A one-point trajectory that holds `pose` [4, 4] and `gripper` at all times."""
        pose = np.asarray(pose, dtype=np.float64)
        waypoints = Waypoints(
            times_ns=np.array([t_ns], dtype=np.int64),
            positions=pose[None, :3, 3].copy(),
            rotations=pose[None, :3, :3].copy(),
            gripper=np.array([float(gripper)]),
            confidence=np.ones(1),
            source="hold",
        )
        return cls(waypoints)

    @property
    def start_ns(self) -> int:
        return self._path.start_ns

    @property
    def end_ns(self) -> int:
        return self._path.end_ns

    def sample(self, t_ns: int) -> tuple[np.ndarray, float]:
        """Pose [4, 4] (TCP-to-base, metres) and gripper openness at `t_ns`."""
        t_ns = int(t_ns)
        pose = np.eye(4)
        pose[:3, :3] = self._path.rotation(t_ns)
        pose[:3, 3] = self._path.position(t_ns)
        return pose, self._path.gripper(t_ns)

    def velocity(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Linear [3] (m/s) and angular [3] (rad/s, base frame) velocity at `t_ns`."""
        t_ns = int(t_ns)
        return self._path.linear_velocity(t_ns), self._path.angular_velocity(t_ns)

    def confidence(self, t_ns: int) -> float:
        """The planner's confidence at `t_ns` (the lower of the surrounding waypoints)."""
        return self._path.confidence(int(t_ns))

    def gripper(self, t_ns: int) -> float:
        """Gripper openness at `t_ns` (1 open, 0 closed)."""
        return self._path.gripper(int(t_ns))

    def progress_ns(
        self,
        position: np.ndarray,
        t_ns: int,
        window_ns: int = 2_000_000_000,
        step_ns: int = 5_000_000,
        tolerance_m: float = 0.002,
    ) -> int:
        """How far along the path a tool at `position` [3] (m) is: a time in
        [t_ns - window_ns, t_ns] where the path passes nearest it.

        Of the times within `tolerance_m` (plus half the sampling's spacing along the path) of
        the nearest distance, the first run of them wins, and the last time in that run: a
        path that comes back the same way (a lift retracing the descent) does not count a tool
        on its way down as already on its way up, and a tool that has reached a pose where the
        plan dwells counts as at the dwell's end. Used to act on the gripper where the plan
        changes it, not when: the safety filter can keep the arm behind the plan's clock. The
        window bounds how far behind.
        """
        t_ns = int(t_ns)
        times = t_ns - np.arange(int(window_ns) // int(step_ns), -1, -1, dtype=np.int64) * step_ns
        path = self._path.positions(times)
        distances = np.linalg.norm(path - np.asarray(position, dtype=np.float64), axis=1)
        spacing = float(np.linalg.norm(np.diff(path, axis=0), axis=1).max(initial=0.0))
        near = distances <= distances.min() + tolerance_m + 0.5 * spacing
        first = int(np.argmax(near))
        gaps = np.flatnonzero(~near[first:])  # the first run of near samples ends at a gap
        last = first + int(gaps[0]) - 1 if gaps.size else len(near) - 1
        return int(times[last])


def _one_sided_velocity(traj: Trajectory, t_ns: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Second-order one-sided difference velocities at t from the side -1 (before) or +1."""
    h = _DIFF_STEP_NS
    poses = [traj.sample(t_ns + side * k * h)[0] for k in range(3)]
    dt = side * 2 * h * 1e-9
    linear = (-3.0 * poses[0][:3, 3] + 4.0 * poses[1][:3, 3] - poses[2][:3, 3]) / dt
    r1 = _log(poses[1][:3, :3] @ poses[0][:3, :3].T)
    r2 = _log(poses[2][:3, :3] @ poses[0][:3, :3].T)
    angular = (4.0 * r1 - r2) / dt
    return linear, angular


def measure_seam(before: Trajectory, after: Trajectory, at_ns: int) -> Seam:
    """Pose and velocity jumps between executing `before` up to `at_ns` and `after` from it."""
    p0, _ = before.sample(at_ns)
    p1, _ = after.sample(at_ns)
    v0, w0 = _one_sided_velocity(before, at_ns, -1)
    v1, w1 = _one_sided_velocity(after, at_ns, +1)
    return Seam(
        at_ns=at_ns,
        position_jump_m=float(np.linalg.norm(p1[:3, 3] - p0[:3, 3])),
        velocity_jump_m_s=float(np.linalg.norm(v1 - v0)),
        rotation_jump_rad=float(np.linalg.norm(_log(p1[:3, :3] @ p0[:3, :3].T))),
        angular_velocity_jump_rad_s=float(np.linalg.norm(w1 - w0)),
        replaced=True,
    )


def join(
    current: Trajectory,
    new: Waypoints,
    at_ns: int,
    blend_s: float = 0.3,
    gripper_ramp_ns: int | None = None,
) -> Trajectory:
    """The trajectory to execute from `at_ns`: `current` blended into `new` over `blend_s`.

    Equal to `current` at `at_ns` in pose and velocity; `new`'s waypoints up to
    `at_ns + blend_s` are absorbed in the blend; afterwards it follows `new`. Waypoints of `new`
    at or before `at_ns` are dropped, except the last one, which anchors the interpolation
    towards the first future waypoint. If `new` has no waypoint after `at_ns`, `current` is kept
    (it holds its last pose once it ends). The result's `seam` holds the measured jumps;
    `gripper_ramp_ns` is `new`'s gripper ramp (see `Trajectory`).
    """
    if not blend_s > 0.0 or not math.isfinite(blend_s):
        raise ValueError(f"blend_s must be a positive number of seconds, got {blend_s}")
    at_ns = int(at_ns)
    future = new.times_ns > at_ns
    if not future.any():
        return Trajectory._wrap(current._path, current.plan_id, Seam(at_ns=at_ns))
    first = max(int(np.argmax(future)) - 1, 0)
    kept = slice(first, len(new))
    trimmed = Waypoints(
        new.times_ns[kept],
        new.positions[kept],
        new.rotations[kept],
        new.gripper[kept],
        new.confidence[kept],
        new.plan_id,
        new.source,
        new.meta,
    )
    old = _prune(current._path, at_ns - _PRUNE_MARGIN_NS)
    path = _SplinePath(trimmed, gripper_ramp_ns)
    blend = _BlendPath(old, path, at_ns, max(1, round(blend_s * 1e9)))
    joined = Trajectory._wrap(blend, new.plan_id, None)
    joined.seam = measure_seam(current, joined, at_ns)
    return joined

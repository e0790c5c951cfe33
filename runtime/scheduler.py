"""Real-time chunking: replan while the current trajectory executes, join without a jump.

Each cycle takes the newest synchronised frames and the arm's pose, plans, drops the waypoints
that will already be in the past when the plan reaches the servo loop (measured latency), and
hands the rest over; the servo loop joins them to the executing trajectory at the moment they
arrive, matching position and velocity there. Two ways to make that seam small:

- "blend": the new plan as the model drew it, blended into the executing trajectory over
  `blend_s` (position and velocity continuous; the plan itself may disagree with the motion).
- "inpaint": the plan is conditioned on what will execute while it is computed: the executing
  trajectory's poses at the plan's frame times up to the expected ready time (plus the blend)
  are fixed in the sampler (inpainting, `PlanBackend.prefix_latents`), so the model continues
  the motion instead of starting over; then the same short blend.

`seam` metrics (position and velocity mismatch between the executing trajectory and the new
plan at the join) are recorded for each replan, so both can be compared on the same starts.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aimg.geometry import matrix_to_action
from aimg.runtime.camera_process import EXTRA_TIMESTAMPS_BACKWARDS, frame_counter
from aimg.runtime.trajectory import Trajectory, join
from aimg.runtime.waypoints import Waypoints


@dataclass(frozen=True)
class SchedulerConfig:
    """How plans are joined and when frames are too old to plan from.

    join: "blend" or "inpaint" (see the module docstring); blend_s: blend duration;
    latency_margin_s: extra time allowed for the plan to reach the servo loop; max_frame_age_s:
    frames older than this are not planned from (the servo's watchdog holds the arm);
    open_loop: plan once per episode and execute it (the reference's mode);
    measure_first_command: after each submit, wait (<= 50 ms) for the servo loop's first
    command from the new plan, for the latency breakdown of `aimg bench loop`;
    fixed_noise: every plan of a task starts from the same noise (successive plans then differ
    only where the observation differs, instead of resampling the plan's spread each time).
    """

    join: Literal["blend", "inpaint"] = "blend"
    blend_s: float = 0.3
    latency_margin_s: float = 0.02
    max_frame_age_s: float = 0.5
    open_loop: bool = False
    measure_first_command: bool = False
    fixed_noise: bool = True


@dataclass
class ReplanRecord:
    """What one replan cycle did (for statistics and tests)."""

    plan_id: int
    observation_ns: int
    ready_ns: int
    submitted: int
    dropped_past: int
    dropped_invalid: int
    seam_position_m: float
    seam_velocity_m_s: float
    timings: dict[str, Any] = field(default_factory=dict)
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    started_ns: int = 0
    submit_ns: int = 0
    first_command_ns: int | None = None

    @property
    def latency_s(self) -> float:
        return (self.ready_ns - self.observation_ns) / 1e9


class LatencyEstimate:
    """Capture -> plan-ready latency: the larger of the recent median and the last value, so a
    slow plan is expected again soon and a fast one only lowers the estimate gradually."""

    def __init__(self, initial_s: float = 0.5, window: int = 8) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.initial_s = initial_s

    def update(self, value_s: float) -> None:
        self.values.append(value_s)

    @property
    def seconds(self) -> float:
        if not self.values:
            return self.initial_s
        return max(float(np.median(self.values)), self.values[-1])


class Scheduler:
    """Runs replan cycles for one task; see the module docstring.

    planner: `Policy` or `ExpertPlanner`; cameras: a `CameraProcess` client (`wait_newer()`,
    `frame_age_s()`, `cameras`); servo: a `ServoProcess` client (`state()`, `submit()`,
    `heartbeat()`).
    """

    def __init__(
        self,
        planner: Any,
        cameras: Any,
        servo: Any,
        instruction: str,
        config: SchedulerConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.planner = planner
        self.cameras = cameras
        self.servo = servo
        self.instruction = instruction
        self.config = config or SchedulerConfig()
        self.seed = seed
        self.latency = LatencyEstimate()
        self.executing: Trajectory | None = None
        self.records: list[ReplanRecord] = []
        self.last_frame_counter = -1
        self.last_active_ns = time.monotonic_ns()
        self.stopped_reason: str | None = None
        self.calibration = cameras.cameras

    @property
    def done(self) -> bool:
        """No more plans: open loop after its one plan, or stopped for a reason."""
        return self.stopped_reason is not None or (self.config.open_loop and bool(self.records))

    def stop(self, reason: str) -> None:
        """Hold the arm and plan no more in this task (the reason goes to the servo's events)."""
        if self.stopped_reason is None:
            self.stopped_reason = reason
            self.servo.hold(reason)

    def step(self, timeout_s: float = 1.0) -> ReplanRecord | None:
        """One replan cycle; None when no fresh frame set arrived (the watchdog then acts)."""
        if self.done:
            return None
        # Each plan starts from a frame set no earlier plan saw (replanning on the same frames
        # only burns the planner's core).
        self.last_active_ns = time.monotonic_ns()
        frames = self.cameras.wait_newer(self.last_frame_counter, timeout_s)
        if frames is None:
            return None
        self.last_frame_counter = frame_counter(frames)
        started_ns = time.monotonic_ns()
        if bool(frames.extras.get(EXTRA_TIMESTAMPS_BACKWARDS, False)):
            self.stop(
                "camera timestamps went backwards: the frames cannot be ordered in time, so "
                "the planner stopped (check the camera clock / USB link, then reset)"
            )
            return None
        observation_ns = min(frames.host_timestamps_ns.values())
        age_s = (time.monotonic_ns() - observation_ns) / 1e9
        if age_s > self.config.max_frame_age_s:
            return None
        state = self.servo.state()
        tool_pose = matrix_to_action(state.tool_pose, state.gripper)
        prefix = self._prefix(observation_ns) if self.config.join == "inpaint" else None
        plan = self.planner.plan(
            frames.images,
            self.calibration,
            tool_pose,
            observation_ns,
            self.instruction,
            seed=self.seed if self.config.fixed_noise else self.seed + len(self.records),
            prefix=prefix,
        )
        self.latency.update(plan.latency_s)
        record = self._submit(plan)
        record.started_ns = started_ns
        if self.config.measure_first_command and record.submitted:
            record.first_command_ns = self._first_command(record.plan_id)
        self.last_active_ns = time.monotonic_ns()
        return record

    def _first_command(self, plan_id: int, timeout_s: float = 0.05) -> int | None:
        """When the servo loop first commanded from plan `plan_id` (None if not seen)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.servo.state()
            if state.plan_id == plan_id:
                return int(state.command_time_ns)
            time.sleep(0.0005)
        return None

    def _prefix(self, observation_ns: int) -> np.ndarray | None:
        """Poses of the executing trajectory at the plan's frame times until it will be ready."""
        if self.executing is None:
            return None
        dt_s = self.planner.dt_s
        horizon_ns = observation_ns + (self.latency.seconds + self.config.blend_s) * 1e9
        poses = []
        k = 1
        while observation_ns + k * dt_s * 1e9 <= horizon_ns:
            pose, gripper = self.executing.sample(int(observation_ns + k * dt_s * 1e9))
            poses.append(matrix_to_action(pose, gripper))
            k += 1
        return np.stack(poses) if poses else None

    def _submit(self, plan) -> ReplanRecord:
        waypoints: Waypoints = plan.waypoints
        # Waypoints the safety filter would reject are dropped here, one by one, so one
        # undecodable frame costs that frame, not the whole plan.
        min_confidence = getattr(getattr(self.servo, "limits", None), "min_confidence", 0.0)
        valid = waypoints.finite & (waypoints.confidence > 0)
        valid &= waypoints.confidence >= min_confidence
        invalid = int((~valid[1:]).sum())  # frame 0 is the conditioning pose
        now_ns = time.monotonic_ns()
        arrive_ns = now_ns + int(self.config.latency_margin_s * 1e9)
        future = valid & (waypoints.times_ns > arrive_ns)
        # One waypoint at or before the arrival stays as an anchor: the plan's pose at the join
        # is the interpolation between its frames, not a rush to its first future frame.
        keep = future.copy()
        before = np.flatnonzero(valid & ~future)
        if future.any() and before.size:
            keep[before[-1]] = True
        past = int((valid & ~future)[1:].sum())
        selected = _select(waypoints, keep)
        seam_p, seam_v = np.nan, np.nan
        submit_ns = 0
        if future.any():
            if self.executing is not None:
                seam_p, seam_v = _seam(self.executing, Trajectory(selected), arrive_ns)
            self.servo.submit(selected)
            submit_ns = time.monotonic_ns()
            self.executing = (
                join(self.executing, selected, arrive_ns, self.config.blend_s)
                if self.executing is not None
                else Trajectory(selected)
            )
        record = ReplanRecord(
            plan_id=waypoints.plan_id,
            observation_ns=plan.observation_ns,
            ready_ns=plan.ready_ns,
            submitted=int(future.sum()),
            dropped_past=past,
            dropped_invalid=invalid,
            seam_position_m=float(seam_p),
            seam_velocity_m_s=float(seam_v),
            timings=plan.timings,
            positions=waypoints.positions[valid],
            submit_ns=submit_ns,
        )
        self.records.append(record)
        return record


def _select(waypoints: Waypoints, keep: np.ndarray) -> Waypoints:
    return Waypoints(
        waypoints.times_ns[keep],
        waypoints.positions[keep],
        waypoints.rotations[keep],
        waypoints.gripper[keep],
        waypoints.confidence[keep],
        waypoints.plan_id,
        waypoints.source,
        waypoints.meta,
    )


def _seam(executing: Trajectory, new: Trajectory, at_ns: int) -> tuple[float, float]:
    """Position (m) and velocity (m/s) mismatch of a new plan against the motion at `at_ns`."""
    pose_a, _ = executing.sample(at_ns)
    pose_b, _ = new.sample(at_ns)
    vel_a, _ = executing.velocity(at_ns)
    vel_b, _ = new.velocity(at_ns)
    return (
        float(np.linalg.norm(pose_a[:3, 3] - pose_b[:3, 3])),
        float(np.linalg.norm(np.asarray(vel_a) - np.asarray(vel_b))),
    )

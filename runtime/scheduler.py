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

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aimg.geometry import matrix_to_action
from aimg.runtime.camera_process import EXTRA_TIMESTAMPS_BACKWARDS, frame_counter
from aimg.runtime.trajectory import Trajectory, join, measure_seam
from aimg.runtime.waypoints import Waypoints

#: the gripper counts as moving when its openness changed by GRIPPER_STILL or more within
#: GRIPPER_MOTION_WINDOW_NS (a held cube stops the fingers, so holding is not moving)
GRIPPER_MOTION_WINDOW_NS = 100_000_000
GRIPPER_STILL = 0.02
#: a measured openness at least this counts as an open hand (1 = fully open)
HAND_OPEN = 0.9


@dataclass(frozen=True)
class SchedulerConfig:
    """How plans are joined and when frames are too old to plan from.

    join: "blend" or "inpaint" (see the module docstring); blend_s: blend duration;
    latency_margin_s: extra time allowed for the plan to reach the servo loop; camera_latency_s:
    measured camera latencies (see the field); max_frame_age_s:
    frames older than this are not planned from (the servo's watchdog holds the arm);
    open_loop: plan once per episode and execute it (the reference's mode);
    measure_first_command: after each submit, wait (<= 50 ms) for the servo loop's first
    command from the new plan, for the latency breakdown of `aimg bench loop`;
    fixed_noise: every plan of a task starts from the same noise (successive plans then differ
    only where the observation differs, instead of resampling the plan's spread each time);
    ensemble_s: temporal ensembling (> 0): each new waypoint's position becomes the weighted
    mean of what the recent plans predicted for that instant (a plan holds its last pose after
    its end, so the goal is averaged too), weights exp(-age / ensemble_s); the plans of one
    task are noisy estimates of the same motion, and their mean is a better one.
    own_grasp_height: a plan that closes the hand while the hand is open keeps its own heights
    (x and y are still averaged). The arm runs behind the plans' schedules, so at the instant a
    new plan closes the hand at the cube, the older plans already lift: averaged in, they raised
    the sim student's grasp by a median 2.8 cm, over the cube's top in a quarter of its plans
    (docs/runtime.md, "The ensemble keeps the grasp's height"). Once the hand has closed, the
    heights are averaged again, which keeps a held cube from being lifted and set down by
    plans that disagree.
    replan_period_s: the shortest time between the observations of two plans, so each plan
    executes at least this long before a newer one replaces it; None (the default): the
    planner's frame spacing (`dt_s`), so the arm reaches each plan's first generated frame;
    0: replan as fast as frames and the planner allow. A planner much faster than its frame
    spacing (a 4-step student on a CPU, any model on a GPU) otherwise replaces every plan on
    the way to its first frame; the 4-step sim-tiny student then lifted before its fingers
    had closed on the cube (docs/runtime.md, "Fast planners").
    gripper_settle_s: while the gripper is opening or closing, do not replan (for at most this
    long; 0: off): the executing plan finishes the grasp it started. A plan conditioned on a
    half-closed gripper takes the grasp as done and lifts before the fingers have closed.
    """

    join: Literal["blend", "inpaint"] = "inpaint"
    blend_s: float = 0.3
    latency_margin_s: float = 0.02
    max_frame_age_s: float = 0.5
    open_loop: bool = False
    measure_first_command: bool = False
    fixed_noise: bool = False
    ensemble_s: float = 4.0
    own_grasp_height: bool = True
    replan_period_s: float | None = None
    gripper_settle_s: float = 1.0
    #: per view, exposure -> host receipt (s), as `aimg calib latency` measured it: a frame
    #: shows the arm where it was this long before it arrived, so the plan is conditioned on
    #: the pose at that instant
    camera_latency_s: dict[str, float] = field(default_factory=dict)


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


class PoseHistory:
    """The arm's measured pose over the last seconds, sampled from the servo's status in a
    thread (a shared-memory read, ~every 5 ms), so a plan is conditioned on where the arm was
    when its frames were captured, not where it is by the time planning starts: at 0.25 m/s,
    the 100-200 ms between capture and planning is 2-5 cm, which the current-pose action image
    would contradict the frames by."""

    def __init__(self, servo: Any, period_s: float = 0.005, seconds: float = 3.0) -> None:
        self.servo = servo
        self.period_s = period_s
        self.samples: deque[tuple[int, np.ndarray, float]] = deque(maxlen=int(seconds / period_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PoseHistory:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # closing after a failed start must not raise
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.period_s):
            state = self.servo.state()
            # `time_ns` is the tick (host clock) at which the loop read this state; the state's
            # own stamp is on the arm's clock, which need not be the host's.
            if state.tick != last and state.tool_pose is not None:
                last = state.tick
                self.samples.append((int(state.time_ns), state.tool_pose, state.gripper))

    def at(self, t_ns: int) -> tuple[np.ndarray, float] | None:
        """Pose [4, 4] and gripper at `t_ns`: position interpolated linearly between the two
        samples around it, rotation and gripper of the nearer one; None without samples."""
        samples = list(self.samples)
        if not samples:
            return None
        times = np.array([s[0] for s in samples])
        i = int(np.searchsorted(times, t_ns))
        if i == 0 or i >= len(samples):
            _, pose, gripper = samples[min(i, len(samples) - 1)]
            return pose, gripper
        (t0, p0, g0), (t1, p1, g1) = samples[i - 1], samples[i]
        w = (t_ns - t0) / max(t1 - t0, 1)
        pose = (p0 if w < 0.5 else p1).copy()
        pose[:3, 3] = (1 - w) * p0[:3, 3] + w * p1[:3, 3]
        return pose, g0 if w < 0.5 else g1


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
        poses: PoseHistory | None = None,
    ) -> None:
        self.planner = planner
        self.cameras = cameras
        self.servo = servo
        self.instruction = instruction
        self.config = config or SchedulerConfig()
        self.seed = seed
        self.poses = poses
        self.history: list[tuple[int, Trajectory]] = []
        self.unusable = 0
        self.latency = LatencyEstimate()
        self.executing: Trajectory | None = None
        self.records: list[ReplanRecord] = []
        self.last_frame_counter = -1
        self.last_active_ns = time.monotonic_ns()
        self.stopped_reason: str | None = None
        self.settling_since_ns: int | None = None
        self.calibration = cameras.cameras
        # The count, not only the flag on one frame set: a flagged set that arrives while a plan
        # is in flight is overwritten by later (monotonic again) sets before the next step.
        self.backwards_seen = self._backwards_count()

    def _backwards_count(self) -> int:
        """How many times the camera process saw device timestamps go back (0 without stats)."""
        stats = getattr(self.cameras, "stats", None)
        return stats().timestamps_backwards if stats is not None else 0

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
        if not self._replan_due(timeout_s):
            return None
        frames = self.cameras.wait_newer(self.last_frame_counter, timeout_s)
        if frames is None:
            return None
        self.last_frame_counter = frame_counter(frames)
        started_ns = time.monotonic_ns()
        backwards = self._backwards_count()
        if bool(frames.extras.get(EXTRA_TIMESTAMPS_BACKWARDS, False)) or (
            backwards > self.backwards_seen
        ):
            self.stop(
                "camera timestamps went backwards: the frames cannot be ordered in time, so "
                "the planner stopped (check the camera clock / USB link, then reset)"
            )
            return None
        delays = self.config.camera_latency_s
        observation_ns = min(
            int(stamp - delays.get(name, 0.0) * 1e9)
            for name, stamp in frames.host_timestamps_ns.items()
        )
        age_s = (time.monotonic_ns() - observation_ns) / 1e9
        if age_s > self.config.max_frame_age_s:
            return None
        measured = self.poses.at(observation_ns) if self.poses is not None else None
        if measured is None:
            state = self.servo.state()
            measured = (state.tool_pose, state.gripper)
        if self._gripper_moving(observation_ns, measured[1]):
            return None
        tool_pose = matrix_to_action(*measured)
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
        record = self._submit(plan, hand_open=float(measured[1]) >= HAND_OPEN)
        record.started_ns = started_ns
        if self.config.measure_first_command and record.submitted:
            record.first_command_ns = self._first_command(record.plan_id)
        self.last_active_ns = time.monotonic_ns()
        return record

    def _gripper_moving(self, observation_ns: int, gripper: float) -> bool:
        """Whether the gripper moved in the last 0.1 s and the executing plan should go on."""
        limit_s = self.config.gripper_settle_s
        if limit_s <= 0 or self.poses is None or self.executing is None:
            return False
        before = self.poses.at(observation_ns - GRIPPER_MOTION_WINDOW_NS)
        if before is None or abs(float(gripper) - float(before[1])) < GRIPPER_STILL:
            self.settling_since_ns = None
            return False
        if self.settling_since_ns is None:
            self.settling_since_ns = observation_ns
        return observation_ns - self.settling_since_ns < limit_s * 1e9

    def _replan_due(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until the last plan has run `replan_period_s`."""
        period_s = self.config.replan_period_s
        if period_s is None:
            period_s = float(getattr(self.planner, "dt_s", 0.0))
        if period_s <= 0 or not self.records:
            return True
        due_ns = self.records[-1].observation_ns + int(period_s * 1e9)
        wait_s = (due_ns - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            time.sleep(min(wait_s, timeout_s))
        self.last_active_ns = time.monotonic_ns()
        return wait_s <= timeout_s

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

    def _ensemble(self, waypoints: Waypoints, valid: np.ndarray, height: bool = True) -> Waypoints:
        """Positions averaged with the recent plans' predictions (see `ensemble_s`); with
        `height` False, x and y only."""
        tau_ns = self.config.ensemble_s * 1e9
        now = waypoints.times_ns[0]
        self.history = [(t, p) for t, p in self.history if now - t < 5 * tau_ns]
        if not self.history or valid.sum() < 2:
            return waypoints
        ages_ns = np.array([now - t_obs for t_obs, _ in self.history], dtype=np.float64)
        weights = np.repeat(np.exp(-ages_ns / tau_ns)[:, None], 3, axis=1)  # per plan, per axis
        if not height:
            weights[:, 2] = 0.0
        positions = waypoints.positions.copy()
        for k in np.flatnonzero(valid)[1:]:  # frame 0 is the measured pose
            t_ns = int(waypoints.times_ns[k])
            predicted = np.array([old.sample(t_ns)[0][:3, 3] for _, old in self.history])
            total = positions[k] + (weights * predicted).sum(axis=0)
            positions[k] = total / (1.0 + weights.sum(axis=0))
        return dataclasses.replace(waypoints, positions=positions)

    def _submit(self, plan, hand_open: bool = False) -> ReplanRecord:
        """hand_open: the measured hand was open at the plan's observation."""
        waypoints: Waypoints = plan.waypoints
        # Waypoints the safety filter would reject are dropped here, one by one, so one
        # undecodable frame costs that frame, not the whole plan.
        min_confidence = getattr(getattr(self.servo, "limits", None), "min_confidence", 0.0)
        valid = waypoints.finite & (waypoints.confidence > 0)
        valid &= waypoints.confidence >= min_confidence
        if self.config.ensemble_s > 0 and valid.sum() >= 2:
            own = Trajectory(_select(waypoints, valid))
            grasps = hand_open and bool(np.any(waypoints.gripper[valid] < 0.5))
            height = not (self.config.own_grasp_height and grasps)
            waypoints = self._ensemble(waypoints, valid, height)
            self.history.append((int(waypoints.times_ns[0]), own))
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
                seam = measure_seam(self.executing, Trajectory(selected), arrive_ns)
                seam_p, seam_v = seam.position_jump_m, seam.velocity_jump_m_s
            self.servo.submit(selected)
            submit_ns = time.monotonic_ns()
            self.executing = (
                join(self.executing, selected, arrive_ns, self.config.blend_s)
                if self.executing is not None
                else Trajectory(selected)
            )
        if future.any():
            self.unusable = 0
        elif (waypoints.times_ns > arrive_ns).any():  # frames ahead, none the filter would take
            self.unusable += 1
            if self.unusable == 2:
                nonfinite = int((~waypoints.finite[1:]).sum())
                self.servo.hold(
                    f"planner gave {self.unusable} plans in a row without a usable waypoint "
                    f"({nonfinite} non-finite frames in the last; the rest had confidence < "
                    f"{min_confidence}): holding until a good one"
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

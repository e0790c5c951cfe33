"""Camera and arm latency of a cell, measured with a scripted motion (`aimg calib latency`).

Camera latency (per view): host receipt time - device timestamp (exposure), over the frames read
during the motion. It needs device timestamps on the host's clock: RealSense cameras in
librealsense's global-time domain (host system clock, converted here to the monotonic clock of
the host stamps) or the latency simulator's sim clock; anything else is refused, not reported.

Arm latency: the board on the gripper moves a few centimetres back and forth in servo mode
(`LatencyMotion`), along the base direction most nearly perpendicular to the cameras' lines of
sight (`unseen_axis`). Every camera locates the board at each frame's exposure time (ChArUco
detection, PnP with the calibrated intrinsics) and reads its position along that line from the
image (`image_motion`: where the viewing ray meets the line, using the calibrated camera pose,
not PnP's ten-times noisier depth). The time shift that best aligns that observed motion with
the commanded one (least squares over a 1 ms grid, then refined to well below a frame period;
an offset and a gain fitted per camera) is the command -> observed motion delay. Because frames
are placed at their exposure times, the camera latency is not in it: it is the arm's latency
alone (sending, the controller, servo dynamics: everything from the command to the motion).
Commands are stamped when sent and interpolated linearly between sends, so holding each target
for one servo period counts half a period. The arm's own command -> reported-state delay is
fitted the same way from its `ArmState` readings; it shows how far the arm's reports lag its
motion (in the simulator they do not).

In the simulator (`sim_latency_cell`, `measure_sim`) the result is scored against ground truth:
the simulated camera latencies, and the injected arm latency plus the simulated controller's
own lag, fitted to the exact TCP at every physics tick. At 30 or 20 fps every exposure falls on
the same phase of the simulated controller's 60 Hz cycle, which biases the arm estimate by
about +2 ms there (a real camera's clock is not locked to the arm's).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aimg.calib.board import BoardDetector, BoardSpec, solve_board_pose
from aimg.calib.calibration_file import (
    CalibrationFile,
    CalibrationFileError,
    Latency,
    now_iso,
    read_calibration,
    write_calibration,
)
from aimg.calib.handeye import Wait, board_center, facing_pose
from aimg.geometry import Camera, matrix_to_rotvec, pose_to_matrix, rotvec_to_matrix
from aimg.robot.interfaces import Arm, CameraRig, RigFrames

Clock = Callable[[], int]
Progress = Callable[[str, int, int], None]

#: timestamp domains whose device timestamps are on a host clock, and which clock:
#: "realtime" = the host's system clock (`time.time_ns`; librealsense's global time),
#: "host" = the same clock as the host receipt stamps (the latency simulator's sim clock)
HOST_CLOCK_DOMAINS = {"global_time": "realtime", "sim_time": "host"}
_DOMAIN_HINTS = {
    "hardware_clock": "the camera's own clock",
    "system_time": "the host's arrival time, not the exposure",
    "": "unknown: no frame read yet",
}


class LatencyError(RuntimeError):
    """A latency measurement that cannot be made; the message says why and what to do."""


# -- camera latency ------------------------------------------------------------------------------


def realtime_to_monotonic_ns(samples: int = 7) -> int:
    """ns to add to a `time.time_ns()` stamp to put it on `time.monotonic_ns()`'s clock (the
    tightest of a few bracketed readings)."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) // 2 - real)
    return best[1]


def device_clock_offsets(rig: CameraRig) -> dict[str, int]:
    """Per view, ns to add to a device timestamp to put it on the host receipt clock.

    Raises LatencyError unless every view's timestamps are in a domain on the host clock (the
    rig's `timestamp_domains`, known after a frame has been read); a rig that does not say is
    refused too: host - device on two unrelated clocks is not a latency.
    """
    domains = getattr(rig, "timestamp_domains", None)
    if domains is None:
        raise LatencyError(
            f"{type(rig).__name__} does not report its timestamp domains, so its device "
            "timestamps cannot be trusted to be on the host clock: camera latency needs "
            "RealSense cameras in global time (or the latency simulator)"
        )
    bad = {view: domain for view, domain in domains.items() if domain not in HOST_CLOCK_DOMAINS}
    if bad:
        described = ", ".join(
            f"'{view}' in '{domain}' ({_DOMAIN_HINTS.get(domain, 'not the host clock')})"
            for view, domain in sorted(bad.items())
        )
        raise LatencyError(
            f"device timestamps are not on the host clock for camera(s) {described}: "
            "host - device would not be a latency. Turn on global time (RealSenseRig("
            "global_time=True), the default; a sensor without global_time_enabled cannot be "
            "measured) and measure live cameras, not a recording"
        )
    clocks = {view: HOST_CLOCK_DOMAINS[domain] for view, domain in domains.items()}
    realtime = realtime_to_monotonic_ns() if "realtime" in clocks.values() else 0
    return {view: realtime if clock == "realtime" else 0 for view, clock in clocks.items()}


@dataclass(frozen=True)
class CameraLatencyStats:
    """Exposure -> host receipt delay of one camera over `frames` distinct frames (s)."""

    median_s: float
    p90_s: float
    min_s: float
    max_s: float
    std_s: float
    frames: int

    def to_dict(self) -> dict:
        return {
            "median_ms": round(self.median_s * 1e3, 3),
            "p90_ms": round(self.p90_s * 1e3, 3),
            "min_ms": round(self.min_s * 1e3, 3),
            "max_ms": round(self.max_s * 1e3, 3),
            "std_ms": round(self.std_s * 1e3, 3),
            "frames": self.frames,
        }


def camera_latency(
    frames: Iterable[RigFrames], offsets: Mapping[str, int]
) -> dict[str, CameraLatencyStats]:
    """Per view, statistics of host - (device + offset) over distinct frames (a frame read
    twice counts once). offsets: from `device_clock_offsets`."""
    delays: dict[str, dict[int, int]] = {view: {} for view in offsets}
    for frame_set in frames:
        for view, device in frame_set.device_timestamps_ns.items():
            if view in delays:
                host = frame_set.host_timestamps_ns[view]
                delays[view][int(device)] = int(host) - int(device) - offsets[view]
    stats = {}
    for view, by_frame in delays.items():
        if not by_frame:
            raise LatencyError(f"camera '{view}' delivered no frame: is it streaming?")
        d = np.array(list(by_frame.values()), dtype=np.float64) / 1e9
        stats[view] = CameraLatencyStats(
            float(np.median(d)),
            float(np.percentile(d, 90)),
            float(d.min()),
            float(d.max()),
            float(d.std()),
            len(d),
        )
    return stats


# -- the scripted motion -------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyMotion:
    """The board's back-and-forth: along base `axis` (None: `unseen_axis`, across the lines of
    sight of the cameras it faces), `cycles` raised-cosine strokes of
    `amplitude_m` lasting `period_s` each (smooth start and stop), after and before holds of
    `hold_s`, with servo targets sent at `servo_hz`. Delays are searched in
    [`min_delay_s`, `max_delay_s`]; the holds must outlast them (the observed motion lags)."""

    axis: tuple[float, float, float] | None = None
    amplitude_m: float = 0.03
    period_s: float = 1.0
    cycles: int = 2
    hold_s: float = 0.5
    servo_hz: float = 100.0
    min_delay_s: float = -0.1
    max_delay_s: float = 0.4
    max_speed_m_s: float = 0.25

    def __post_init__(self) -> None:
        if self.axis is not None and np.linalg.norm(self.axis) < 1e-9:
            raise ValueError("the motion axis must be a non-zero vector")
        if not 0.005 <= self.amplitude_m <= 0.08:
            raise ValueError(f"amplitude must be 5..80 mm, got {self.amplitude_m * 1e3:g} mm")
        if self.peak_speed_m_s > self.max_speed_m_s:
            raise ValueError(
                f"the motion would reach {self.peak_speed_m_s:.3f} m/s, above the "
                f"{self.max_speed_m_s} m/s allowed: lengthen period_s or shorten the amplitude"
            )
        if self.cycles < 1 or not 10.0 <= self.servo_hz <= 250.0:
            raise ValueError("cycles must be >= 1 and servo_hz in [10, 250]")
        if not -0.5 <= self.min_delay_s < self.max_delay_s < min(self.hold_s, self.period_s):
            raise ValueError(
                "need -0.5 <= min_delay_s < max_delay_s < min(hold_s, period_s), got "
                f"{self.min_delay_s}, {self.max_delay_s}, {self.hold_s}, {self.period_s}"
            )

    @property
    def peak_speed_m_s(self) -> float:
        return math.pi * self.amplitude_m / self.period_s

    @property
    def duration_s(self) -> float:
        return 2.0 * self.hold_s + self.cycles * self.period_s

    def displacement(self, t_s: float) -> float:
        """Offset along the axis (m) `t_s` seconds after the start."""
        u = t_s - self.hold_s
        if u <= 0.0 or u >= self.cycles * self.period_s:
            return 0.0
        return 0.5 * self.amplitude_m * (1.0 - math.cos(2.0 * math.pi * u / self.period_s))


@dataclass
class Segment:
    """One run of the motion: what was sent, what the arm reported and what each camera saw.

    Times are ns on the host clock (sim clock in the simulator); command and state positions
    are the TCP's in the base frame (m). board: view -> (exposure times [N], board centre in the
    camera frame [N, 3]) of the frames in which the board was located; frames: view -> frames
    read; frame_sets: their stamps (no images).
    """

    aimed_at: tuple[str, ...]
    start_pose: np.ndarray
    axis: np.ndarray
    command_ns: np.ndarray
    command_pos: np.ndarray
    state_ns: np.ndarray
    state_pos: np.ndarray
    board: dict[str, tuple[np.ndarray, np.ndarray]]
    frames: dict[str, int]
    frame_sets: list[RigFrames] = field(default_factory=list, repr=False)


class _FrameCollector:
    """Keeps each new frame set's stamps and the board centre each view finds in it."""

    def __init__(
        self,
        detector: BoardDetector,
        cameras: Mapping[str, Camera],
        distortion: Mapping[str, np.ndarray],
        offsets: Mapping[str, int],
    ) -> None:
        self._detector = detector
        self._cameras = cameras
        self._dist = distortion
        self._offsets = offsets
        self._centre = np.append(board_center(detector.spec), 1.0)
        self._seen: dict[str, set[int]] = {v: set() for v in cameras}
        self.stamps: list[RigFrames] = []
        self.board: dict[str, list[tuple[int, np.ndarray]]] = {v: [] for v in cameras}

    def add(self, frames: RigFrames) -> None:
        new = {
            v: int(t)
            for v, t in frames.device_timestamps_ns.items()
            if v in self._seen and int(t) not in self._seen[v]
        }
        if not new:
            return
        self.stamps.append(
            RigFrames({}, dict(frames.device_timestamps_ns), dict(frames.host_timestamps_ns))
        )
        for view, stamp in new.items():
            self._seen[view].add(stamp)
            detection = self._detector.detect(frames.images[view])
            if len(detection) < 6:
                continue
            camera = self._cameras[view]
            try:
                cam_T_board, _ = solve_board_pose(
                    self._detector.object_points, detection, camera.K, self._dist.get(view)
                )
            except ValueError:
                continue
            point = (cam_T_board @ self._centre)[:3]
            self.board[view].append((stamp + self._offsets[view], point))


def _require_ok(arm: Arm, doing: str):
    state = arm.read_state()
    if not state.ok:
        raise LatencyError(
            f"the arm stopped {doing} (error C{state.error_code}, enabled {state.enabled}): "
            "clear the cause, then measure again"
        )
    return state


def glide_to(
    arm: Arm,
    target: np.ndarray,
    clock: Clock,
    wait: Wait,
    servo_hz: float,
    speed_m_s: float = 0.08,
    turn_rad_s: float = 0.4,
    settle_s: float = 0.3,
    tolerance_m: float = 0.005,
) -> None:
    """Stream servo targets at `servo_hz` along a smooth straight path to TCP pose `target`
    [4, 4], then hold it for `settle_s`: a servo-mode arm (and the xArm driver's dead-man
    watchdog) wants a steady stream of small steps, never one far target."""
    start = _require_ok(arm, "before the motion").tool_pose
    offset = target[:3, 3] - start[:3, 3]
    turn = matrix_to_rotvec(start[:3, :3].T @ target[:3, :3])
    # smoothstep peaks at 1.5x the mean speed
    duration = 1.5 * max(
        float(np.linalg.norm(offset)) / speed_m_s, float(np.linalg.norm(turn)) / turn_rad_s, 0.1
    )
    period_ns = round(1e9 / servo_hz)
    t0, tick = clock(), 0
    while True:
        t_s = (clock() - t0) / 1e9
        f = min(1.0, t_s / duration)
        f = f * f * (3.0 - 2.0 * f)
        arm.servo(
            pose_to_matrix(start[:3, 3] + f * offset, start[:3, :3] @ rotvec_to_matrix(f * turn))
        )
        _require_ok(arm, "moving to the start pose")
        if t_s >= duration + settle_s:
            break
        tick += 1
        wait(max(0, t0 + tick * period_ns - clock()) / 1e9)
    reached = _require_ok(arm, "at the start pose").tool_pose
    miss = float(np.linalg.norm(reached[:3, 3] - target[:3, 3]))
    if miss > tolerance_m:
        raise LatencyError(
            f"the arm stopped {miss * 1e3:.1f} mm from the start pose: is it reachable? (check "
            "the workspace limits and the board mount)"
        )


def record_segment(
    arm: Arm,
    rig: CameraRig,
    collector: _FrameCollector,
    start_pose: np.ndarray,
    axis: np.ndarray,
    motion: LatencyMotion,
    clock: Clock,
    wait: Wait,
    threaded_reader: bool,
    aimed_at: tuple[str, ...] = (),
    on_progress: Progress | None = None,
) -> Segment:
    """Run the motion once along unit `axis` from `start_pose` (where the arm must already be),
    recording.

    threaded_reader: read frames in a thread (a real rig's `read()` blocks until new frames, which
    must not hold up the servo loop); otherwise once per servo tick (lock-step sim).
    """
    collector.stamps, collector.board = [], {v: [] for v in collector.board}
    commands: list[tuple[int, np.ndarray]] = []
    states: list[tuple[int, np.ndarray]] = []
    period_ns = round(1e9 / motion.servo_hz)
    total = math.ceil(motion.duration_s * motion.servo_hz)
    stop = threading.Event()
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                collector.add(rig.read())
        except BaseException as exc:  # surfaced in the servo loop
            failure.append(exc)

    thread = threading.Thread(target=reader, daemon=True) if threaded_reader else None
    if thread is not None:
        thread.start()
    try:
        t0 = clock()
        tick = 0
        while True:
            now = clock()
            t_s = (now - t0) / 1e9
            if t_s > motion.duration_s:
                break
            target = start_pose.copy()
            target[:3, 3] += axis * motion.displacement(t_s)
            arm.servo(target)
            commands.append((now, target[:3, 3].copy()))
            state = _require_ok(arm, "during the latency motion")
            states.append((state.timestamp_ns, state.tool_pose[:3, 3].copy()))
            if thread is None:
                collector.add(rig.read())
            elif failure:
                raise LatencyError(f"reading the cameras failed: {failure[0]}") from failure[0]
            tick += 1
            if on_progress is not None and tick % 10 == 0:
                on_progress(f"motion facing {', '.join(aimed_at)}", min(tick, total), total)
            wait(max(0, t0 + tick * period_ns - clock()) / 1e9)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=5.0)
    if failure:
        raise LatencyError(f"reading the cameras failed: {failure[0]}") from failure[0]
    board = {}
    for view, found in collector.board.items():
        times = np.array([t for t, _ in found], dtype=np.int64)
        positions = np.array([p for _, p in found], dtype=np.float64).reshape(-1, 3)
        board[view] = (times, positions)
    frames = {v: len({f.device_timestamps_ns[v] for f in collector.stamps}) for v in board}
    return Segment(
        aimed_at,
        start_pose,
        axis,
        np.array([t for t, _ in commands], dtype=np.int64),
        np.array([p for _, p in commands]),
        np.array([t for t, _ in states], dtype=np.int64),
        np.array([p for _, p in states]),
        board,
        frames,
        list(collector.stamps),
    )


# -- aligning observed with commanded motion -----------------------------------------------------


@dataclass(frozen=True)
class Series:
    """Commanded and observed positions along the motion axis (m) at their times (s)."""

    command_t: np.ndarray
    command_x: np.ndarray
    observed_t: np.ndarray
    observed_x: np.ndarray


def image_motion(points_cam: np.ndarray, axis_cam: np.ndarray) -> np.ndarray:
    """Observed positions along the motion line (m, about the mean point) from board points
    [N, 3] in the camera frame, read off the image.

    PnP pins a point's image position far better than its depth (~10x, at 1 m), so each point
    is replaced by where its viewing ray passes closest to the line through the mean point
    along `axis_cam` (unit, camera frame): exact for motion along that line, whatever the
    perspective. Returns [N] signed distances along `axis_cam`.
    """
    mean = points_cam.mean(axis=0)
    rays = points_cam / np.linalg.norm(points_cam, axis=1, keepdims=True)
    b = rays @ axis_cam
    if float(np.max(np.abs(b))) > 0.98:
        raise LatencyError("the motion axis points at a camera: it cannot see the motion")
    return (b * (rays @ mean) - axis_cam @ mean) / (1.0 - b * b)


def series(
    command_ns: np.ndarray,
    command_pos: np.ndarray,
    observed_ns: np.ndarray,
    observed_pos: np.ndarray,
    axis: np.ndarray,
) -> Series:
    """Project onto `axis` and put times in seconds from the first command."""
    order = np.argsort(command_ns, kind="stable")
    t_cmd, keep = np.unique(command_ns[order], return_index=True)  # one target per instant
    origin = t_cmd[0]
    return Series(
        (t_cmd - origin) / 1e9,
        command_pos[order][keep] @ axis,
        (np.asarray(observed_ns) - origin) / 1e9,
        np.asarray(observed_pos).reshape(-1, 3) @ axis,
    )


@dataclass(frozen=True)
class DelayFit:
    """The shift that best aligns observed with commanded motion: `delay_s`; the RMS residual
    (m) after fitting an offset and `gain` (the observed amplitude / the commanded one) per
    series; `samples` observations used."""

    delay_s: float
    rms_m: float
    gain: float
    samples: int

    def to_dict(self) -> dict:
        return {
            "delay_ms": round(self.delay_s * 1e3, 3),
            "rms_mm": round(self.rms_m * 1e3, 4),
            "gain": round(self.gain, 4),
            "samples": self.samples,
        }


def _window(s: Series, min_delay_s: float, max_delay_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Observations whose shifted times stay inside the commands for every candidate delay,
    so every candidate is scored on the same samples."""
    keep = (s.observed_t - max_delay_s >= s.command_t[0]) & (
        s.observed_t - min_delay_s <= s.command_t[-1]
    )
    return s.observed_t[keep], s.observed_x[keep]


def _sse(s: Series, t: np.ndarray, x: np.ndarray, delay: float) -> tuple[float, float]:
    """Residual sum of squares of x ~ a + g * command(t - delay), and g."""
    c = np.interp(t - delay, s.command_t, s.command_x)
    c = c - c.mean()
    y = x - x.mean()
    cc = float(c @ c)
    g = float(c @ y) / cc if cc > 0 else 0.0
    r = y - g * c
    return float(r @ r), g


def fit_delay(
    all_series: Sequence[Series],
    min_delay_s: float,
    max_delay_s: float,
    grid_s: float = 0.001,
) -> DelayFit:
    """One delay shared by all series (each with its own offset and gain), minimising the total
    squared residual: a grid search at `grid_s`, refined by a bounded scalar search, so the
    answer resolves far below a frame period."""
    from scipy.optimize import minimize_scalar

    windows = [(s, *_window(s, min_delay_s, max_delay_s)) for s in all_series]
    windows = [(s, t, x) for s, t, x in windows if len(t) >= 3]
    samples = sum(len(t) for _, t, _ in windows)
    if samples < 10:
        raise LatencyError(
            f"only {samples} observations cover the motion: the board was not seen often "
            "enough (check that the cameras see it, lengthen the motion)"
        )
    if all(np.ptp(s.command_x) < 1e-6 for s, _, _ in windows):
        raise LatencyError("the commanded motion does not move along its axis")

    def cost(delay: float) -> float:
        return sum(_sse(s, t, x, delay)[0] for s, t, x in windows)

    grid = np.arange(min_delay_s, max_delay_s + 0.5 * grid_s, grid_s)
    costs = np.array([cost(d) for d in grid])
    best = float(grid[int(np.argmin(costs))])
    low, high = max(min_delay_s, best - 2 * grid_s), min(max_delay_s, best + 2 * grid_s)
    refined = minimize_scalar(cost, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    delay = float(refined.x) if refined.fun <= cost(best) else best
    if delay <= min_delay_s + grid_s or delay >= max_delay_s - grid_s:
        raise LatencyError(
            f"the best delay {delay * 1e3:.1f} ms is at the edge of the searched "
            f"[{min_delay_s * 1e3:.0f}, {max_delay_s * 1e3:.0f}] ms: the clocks disagree or the "
            "latency is outside the range (widen it with max_delay_s and longer holds)"
        )
    sse, gains = 0.0, []
    for s, t, x in windows:
        part, g = _sse(s, t, x, delay)
        sse += part
        gains.append(g)
    return DelayFit(delay, math.sqrt(sse / samples), float(np.mean(gains)), samples)


# -- the whole measurement -----------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyResult:
    """What `measure_latency` found (see the module docstring for what each delay includes).

    camera: per view, exposure -> receipt; arm_by_camera: command -> motion seen by each camera;
    arm: the same, all cameras fitted together (the number to use); arm_state: command -> the
    arm's own reported state; segments: the recorded runs (for scoring against ground truth).
    """

    camera: dict[str, CameraLatencyStats]
    arm_by_camera: dict[str, DelayFit]
    arm: DelayFit
    arm_state: DelayFit
    motion: LatencyMotion
    segments: list[Segment] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "camera": {v: s.to_dict() for v, s in self.camera.items()},
            "arm": self.arm.to_dict(),
            "arm_by_camera": {v: f.to_dict() for v, f in self.arm_by_camera.items()},
            "arm_state": self.arm_state.to_dict(),
            "motion": {
                **dataclasses.asdict(self.motion),
                "peak_speed_m_s": round(self.motion.peak_speed_m_s, 4),
            },
            "segments": [
                {
                    "aimed_at": list(seg.aimed_at),
                    "frames": seg.frames,
                    "board_seen": {v: len(t) for v, (t, _) in seg.board.items()},
                }
                for seg in self.segments
            ],
        }

    def latency(self, method: str = "scripted motion, board tracking") -> Latency:
        """The calibration file's record of this measurement."""
        camera_s = {v: s.median_s for v, s in self.camera.items()}
        values = [*camera_s.values(), self.arm.delay_s]
        if not all(0.0 <= v < 2.0 for v in values):
            raise LatencyError(
                f"measured latencies {camera_s} (cameras) and {self.arm.delay_s:.4f} s (arm) are "
                "not in [0, 2) s: the clocks disagree; not writing them"
            )
        details = {
            "camera_p90_s": {v: round(s.p90_s, 6) for v, s in self.camera.items()},
            "arm_by_camera_s": {v: round(f.delay_s, 6) for v, f in self.arm_by_camera.items()},
            "arm_state_s": round(self.arm_state.delay_s, 6),
            "arm_rms_mm": round(self.arm.rms_m * 1e3, 4),
        }
        return Latency(camera_s, self.arm.delay_s, now_iso(), method, details)


def unseen_axis(
    cameras: Mapping[str, Camera], views: Sequence[str], point: np.ndarray
) -> np.ndarray:
    """The unit direction most nearly perpendicular to every view's line of sight to `point`
    (exactly, for one or two views): motion along it moves the board across the images, not
    towards the cameras, where a camera is least precise and the arm's sideways wobble would
    mix in. Points upwards (or along +y, +x when horizontal) for a repeatable sign."""
    rays = [cameras[v].c2w[:3, 3] - point for v in views]
    scatter = sum(np.outer(r, r) / (r @ r) for r in rays)
    if len(views) == 1:  # any direction across the single line of sight: prefer vertical
        ray = rays[0] / np.linalg.norm(rays[0])
        up = np.array([0.0, 0.0, 1.0])
        axis = up - (up @ ray) * ray
        if np.linalg.norm(axis) < 0.3:
            axis = np.cross(ray, [0.0, 1.0, 0.0])
    else:
        axis = np.linalg.eigh(scatter)[1][:, 0]
    axis = axis / np.linalg.norm(axis)
    for k in (2, 1, 0):
        if abs(axis[k]) > 1e-6:
            return axis if axis[k] > 0 else -axis
    return axis


def aim_direction(cameras: Mapping[str, Camera], views: Sequence[str], center: np.ndarray):
    """Unit direction from `center` that faces the cameras `views` together, or None when they
    are too far apart for one board orientation to face them all."""
    directions = []
    for view in views:
        d = cameras[view].c2w[:3, 3] - center
        directions.append(d / np.linalg.norm(d))
    mean = np.mean(directions, axis=0)
    spread = max(
        math.degrees(math.acos(np.clip(d @ mean / np.linalg.norm(mean), -1, 1))) for d in directions
    )
    return mean / np.linalg.norm(mean) if spread <= 35.0 else None


def measure_latency(
    arm: Arm,
    rig: CameraRig,
    board: BoardSpec,
    tool_T_board: np.ndarray,
    clock: Clock,
    wait: Wait,
    motion: LatencyMotion | None = None,
    center: tuple[float, float, float] = (0.45, 0.0, 0.30),
    distortion: Mapping[str, np.ndarray] | None = None,
    cameras: Mapping[str, Camera] | None = None,
    threaded_reader: bool = False,
    min_seen: float = 0.6,
    on_progress: Progress | None = None,
) -> LatencyResult:
    """Measure camera and arm latency (module docstring) with an enabled `arm` and connected `rig`.

    clock: the host clock of commands, states and receipts (`time.monotonic_ns`, or the sim
    clock); wait: advances it. The board (mounted at `tool_T_board`) faces the cameras from
    `center` (base frame, m): all of them at once if they are close enough together, else in
    turn; a camera must locate it in `min_seen` of its frames. cameras / distortion: the
    calibration to locate it with (default: `rig.cameras`, no distortion). Refuses
    (LatencyError) device timestamps off the host clock before the arm moves.
    """
    motion = motion or LatencyMotion()
    first = rig.read()
    offsets = device_clock_offsets(rig)
    cameras = dict(rig.cameras if cameras is None else cameras)
    missing = set(first.images) - set(cameras)
    if missing:
        raise LatencyError(f"camera(s) {sorted(missing)} have no calibration")
    collector = _FrameCollector(BoardDetector(board), cameras, distortion or {}, offsets)
    center_arr = np.asarray(center, dtype=np.float64)
    remaining = list(cameras)
    segments: list[Segment] = []
    measured: dict[str, Segment] = {}
    while remaining:
        group = list(remaining)
        direction = aim_direction(cameras, group, center_arr)
        if direction is None:
            group = group[:1]
            direction = aim_direction(cameras, group, center_arr)
        start = facing_pose(center_arr, direction, tool_T_board, board)
        if motion.axis is None:
            axis = unseen_axis(cameras, group, center_arr)
        else:
            axis = np.asarray(motion.axis, dtype=np.float64) / np.linalg.norm(motion.axis)
        glide_to(arm, start, clock, wait, motion.servo_hz)
        segment = record_segment(
            arm,
            rig,
            collector,
            start,
            axis,
            motion,
            clock,
            wait,
            threaded_reader,
            tuple(group),
            on_progress,
        )
        segments.append(segment)
        for view in list(remaining):
            seen = len(segment.board[view][0])
            if seen >= max(10, min_seen * segment.frames[view]):
                measured[view] = segment
                remaining.remove(view)
            elif view in group and len(group) == 1:
                raise LatencyError(
                    f"camera '{view}' located the board in only {seen} of its "
                    f"{segment.frames[view]} frames while it faced the camera: check its "
                    "calibration, focus and lighting"
                )
    per_camera = {}
    by_camera = {}
    for view, seg in measured.items():
        times, points = seg.board[view]
        along = image_motion(points, cameras[view].c2w[:3, :3].T @ seg.axis)
        observed = along[:, None] * seg.axis
        per_camera[view] = series(seg.command_ns, seg.command_pos, times, observed, seg.axis)
        by_camera[view] = fit_delay([per_camera[view]], motion.min_delay_s, motion.max_delay_s)
    combined = fit_delay(list(per_camera.values()), motion.min_delay_s, motion.max_delay_s)
    state = fit_delay(
        [series(s.command_ns, s.command_pos, s.state_ns, s.state_pos, s.axis) for s in segments],
        motion.min_delay_s,
        motion.max_delay_s,
    )
    frame_sets = [f for seg in segments for f in seg.frame_sets]
    return LatencyResult(
        camera_latency(frame_sets, offsets), by_camera, combined, state, motion, segments
    )


def write_latency(path: str | Path, result: LatencyResult) -> CalibrationFile:
    """Store `result` in the calibration file at `path` (atomically); returns the new file."""
    calibration = read_calibration(path)
    latency = result.latency()
    unknown = set(latency.camera_s) - set(calibration.records)
    if unknown:
        raise CalibrationFileError(
            f"{path} calibrates cameras {sorted(calibration.records)}, not {sorted(unknown)}: "
            "measure with the cell this file belongs to"
        )
    updated = dataclasses.replace(calibration, latency=latency)
    write_calibration(path, updated)
    return updated


# -- the simulated cell --------------------------------------------------------------------------


def sim_latency_cell(
    seed: int = 0,
    num_cameras: int = 2,
    arm_latency_s: float = 0.05,
    camera_latency_s: float | Mapping[str, float] = 0.03,
    fps: float = 30.0,
    camera_jitter_s: float = 0.0,
    supersample: int = 1,
):
    """A seeded `SimCalibrationCell` with simulated latency (`aimg.robot.sim.latency`); close
    it (or use `with`)."""
    from aimg.calib.sim import SimCalibrationCell
    from aimg.robot.sim.latency import with_latency

    cell = SimCalibrationCell(seed=seed, num_cameras=num_cameras, supersample=supersample)
    try:
        return with_latency(cell, arm_latency_s, camera_latency_s, fps, camera_jitter_s, seed)
    except BaseException:
        cell.close()
        raise


@dataclass(frozen=True)
class SimLatencyRun:
    """A measurement on a latency-simulating cell and its ground truth (s).

    truth_arm_s: command -> true TCP motion along the motion axis, fitted to the simulator's
    exact TCP at every physics tick: the injected `arm_latency_s` plus the simulated
    controller's own lag (its 60 Hz control tick and motor response), which a real arm has too.
    """

    result: LatencyResult
    truth: dict
    truth_arm_s: float

    @property
    def errors_ms(self) -> dict:
        """Estimate - truth (ms): per camera latency, arm per camera and combined, arm state."""
        camera_truth = self.truth["camera_median_s"]
        r = self.result
        return {
            "camera": {
                v: round((s.median_s - camera_truth[v]) * 1e3, 3) for v, s in r.camera.items()
            },
            "arm": round((r.arm.delay_s - self.truth_arm_s) * 1e3, 3),
            "arm_by_camera": {
                v: round((f.delay_s - self.truth_arm_s) * 1e3, 3)
                for v, f in r.arm_by_camera.items()
            },
            "arm_state": round((r.arm_state.delay_s - self.truth_arm_s) * 1e3, 3),
        }

    def to_dict(self) -> dict:
        arm_own = self.truth_arm_s - self.truth["arm_latency_s"]
        return {
            "estimate": self.result.to_dict(),
            "truth": {
                **self.truth,
                "arm_s": round(self.truth_arm_s, 6),
                "arm_controller_lag_s": round(arm_own, 6),
            },
            "error_ms": self.errors_ms,
        }


def measure_sim(
    cell,
    motion: LatencyMotion | None = None,
    cameras: Mapping[str, Camera] | None = None,
    tool_T_board: np.ndarray | None = None,
    on_progress: Progress | None = None,
) -> SimLatencyRun:
    """`measure_latency` on a `LatencyCell` around a `SimCalibrationCell`, scored against its
    ground truth. cameras / tool_T_board: calibrated estimates (default: the true cameras and
    the nominal board mount)."""
    inner = cell.cell
    motion = motion or LatencyMotion()
    cell.start_tcp_log()
    result = measure_latency(
        cell.arm,
        cell.rig,
        inner.board,
        inner.nominal_tool_T_board if tool_T_board is None else tool_T_board,
        cell.clock_ns,
        cell.wait,
        motion,
        cameras=cameras,
        on_progress=on_progress,
    )
    times, positions = cell.tcp_log()
    truth = []
    for seg in result.segments:
        during = (times >= seg.command_ns[0]) & (times <= seg.command_ns[-1])
        truth.append(
            series(seg.command_ns, seg.command_pos, times[during], positions[during], seg.axis)
        )
    truth_arm = fit_delay(truth, motion.min_delay_s, motion.max_delay_s)
    return SimLatencyRun(result, cell.truth.to_dict(), truth_arm.delay_s)

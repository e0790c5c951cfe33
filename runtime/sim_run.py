"""`aimg run --sim`: the whole closed loop in real time against the simulated cell.

Processes (as on a real cell, see docs/runtime.md):

    physics server (robot/sim, real time)  <- arm calls  <- servo process (fixed rate, safety)
          ^ snapshots                                            ^ Waypoints
    camera process (mirrored renderer) -> shared-memory ring -> planner (this process)

The planner replans continuously (`Scheduler`), the servo process interpolates, filters and
commands; episodes are started and judged by the sim's supervisor, which is the only part a
real cell does not have. Start states are those of `aimg sim collect --seed SEED` (the same
per-episode seeds), so closed-loop, open-loop and offline evaluations share their starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aimg.geometry import matrix_to_action
from aimg.runtime.waypoints import GRIPPER_RAMP_S


@dataclass(frozen=True)
class RunSettings:
    """What `aimg run --sim` does; see the CLI's --help for each field."""

    task: str = "reach"
    episodes: int = 20
    seed: int = 2027
    model: Path = Path("assets/sim-tiny-16")
    backend: str = "auto"
    planner: Literal["model", "expert"] = "model"
    open_loop: bool = False
    join: Literal["blend", "inpaint"] = "inpaint"
    blend_s: float = 0.3
    episode_s: float | None = None
    rate_hz: float = 100.0
    camera_fps: float = 10.0
    threads: int = 1
    video: Path | None = None
    video_episode: int = 0
    views: int = 2
    size: int = 128
    limits: dict[str, Any] = field(default_factory=dict)
    measure_first_command: bool = False
    fixed_noise: bool = False
    ensemble_s: float = 4.0
    own_grasp_height: bool = True
    replan_period_s: float | None = None
    gripper_settle_s: float = 1.0
    gripper_follows_arm: bool = True
    #: s, the gripper's ramp before the waypoint that changes it (None: the frame spacing)
    gripper_ramp_s: float | None = GRIPPER_RAMP_S
    arm: Literal["sim", "xarm-sdk"] = "sim"
    #: where the cameras stand (a calibration file's) instead of the standard placements
    cameras: dict[str, Any] | None = None


EPISODE_SECONDS = {"reach": 7.0, "pick": 12.0}


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class _Ticker:
    """Calls `tick()` every `period_s` in a daemon thread between `__enter__` and `__exit__`."""

    period_s = 0.1

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not hasattr(self, "_stop"):  # never entered: a start-up failure is being raised
            return
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError


class PathRecorder(_Ticker):
    """Samples camera frames and the arm's pose in a thread while the planner works (torch and
    onnxruntime release the GIL while computing), for the episode video and the executed path."""

    def __init__(
        self,
        cameras: Any,
        servo: Any,
        period_s: float = 0.1,
        frames: bool = False,
        cube: Callable[[], Any] | None = None,
    ):
        self.cameras, self.servo, self.period_s, self.keep_frames = cameras, servo, period_s, frames
        self.cube = cube  # the target cube's position (the simulator's), read with each pose
        self.cube_positions: list[np.ndarray] = []  # one per position when `cube` is given
        self.positions: list[tuple[int, np.ndarray]] = []  # (time_ns, TCP position [3])
        self.rotations: list[np.ndarray] = []  # the tool's orientation [3, 3], per position
        self.grippers: list[float] = []  # measured openness, 1 open / 0 closed
        self.frames: list[tuple[dict[str, np.ndarray], int]] = []
        self.plans: list[tuple[int, np.ndarray]] = []  # (time_ns, positions [K, 3])

    def tick(self) -> None:
        state = self.servo.state()
        if state is not None and state.tool_pose is not None:
            pose = np.asarray(state.tool_pose)
            self.positions.append((time.monotonic_ns(), pose[:3, 3].copy()))
            self.rotations.append(pose[:3, :3].copy())
            self.grippers.append(float(state.gripper))
            if self.cube is not None:
                self.cube_positions.append(np.asarray(self.cube(), dtype=np.float64))
        if self.keep_frames:
            latest = self.cameras.latest()
            if latest is not None:
                stamp = min(latest.host_timestamps_ns.values())
                self.frames.append((dict(latest.images), stamp))


class Heartbeat(_Ticker):
    """Feeds the servo loop's watchdogs at 20 Hz from a thread: the camera stream's frame age
    (from the camera process, independent of how long a plan takes) and whether the planner
    made progress recently. If this process stalls or dies, the heartbeats stop and the servo
    loop holds the arm by itself."""

    period_s = 0.05

    def __init__(self, cameras: Any, servo: Any, silence_s: float) -> None:
        self.cameras, self.servo, self.silence_s = cameras, servo, silence_s
        self.scheduler: Any = None

    def tick(self) -> None:
        active = self.scheduler.last_active_ns if self.scheduler is not None else None
        ok = active is not None and (time.monotonic_ns() - active) / 1e9 < self.silence_s
        self.servo.heartbeat(frame_age_s=self.cameras.frame_age_s(), planner_ok=ok)


@dataclass
class EpisodeContext:
    """What a fault-injection hook sees each loop iteration (tests and `aimg bench loop`)."""

    cell: Any
    camera: Any
    servo: Any
    scheduler: Any
    elapsed_s: float
    episode: int


def run_sim(
    settings: RunSettings,
    progress: bool = True,
    planner_wrapper: Callable[[Any], Any] | None = None,
    on_tick: Callable[[EpisodeContext], None] | None = None,
) -> dict[str, Any]:
    """Run `settings.episodes` closed-loop (or open-loop) episodes; returns the JSON report.

    planner_wrapper(planner) -> planner and on_tick(context) are hooks for fault injection: a
    planner that misbehaves, a camera that stops, an arm that faults.
    """
    from aimg.robot.sim.collect import episode_seed
    from aimg.robot.sim.mirror import make_sim_cell
    from aimg.robot.sim.supervisor import trajectory_from_plan
    from aimg.runtime.camera_process import CameraProcess
    from aimg.runtime.expert_planner import ExpertPlanner
    from aimg.runtime.safety import SafetyLimits, check_commands
    from aimg.runtime.scheduler import PoseHistory, Scheduler, SchedulerConfig
    from aimg.runtime.servo import ServoProcess, connect_remote_arm

    limits = SafetyLimits.from_dict(settings.limits) if settings.limits else SafetyLimits()
    policy = _load_policy(settings)
    episode_s = settings.episode_s or EPISODE_SECONDS.get(settings.task, 8.0)
    scheduler_cfg = SchedulerConfig(
        join=settings.join,
        blend_s=settings.blend_s,
        open_loop=settings.open_loop,
        measure_first_command=settings.measure_first_command,
        fixed_noise=settings.fixed_noise,
        ensemble_s=settings.ensemble_s,
        own_grasp_height=settings.own_grasp_height,
        replan_period_s=settings.replan_period_s,
        gripper_settle_s=settings.gripper_settle_s,
    )
    results: list[dict[str, Any]] = []
    emulator = None
    if settings.arm == "xarm-sdk":  # the unmodified xArm SDK -> the emulator -> the same physics
        from aimg.robot.remote import RemoteDevice
        from aimg.robot.xarm.emulator import make_xarm_sim_cell, xarm_config_for_cell
        from aimg.runtime.servo import connect_xarm

        if settings.cameras is not None:
            raise ValueError("--calibration places cameras with the sim arm only (not xarm-sdk)")
        cell, host = make_xarm_sim_cell(
            views=settings.views, height=settings.size, width=settings.size
        )
        emulator = RemoteDevice(cell.channel, "xarm_emulator")
        arm_factory = functools.partial(connect_xarm, xarm_config_for_cell(host))
    else:
        cell = make_sim_cell(
            views=settings.views,
            height=settings.size,
            width=settings.size,
            cameras=settings.cameras,
        )
        arm_factory = functools.partial(connect_remote_arm, cell.address)
    supervisor = cell.supervisor()
    emulator_gaps_ms: list[float] = []
    camera = CameraProcess(cell.rig_factory(), fps=settings.camera_fps)
    servo = ServoProcess(
        arm_factory,
        limits,
        rate_hz=settings.rate_hz,
        blend_s=settings.blend_s,
        gripper_follows_arm=settings.gripper_follows_arm,
        gripper_ramp_s=settings.gripper_ramp_s,
    )
    bar = _progress(settings.episodes, progress)
    heartbeat = Heartbeat(camera, servo, silence_s=limits.max_planner_silence_s / 2)
    poses = PoseHistory(servo)
    try:
        camera.start()
        servo.start()
        heartbeat.__enter__()
        poses.start()
        for index in range(settings.episodes):
            seed = episode_seed(settings.seed, index)
            servo.pause("new episode: the simulator moves the arm to its start pose")
            time.sleep(0.05)  # a tick or more, so no command races the teleport
            scene = supervisor.start_episode(settings.task, seed)
            servo.reset()
            wait_for_fresh_frames(camera, time.monotonic_ns())
            if emulator is not None:
                emulator.call("clear_servo_log")
            start_ns = time.monotonic_ns()
            planner = policy
            if settings.planner == "expert":
                planner = ExpertPlanner(
                    trajectory_from_plan(supervisor.expert_plan()),
                    start_ns,
                    policy.spec,
                    policy.dt_s,
                    policy.backend.model_config.frames,
                )
            if planner_wrapper is not None:
                planner = planner_wrapper(planner)
            scheduler = Scheduler(
                planner, camera, servo, scene["instruction"], scheduler_cfg, index, poses
            )
            heartbeat.scheduler = scheduler
            record_video = settings.video is not None and index == settings.video_episode
            track = supervisor.target_cube_position if settings.task == "pick" else None
            with PathRecorder(camera, servo, frames=record_video, cube=track) as recorder:
                while (elapsed := (time.monotonic_ns() - start_ns) / 1e9) < episode_s:
                    if on_tick is not None:
                        on_tick(EpisodeContext(cell, camera, servo, scheduler, elapsed, index))
                    if scheduler.done:
                        scheduler.last_active_ns = time.monotonic_ns()  # open loop: idle, alive
                        time.sleep(0.05)
                        continue
                    try:
                        record = scheduler.step()
                    except Exception as exc:  # a failing planner must stop the arm, not the run
                        scheduler.stop(f"planner failed: {type(exc).__name__}: {exc}")
                        record = None
                    if record is not None and len(record.positions):
                        recorder.plans.append((record.ready_ns, record.positions))
            if emulator is not None:  # command arrivals at the controller, within the episode
                arrivals = np.asarray(emulator.call("servo_arrivals_ns"), dtype=np.float64)
                emulator_gaps_ms.extend((np.diff(arrivals) / 1e6).tolist())
            servo.hold("episode over")
            time.sleep(0.2)
            result = _score(supervisor, servo, scene, scheduler, index, seed)
            result["grasps"] = grasp_attempts(recorder.grippers)
            if settings.task == "pick":
                result["first_close"] = first_close_offset(recorder, scene["objects"][0])
                result["cube"] = cube_track(recorder, scene["objects"][0])
            results.append(result)
            if record_video:
                _write_video(settings.video, recorder, camera.cameras, result)
                result["video"] = str(settings.video)
            bar.update(1)
            bar.set_postfix_str(f"success {sum(r['success'] for r in results)}/{len(results)}")
        commands = servo.commands()
        violations = check_commands(commands, limits, 1.0 / settings.rate_hz)
        report = _summary(settings, results, servo, camera, violations, len(commands))
        report["model"] = policy.backend.describe()
        report["arm"] = settings.arm
        if emulator is not None:
            report["emulator_servo"] = emulator_jitter(emulator_gaps_ms, settings.rate_hz)
    finally:
        poses.close()
        heartbeat.__exit__()
        bar.close()
        servo.close()
        camera.close()
        cell.close()
    return report


def emulator_jitter(gaps_ms: list[float], rate_hz: float) -> dict[str, Any]:
    """Servo command spacing as the xArm controller (emulator) received it: what the firmware
    sees of the loop's timing, after the SDK and the socket."""
    gaps = np.asarray(gaps_ms, dtype=np.float64)
    period = 1000.0 / rate_hz
    if gaps.size == 0:
        return {"commands": 0}
    return {
        "commands": int(gaps.size + 1),
        "period_ms": period,
        "gap_ms": {q: float(np.percentile(gaps, v)) for q, v in (("p50", 50), ("p99", 99))}
        | {"max": float(gaps.max())},
        "jitter_ms_p99": float(np.percentile(np.abs(gaps - period), 99)),
        "gaps_over_2_periods": int((gaps > 2 * period).sum()),
    }


SIDE_BY_SIDE_KEYS = (
    "success_rate",
    "final_xy_error_median_m",
    "plan_latency_p50_s",
    "plan_latency_p95_s",
    "replans_per_episode",
    "out_of_limit_commands",
)


def side_by_side(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model run on the same start states (e.g. a student and its teacher), with
    what each plan costs (the backend's `describe()`)."""
    rows = []
    for name, report in reports.items():
        model = report.get("model") or {}
        row: dict[str, Any] = {"model": name}
        row.update({k: model.get(k) for k in ("steps", "cfg_scale", "evaluations_per_plan")})
        row["distilled"] = model.get("distilled") is not None
        row.update({k: report.get(k) for k in SIDE_BY_SIDE_KEYS})
        rows.append(row)
    return rows


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="episodes", unit="ep", disable=not enabled)


def _load_policy(settings: RunSettings):
    from aimg.runtime.backends import load
    from aimg.runtime.policy import Policy

    backend = load(settings.model, settings.backend, threads=settings.threads)
    return Policy(backend)


def wait_for_fresh_frames(camera: Any, after_ns: int, timeout_s: float = 5.0) -> None:
    """Block until the camera process delivers a frame set captured after `after_ns`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = camera.latest()
        if latest is not None and min(latest.host_timestamps_ns.values()) > after_ns:
            return
        time.sleep(0.01)
    raise RuntimeError(f"the camera process delivered no frame for {timeout_s:g} s")


def grasp_attempts(openness: list[float], opened: float = 0.9, closed: float = 0.7) -> int:
    """How often the hand closed (measured openness from above `opened` to below `closed`;
    the band ignores finger jitter). A hand closed on a 4 cm cube stops at 0.3-0.6, so a pick
    that grasps once counts 1; 2 or more means it opened again after a missed grasp, retried.
    A hand that starts closed has not grasped until it opens and closes."""
    return len(closing_indices(openness, opened, closed))


def closing_indices(openness: list[float], opened: float = 0.9, closed: float = 0.7) -> list[int]:
    """The samples at which the hand closed (see `grasp_attempts`)."""
    indices, is_open = [], bool(openness) and openness[0] >= closed
    for i, value in enumerate(openness):
        if is_open and value < closed:
            indices.append(i)
            is_open = False
        elif not is_open and value > opened:
            is_open = True
    return indices


def first_close_offset(recorder: PathRecorder, cube: dict[str, Any]) -> dict[str, Any] | None:
    """Where the hand was when it first closed, from the target cube's centre at the start (m):
    in the tool's frame (x, y: across the hand; z: along the tool axis, down), as height above
    the cube's centre (base z), and the hand's yaw off the cube's faces; None if it never
    closed. Says whether a missed grasp was placed off, too high, turned, or still moving."""
    closes = closing_indices(recorder.grippers)
    if not closes:
        return None
    from aimg.robot.sim.tasks import grasp_yaw

    i = closes[0]  # >= 1: a hand that starts closed has not grasped yet
    t_ns, position = recorder.positions[i]
    t_before, before = recorder.positions[i - 1]
    rotation = recorder.rotations[i]
    offset = position - np.asarray(cube["position"], dtype=np.float64)
    in_tool = rotation.T @ offset
    speed = float(np.linalg.norm(position - before) / max((t_ns - t_before) / 1e9, 1e-6))
    yaw = math.atan2(rotation[1, 0], rotation[0, 0])  # top-down tool: its x axis in the base
    yaw_error = yaw - grasp_yaw(float(cube["yaw"]), yaw)  # the nearest of the cube's 4 faces
    return {
        "tool_xyz_m": [float(v) for v in in_tool],
        "yaw_error_deg": math.degrees(yaw_error),
        "horizontal_m": float(np.linalg.norm(offset[:2])),
        "height_m": float(offset[2]),
        "speed_m_s": speed,
    }


def cube_track(recorder: PathRecorder, cube: dict[str, Any]) -> dict[str, Any] | None:
    """How the target cube moved (m): its highest and its last lift above where it started, and
    how far across the table it had been pushed when the hand first closed. Tells a cube never
    lifted from one lifted and dropped, and a grasp placed off from one that shoved the cube
    away on the way down (`first_close` is measured from where the cube started)."""
    if not recorder.cube_positions:
        return None
    start = np.asarray(cube["position"], dtype=np.float64)
    track = np.asarray(recorder.cube_positions)
    lift = track[:, 2] - start[2]
    closes = closing_indices(recorder.grippers)
    pushed = float(np.linalg.norm(track[closes[0], :2] - start[:2])) if closes else None
    return {
        "peak_lift_m": float(lift.max()),
        "final_lift_m": float(lift[-1]),
        "pushed_at_close_m": pushed,
    }


def _score(supervisor, servo, scene, scheduler, index: int, seed: int) -> dict[str, Any]:
    state = servo.state()
    cube = np.asarray(supervisor.target_cube_position(), dtype=np.float64)
    tcp = np.asarray(state.tool_pose)[:3, 3]
    records = scheduler.records
    from aimg.robot.sim.tasks import ReachTask

    hover = cube + np.array([0.0, 0.0, ReachTask.hover_m])  # where the reach expert hovers
    return {
        "episode": index,
        "seed": seed,
        "instruction": scene["instruction"],
        "success": bool(supervisor.success()),
        # the arm's latched error at the end (a C31 collision fails a pick that lifted)
        "arm_error": state.error_name if state.error_code else None,
        "final_xy_error_m": float(np.linalg.norm(tcp[:2] - cube[:2])),
        "final_height_above_cube_m": float(tcp[2] - cube[2]),
        # aimg eval's reading: within 3 cm of the point the expert hovers at
        "final_hover_error_m": float(np.linalg.norm(tcp - hover)),
        "final_action": matrix_to_action(np.asarray(state.tool_pose), state.gripper).tolist(),
        "replans": len(records),
        "latency_s": [r.latency_s for r in records],
        "seam_position_m": [r.seam_position_m for r in records if np.isfinite(r.seam_position_m)],
        "seam_velocity_m_s": [
            r.seam_velocity_m_s for r in records if np.isfinite(r.seam_velocity_m_s)
        ],
        "dropped_invalid": sum(r.dropped_invalid for r in records),
        "stopped": scheduler.stopped_reason,
        "breakdown": [latency_breakdown(r) for r in records],
    }


def latency_breakdown(record) -> dict[str, float]:
    """Where one plan's time went (seconds): frame capture to planning start, preprocessing,
    encoding (frames, cameras, text, prefix), sampling (the denoiser calls), decoding (action
    segments, then poses), hand-over to the servo loop and its first command; planner
    overhead is everything that is not the model (preprocess, pose decoding, scheduling)."""
    t = record.timings
    steps = float(sum(t.get("steps", [])))
    encode = sum(float(t.get(k, 0.0)) for k in ("encode", "cameras", "text", "prefix"))
    decode = float(t.get("decode", 0.0)) + float(t.get("decode_actions", 0.0))
    out = {
        "capture_s": (record.started_ns - record.observation_ns) / 1e9,
        "preprocess_s": float(t.get("preprocess", 0.0)),
        "encode_s": encode,
        "sampling_s": steps,
        "decode_s": decode,
        "planner_overhead_s": float(t.get("policy_total", 0.0))
        - steps
        - encode
        - float(t.get("decode", 0.0)),
        "ready_to_submit_s": (record.submit_ns - record.ready_ns) / 1e9
        if record.submit_ns
        else 0.0,
    }
    if record.first_command_ns is not None and record.submit_ns:
        out["submit_to_first_command_s"] = (record.first_command_ns - record.submit_ns) / 1e9
    return out


def _summary(settings, results, servo, camera, violations, num_commands) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latency_s"]]
    seams_p = [x for r in results for x in r["seam_position_m"]]
    seams_v = [x for r in results for x in r["seam_velocity_m_s"]]
    errors = [r["final_xy_error_m"] for r in results]
    hover = [r["final_hover_error_m"] for r in results]
    events: dict[str, int] = {}
    messages: dict[str, list[str]] = {}
    for event in servo.events():
        events[event.kind] = events.get(event.kind, 0) + 1
        seen = messages.setdefault(event.kind, [])
        if event.message not in seen and len(seen) < 5:
            seen.append(event.message)
    return {
        "settings": _plain(
            {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
        ),
        "episodes": len(results),
        "success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        "final_xy_error_median_m": float(np.median(errors)) if errors else None,
        "final_hover_error_median_m": float(np.median(hover)) if hover else None,
        "within_3cm_of_hover_rate": float(np.mean([h < 0.03 for h in hover])) if hover else 0.0,
        "plan_latency_p50_s": percentile(latencies, 50),
        "plan_latency_p95_s": percentile(latencies, 95),
        "replans_per_episode": float(np.mean([r["replans"] for r in results])) if results else 0,
        # pick: episodes whose hand closed more than once (reopened after a missed grasp)
        "regrasp_episodes": sum(r["grasps"] > 1 for r in results),
        "regrasp_successes": sum(r["grasps"] > 1 and r["success"] for r in results),
        "seam_position_p50_m": percentile(seams_p, 50),
        "seam_position_p95_m": percentile(seams_p, 95),
        "seam_velocity_p50_m_s": percentile(seams_v, 50),
        "seam_velocity_p95_m_s": percentile(seams_v, 95),
        "latency_breakdown_p50_s": _median_breakdown(results),
        "control": _plain(servo.stats()),
        "cameras": _plain(camera.stats()),
        "safety_events": events,
        "safety_event_examples": messages,
        "commands_checked": num_commands,
        "out_of_limit_commands": len(violations),
        "violations": violations[:10],
        "per_episode": results,
    }


def _median_breakdown(results: list[dict[str, Any]]) -> dict[str, float]:
    rows = [b for r in results for b in r["breakdown"]]
    keys = sorted({k for b in rows for k in b})
    return {k: float(np.median([b[k] for b in rows if k in b])) for k in keys} if rows else {}


def _write_video(path: Path, recorder: PathRecorder, cameras: dict, result: dict) -> None:
    from aimg.runtime.video import VideoWriter, draw_overlay, tile

    path.parent.mkdir(parents=True, exist_ok=True)
    times = np.array([t for t, _ in recorder.positions], dtype=np.int64)
    path_points = np.array([p for _, p in recorder.positions]).reshape(-1, 3)
    with VideoWriter(path, fps=1.0 / recorder.period_s) as writer:
        for images, stamp in recorder.frames:
            plan = next((p for t, p in reversed(recorder.plans) if t <= stamp), None)
            executed = path_points[times <= stamp]
            views = []
            for name, image in images.items():
                frame = image.copy()
                if len(executed) > 1:  # where the tool went so far (blue)
                    frame = draw_overlay(frame, cameras[name], executed, (0, 160, 255))
                if plan is not None:  # the newest plan's waypoints (yellow)
                    frame = draw_overlay(frame, cameras[name], plan, (255, 230, 0), dot_radius=1.5)
                views.append(frame)
            writer.append(tile(views))


def _plain(value: Any) -> Any:
    """Dataclasses and NumPy values -> JSON-friendly data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

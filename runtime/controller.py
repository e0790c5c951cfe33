"""The daemon's controller: the cell's processes, the task state machine and its supervision.

    idle -> running -> stopping -> idle        (a task ends: time out, success, POST /stop,
                                                dead-man, planner death)
    any  -> estopped  (POST /estop; left only by POST /reset)
    any  -> fault     (the camera or servo process died; POST /reset restarts it)
    any  -> shutting_down  (SIGTERM / SIGINT)

Threads of the daemon process: the API (uvicorn), one task thread at a time (the `Scheduler`'s
replan loop), the supervisor (20 Hz: watchdog heartbeats to the servo loop, process health,
safety events, the dead-man) and the recorder (camera frames and arm states into the episode and
onto the live page). The camera, servo and planner each run in their own process; the planner
is restarted when it dies, the others put the cell into `fault`.

Every way a task ends goes through `_end_task(outcome, reason)`: the servo loop is told to hold
first (under the gate lock, so a plan that was in flight cannot start the arm again), then the
episode is committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aimg.config import ConfigError
from aimg.geometry import matrix_to_action
from aimg.runtime.cell_config import CellConfig
from aimg.runtime.daemon_log import log_event
from aimg.runtime.daemon_metrics import DaemonMetrics
from aimg.runtime.live_feed import frame_message, plan_strips
from aimg.runtime.planner_process import PlannerDied, PlannerProcess
from aimg.runtime.sim_run import wait_for_fresh_frames

log = logging.getLogger("aimg.daemon")

OUTCOMES = ("succeeded", "timed_out", "stopped", "estopped", "interrupted", "failed")
#: How long a simulated reach must hold its success before the task ends early.
SUCCESS_HOLD_S = 1.0
EVENT_HISTORY = 20


class ControllerError(Exception):
    """A request the controller refuses; `status` is the HTTP code the API answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Task:
    id: str
    instruction: str
    max_duration_s: float
    deadman_s: float | None
    started_unix: float = field(default_factory=time.time)
    started_ns: int = field(default_factory=time.monotonic_ns)
    state: str = "running"  # running | stopping | ended
    plans: int = 0
    outcome: str | None = None
    reason: str | None = None
    success: bool | None = None
    episode: str | None = None
    scene: dict | None = None
    keepalive_ns: int = field(default_factory=time.monotonic_ns)
    ended_unix: float | None = None

    def elapsed_s(self) -> float:
        end = self.ended_unix if self.ended_unix is not None else time.time()
        return end - self.started_unix

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instruction": self.instruction,
            "state": self.state,
            "started_unix": self.started_unix,
            "elapsed_s": round(self.elapsed_s(), 3),
            "max_duration_s": self.max_duration_s,
            "deadman_s": self.deadman_s,
            "plans": self.plans,
            "outcome": self.outcome,
            "reason": self.reason,
            "success": self.success,
            "episode": self.episode,
        }


class EventBus:
    """Fan-out of live events to SSE clients on the API's event loop (thread-safe publish)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()

    @property
    def listeners(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        entry = (asyncio.get_running_loop(), asyncio.Queue(self.capacity))
        with self._lock:
            self._subscribers.add(entry)
        return entry

    def unsubscribe(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue]) -> None:
        with self._lock:
            self._subscribers.discard(entry)

    def publish(self, name: str, data: Any) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_offer, queue, (name, data))
            except RuntimeError:  # the loop closed
                self.unsubscribe((loop, queue))


def _offer(queue: asyncio.Queue, item: tuple[str, Any]) -> None:
    """A slow client loses its oldest events, never blocks the cell."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class _GatedServo:
    """What the scheduler sees of the servo: submissions stop the instant the task stops."""

    def __init__(self, controller: Controller, task: Task) -> None:
        self._controller, self._task = controller, task
        self._servo = controller.servo

    def submit(self, waypoints: Any) -> None:
        with self._controller._gate:
            if self._task.state == "running":
                self._servo.submit(waypoints)

    def hold(self, reason: str) -> None:
        self._servo.hold(reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._servo, name)


class _PlanTap:
    """Forwards `plan()` to the planner and keeps the last plan (the scheduler keeps only
    waypoints; the episode and the page want the action images too)."""

    def __init__(self, planner: PlannerProcess) -> None:
        self._planner = planner
        self.last: Any = None

    @property
    def dt_s(self) -> float:
        return self._planner.dt_s

    @property
    def spec(self) -> Any:
        return self._planner.spec

    def plan(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self._planner.plan(*args, **kwargs)
        return self.last


class Controller:
    """Owns the cell for `aimg daemon`; the API calls `start_task`, `stop`, `estop`, `reset`,
    `keepalive`, `status`, `health`."""

    def __init__(self, config: CellConfig) -> None:
        self.config = config
        self.metrics = DaemonMetrics()
        self.events = EventBus()
        self.state = "starting"
        self.started_unix = time.time()
        self.last_error: str | None = None
        self.task: Task | None = None
        self.last_task: Task | None = None
        self._task_count = 0
        self._next_scene_seed = config.devices.sim.scene_seed
        self._lock = threading.RLock()  # state, task
        self._gate = threading.Lock()  # servo submissions vs. stops
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._task_thread: threading.Thread | None = None
        self._safety: collections.deque[dict] = collections.deque(maxlen=EVENT_HISTORY)
        self._latencies: collections.deque[float] = collections.deque(maxlen=200)
        self._plan_times: collections.deque[float] = collections.deque(maxlen=200)
        self._last_plan_ready_ns: int | None = None
        self._plan_points = np.zeros((0, 3))
        self._path: collections.deque[np.ndarray] = collections.deque(maxlen=2000)
        self._recording: Any = None
        self._rec_lock = threading.Lock()  # the recording vs. its commit; servo event drains
        self._scheduler: Any = None
        self._servo_stats: dict[str, Any] = {}
        self._camera_stats: dict[str, Any] = {}
        self._process_state = {"camera": "stopped", "servo": "stopped"}
        self._restarts = {"camera": 0, "servo": 0}
        self.cell: Any = None
        self.supervisor: Any = None
        self.camera: Any = None
        self.servo: Any = None
        self.poses: Any = None
        self.planner = PlannerProcess(config.model.path, config.model.backend, config.model.threads)
        self._planner_restart: threading.Thread | None = None
        self.calibration: Any = None  # aimg.calib.calibration_file.CalibrationFile, if any
        self._drift_references: dict[str, np.ndarray] = {}
        self._calibration_status: dict[str, Any] = {"checked": False, "ok": None}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Controller:
        """Open the devices and start camera, servo and planner; the cell is then idle."""
        from aimg.runtime.safety import SafetyLimits

        cfg = self.config
        self.limits = SafetyLimits.from_dict(cfg.safety) if cfg.safety else SafetyLimits()
        self._clean_recordings()
        self._open_devices()
        t0 = time.monotonic()
        self.planner.start()
        log_event(
            log,
            logging.INFO,
            "planner ready",
            pid=self.planner.pid,
            backend=self.planner.info.get("backend"),
            load_s=round(time.monotonic() - t0, 2),
        )
        self._check_views()
        self._prepare_drift_check()
        for target, name in ((self._supervise, "supervisor"), (self._record, "recorder")):
            thread = threading.Thread(target=target, name=f"aimg-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._set_state("idle")
        return self

    def _open_devices(self) -> None:
        from aimg.runtime.scheduler import PoseHistory

        devices = self.config.devices
        if devices.kind == "xarm":
            self._open_real_devices()
        else:
            self._open_sim_devices()
        self._start_camera()
        self._start_servo()
        self.poses = PoseHistory(self.servo).start()

    def _open_real_devices(self) -> None:
        """An xArm through its SDK (owned by the servo process) and RealSense cameras (owned by
        the camera process), live or replayed from a recording, placed by the calibration."""
        from aimg.calib.calibration_file import CalibrationFileError, read_calibration
        from aimg.robot.realsense.rig import RealSenseRig
        from aimg.runtime.servo import connect_xarm

        devices = self.config.devices
        where = f"{self.config.source}: calibration"
        try:
            calibration = read_calibration(self.config.calibration)
            if devices.cameras:
                calibration.require(
                    [c.name for c in devices.cameras], {c.name: c.serial for c in devices.cameras}
                )
        except (CalibrationFileError, OSError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        self.calibration = calibration
        poses = calibration.cameras()
        options = {"intrinsics": devices.camera_intrinsics, "stale_timeout_s": 0.5}
        if devices.camera_recording is not None:
            self._rig_factory = functools.partial(
                RealSenseRig.from_recording, devices.camera_recording, poses, loop=True, **options
            )
        else:
            self._rig_factory = functools.partial(
                RealSenseRig,
                devices.cameras,
                poses,
                exposure=devices.camera_exposure,
                white_balance=devices.camera_white_balance,
                **options,
            )
        self._arm_factory = functools.partial(connect_xarm, devices.xarm)

    def _open_sim_devices(self) -> None:
        from aimg.robot.sim.mirror import make_sim_cell
        from aimg.runtime.servo import connect_remote_arm

        sim = self.config.devices.sim
        size = {"views": sim.views, "height": sim.image_size, "width": sim.image_size}
        if sim.arm == "xarm-sdk":
            from aimg.robot.xarm.emulator import make_xarm_sim_cell, xarm_config_for_cell
            from aimg.runtime.servo import connect_xarm

            self.cell, host = make_xarm_sim_cell(**size)
            self._arm_factory = functools.partial(connect_xarm, xarm_config_for_cell(host))
        else:
            self.cell = make_sim_cell(**size)
            self._arm_factory = functools.partial(connect_remote_arm, self.cell.address)
        self.supervisor = self.cell.supervisor()
        self.supervisor.start_episode(sim.task, self._next_scene_seed)  # something on the table
        self._rig_factory = self.cell.rig_factory()
        if self.config.calibration is not None:  # the simulator's cameras are exact, but a
            # file with scene references lets the daemon catch a knocked sim camera
            from aimg.calib.calibration_file import CalibrationFileError, read_calibration
            from aimg.robot.sim.cameras import default_camera_specs

            try:
                self.calibration = read_calibration(self.config.calibration)
                self.calibration.require([spec.name for spec in default_camera_specs(sim.views)])
            except CalibrationFileError as exc:
                raise ConfigError(f"{self.config.source}: calibration: {exc}") from exc

    def _start_camera(self) -> None:
        from aimg.runtime.camera_process import CameraProcess

        self.camera = CameraProcess(self._rig_factory, fps=self.config.rates.camera_fps).start()
        self._process_state["camera"] = "running"
        log_event(log, logging.INFO, "camera process running", views=list(self.camera.view_names))

    def _start_servo(self) -> None:
        from aimg.runtime.servo import ServoProcess

        latency = self.calibration.latency if self.calibration is not None else None
        self.servo = ServoProcess(
            self._arm_factory,
            self.limits,
            rate_hz=self.config.rates.servo_hz,
            blend_s=self.config.scheduler.blend_s,
            gripper_ramp_s=self.config.scheduler.gripper_ramp_s,
            # the arm's measured command -> motion delay (`aimg calib latency`) is led away
            command_lead_s=latency.arm_s if latency is not None else 0.0,
        ).start()
        if self.poses is not None:
            self.poses.servo = self.servo
        self._process_state["servo"] = "running"
        log_event(log, logging.INFO, "servo process running", rate_hz=self.servo.rate_hz)

    def _check_views(self) -> None:
        views = self.planner.info.get("views")
        available = list(self.camera.view_names)
        wanted = views or available[: self.planner.spec.views]
        missing = [v for v in wanted if v not in available]
        if missing or len(wanted) != self.planner.spec.views:
            raise ConfigError(
                f"{self.config.source}: the model takes views {wanted} but the cell's cameras are "
                f"{available}: name the cameras as the model was trained, or set devices.sim.views"
            )
        self.view_names = list(wanted)

    def _prepare_drift_check(self) -> None:
        """Load the static-scene references of the cameras the model uses (a file without them
        is a config error: the check would silently not run)."""
        if self.calibration is None or not self.config.drift_check.enabled:
            reason = (
                "no calibration file (the simulator's cameras are exact)"
                if self.calibration is None
                else "drift_check.enabled is false"
            )
            self._calibration_status = {"checked": False, "ok": None, "summary": reason}
            return
        from aimg.calib.calibration_file import CalibrationFileError
        from aimg.calib.scene_drift import load_reference

        try:
            self._drift_references = {
                name: load_reference(self.calibration, name) for name in self.view_names
            }
        except CalibrationFileError as exc:
            raise ConfigError(
                f"{self.config.source}: drift_check: {exc} (or set drift_check.enabled: false "
                "to run without the check)"
            ) from exc
        self._calibration_status = {
            "checked": False,
            "ok": None,
            "summary": "checked before every task",
            "file": str(self.config.calibration),
        }
        if self.calibration.latency is not None:
            self._calibration_status["latency"] = self.calibration.latency.to_dict()

    def check_calibration(self) -> dict[str, Any]:
        """Compare every camera's newest frame with its static-scene reference; raise 409
        naming the cameras that moved. The verdict is kept for `status()["calibration"]`."""
        if not self._drift_references:
            return self._calibration_status
        from aimg.calib.calibration_file import now_iso
        from aimg.calib.drift import DriftReport
        from aimg.calib.scene_drift import SceneDriftThresholds, assess_scene

        frames = self.camera.latest()
        if frames is None:
            raise ControllerError(503, "no camera frame yet to check the calibration: retry")
        thresholds = SceneDriftThresholds(max_view_deg=self.config.drift_check.max_view_deg)
        cameras = self.calibration.cameras()
        t0 = time.monotonic()
        report = DriftReport(
            {
                name: assess_scene(
                    name, reference, frames.images[name], float(cameras[name].K[0, 0]), thresholds
                )
                for name, reference in self._drift_references.items()
            }
        )
        status = {
            "checked": True,
            "ok": report.ok,
            "summary": report.summary(),
            "cameras": [v.to_dict() for v in report.verdicts.values()],
            "at": now_iso(),
            "check_s": round(time.monotonic() - t0, 3),
            "file": str(self.config.calibration),
        }
        if self.calibration.latency is not None:
            status["latency"] = self.calibration.latency.to_dict()
        self._calibration_status = status
        self.events.publish("calibration", status)
        if not report.ok:
            self.last_error = f"calibration check refused the task: {report.summary()}"
            log_event(log, logging.WARNING, "calibration check failed", summary=report.summary())
            raise ControllerError(409, self.last_error)
        return status

    def _camera_latency(self) -> dict[str, float]:
        latency = self.calibration.latency if self.calibration is not None else None
        return dict(latency.camera_s) if latency is not None else {}

    def knock_camera(
        self, name: str, translation_m: list[float], rotation_deg: list[float]
    ) -> dict[str, Any]:
        """Sim only: bump camera `name` (its renders move, its calibration does not), as a
        person knocking a tripod; zeros put it back."""
        if self.supervisor is None:
            raise ControllerError(404, "only a simulated cell's cameras can be knocked")
        names = list(self.camera.view_names)
        if name not in names:
            raise ControllerError(404, f"no camera {name!r}; the cell has {names}")
        rotation = [float(np.radians(v)) for v in rotation_deg]
        self.supervisor.knock_camera(name, [float(v) for v in translation_m], rotation)
        log_event(
            log,
            logging.WARNING,
            "sim camera knocked",
            camera=name,
            translation_m=translation_m,
            rotation_deg=rotation_deg,
        )
        return {"camera": name, "translation_m": translation_m, "rotation_deg": rotation_deg}

    def _clean_recordings(self) -> None:
        if not self.config.recording.enabled:
            return
        from aimg.episodes import remove_stale_temp_dirs

        root = self.config.recording.dir
        root.mkdir(parents=True, exist_ok=True)
        # Nothing of this process writes yet: a directory with its PID is from an earlier life.
        removed = remove_stale_temp_dirs(root, stale_pids={os.getpid()})
        if removed:
            log_event(
                log,
                logging.WARNING,
                "removed unfinished episodes of an earlier run (it was killed mid-task)",
                directories=[str(p) for p in removed],
            )

    def begin_shutdown(self, reason: str) -> None:
        """Stop the arm now (signal handlers call this); `close()` finishes the job."""
        with self._lock:
            if self.state == "shutting_down":
                return
            task = self.task
            self._set_state("shutting_down")
        log_event(log, logging.WARNING, "shutting down", reason=reason)
        if task is not None:
            self._request_stop(task, "interrupted", reason)
        elif self.servo is not None and self.servo.alive:
            self.servo.hold(reason)

    def close(self, timeout_s: float = 30.0) -> None:
        """Safe stop, commit the episode, stop every process (idempotent)."""
        self.begin_shutdown("daemon closing")
        thread = self._task_thread
        if thread is not None:
            thread.join(timeout_s)
        self._closing.set()
        for thread in self._threads:
            thread.join(5.0)
        if self._planner_restart is not None:
            self._planner_restart.join(timeout_s)
        for closer in (
            self.planner.close,
            lambda: self.poses.close() if self.poses else None,
            lambda: self.servo.close() if self.servo else None,
            lambda: self.camera.close() if self.camera else None,
            lambda: self.cell.close() if self.cell else None,
        ):
            try:
                closer()
            except Exception:  # keep closing the rest
                log.exception("error while closing")
        log_event(log, logging.INFO, "daemon stopped")

    # -- requests --------------------------------------------------------------------------

    def start_task(
        self, instruction: str, max_duration_s: float | None = None, deadman_s: float | None = None
    ) -> dict[str, Any]:
        limit = self.config.tasks.limit_duration_s
        duration = self.config.tasks.max_duration_s if max_duration_s is None else max_duration_s
        if not 0.0 < duration <= limit:
            raise ControllerError(
                422, f"max_duration_s must be in (0, {limit:g}] s (tasks.limit_duration_s)"
            )
        if self.state == "idle":  # a busy or faulted cell is refused below, for that reason
            self.check_calibration()
        with self._lock:
            if self.state == "estopped":
                raise ControllerError(409, "the cell is e-stopped: POST /reset first")
            if self.state == "fault":
                raise ControllerError(
                    409, f"the cell is in fault ({self.last_error}): POST /reset first"
                )
            if self.state != "idle":
                busy = f" ({self.task.id}: {self.task.instruction!r})" if self.task else ""
                raise ControllerError(
                    409, f"the cell is {self.state}{busy}: POST /stop first, or wait"
                )
            if self.planner.state != "ready" or not self.planner.alive:
                raise ControllerError(
                    503, f"the planner is {self.planner.state} (restarting?): try again shortly"
                )
            self._task_count += 1
            task = Task(
                id=f"task-{self._task_count:06d}",
                instruction=instruction,
                max_duration_s=float(duration),
                deadman_s=deadman_s,
            )
            self.task = task
            self._set_state("running")
            self._task_thread = threading.Thread(
                target=self._run_task, args=(task,), name=f"aimg-{task.id}", daemon=True
            )
            self._task_thread.start()
        log_event(
            log,
            logging.INFO,
            "task started",
            task=task.id,
            instruction=instruction,
            max_duration_s=duration,
            deadman_s=deadman_s,
        )
        self.events.publish("task", task.to_json())
        return task.to_json()

    def stop(self, reason: str = "stopped by request") -> dict[str, Any]:
        with self._lock:
            task = self.task
        if task is not None:
            self._request_stop(task, "stopped", reason)
        elif self.servo is not None and self.servo.alive:
            self.servo.hold(reason)
        return {"state": self.state, "stopped": task.id if task else None}

    def estop(self, reason: str = "e-stop by request") -> dict[str, Any]:
        with self._gate:
            if self.servo is not None and self.servo.alive:
                self.servo.estop(reason)
            with self._lock:
                task = self.task
                if task is not None and task.state == "running":
                    task.state = "stopping"
                    task.outcome, task.reason = "estopped", reason
                if self.state != "shutting_down":
                    self._set_state("estopped")
        log_event(log, logging.WARNING, "e-stop", reason=reason, task=task.id if task else None)
        return {"state": self.state}

    def reset(self) -> dict[str, Any]:
        with self._lock:
            if self.task is not None:
                raise ControllerError(409, f"{self.task.id} is still ending: wait, then reset")
            if self.state in ("shutting_down", "starting"):
                raise ControllerError(409, f"the daemon is {self.state}")
            previous = self.state
        try:
            if self.camera is None or not self.camera.alive:
                self._restart("camera", self._start_camera, self.camera)
            if self.servo is None or not self.servo.alive:
                self._restart("servo", self._start_servo, self.servo)
        except Exception as exc:
            self._fault(f"reset could not restart a process: {exc}")
            raise ControllerError(503, f"reset failed: {exc}") from exc
        self.servo.reset()
        with self._lock:
            self.last_error = None if previous != "fault" else self.last_error
            self._set_state("idle")
        log_event(log, logging.INFO, "reset", previous=previous)
        return {"state": self.state}

    def keepalive(self) -> dict[str, Any]:
        with self._lock:
            task = self.task
            if task is None or task.deadman_s is None or task.state != "running":
                raise ControllerError(409, "no running task asked for a dead-man (deadman_s)")
            task.keepalive_ns = time.monotonic_ns()
            return {"task": task.id, "deadman_remaining_s": task.deadman_s}

    # -- status ----------------------------------------------------------------------------

    def status(self, servo_window_s: float | None = None) -> dict[str, Any]:
        """The Status of docs/daemon.md; servo timing over the last `servo_window_s` seconds
        when given (fresh), else the last 10 s as refreshed twice a second."""
        now_ns = time.monotonic_ns()
        with self._lock:
            task, last = self.task, self.last_task
            state = self.state
        latencies = list(self._latencies)
        plan_times = [t for t in self._plan_times if t > time.monotonic() - 10.0]
        arm: dict[str, Any] | None = None
        servo_state = None
        if self.servo is not None:
            try:
                servo_state = self.servo.state()
            except RuntimeError:  # not started (yet)
                servo_state = None
        if servo_state is not None:
            pose = np.asarray(servo_state.tool_pose)
            arm = {
                "position_m": [round(float(v), 5) for v in pose[:3, 3]],
                "action": [round(float(v), 5) for v in matrix_to_action(pose, servo_state.gripper)],
                "gripper": round(float(servo_state.gripper), 4),
                "error_code": int(servo_state.error_code),
                "mode": servo_state.mode,
            }
        stats = self._servo_stats
        if servo_window_s is not None and self.servo is not None and self.servo.alive:
            stats = {**stats, **self.servo.stats(window_s=servo_window_s)}
        return {
            "state": state,
            "task": task.to_json() if task else None,
            "last_task": last.to_json() if last else None,
            "plan_age_s": (now_ns - self._last_plan_ready_ns) / 1e9
            if self._last_plan_ready_ns
            else None,
            "latency_s": {
                "last": latencies[-1],
                "p50": float(np.percentile(latencies[-50:], 50)),
                "p95": float(np.percentile(latencies[-50:], 95)),
            }
            if latencies
            else None,
            "rates_hz": {
                "servo": stats.get("rate_measured_hz"),
                "camera": self._camera_stats.get("fps"),
                "plans": len(plan_times) / 10.0,
            },
            "servo": {
                "mode": servo_state.mode if servo_state else None,
                "jitter_ms_p99": stats.get("jitter_ms", {}).get("p99"),
                "overruns": stats.get("overruns"),
                "realtime": stats.get("realtime"),
            },
            "arm": arm,
            "processes": self._processes(),
            "last_error": self.last_error,
            "events": list(self._safety),
            "model": {
                "path": str(self.config.model.path),
                "backend": self.planner.info.get("backend"),
            },
            "uptime_s": round(time.time() - self.started_unix, 3),
            "episodes_dir": str(self.config.recording.dir)
            if self.config.recording.enabled
            else None,
            "calibration": self._calibration_status,
        }

    def _processes(self) -> dict[str, dict[str, Any]]:
        planner = self.planner
        out = {
            "planner": {
                "alive": planner.alive,
                "pid": planner.pid,
                "restarts": planner.restarts,
                "state": planner.state,
            }
        }
        for name, proc in (("camera", self.camera), ("servo", self.servo)):
            process = getattr(proc, "_process", None)
            out[name] = {
                "alive": bool(proc is not None and proc.alive),
                "pid": process.pid if process is not None else None,
                "restarts": self._restarts[name],
                "state": self._process_state[name],
            }
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        processes = {name: p["alive"] for name, p in self._processes().items()}
        ok = all(processes.values()) and self.state not in ("fault", "starting", "shutting_down")
        return ok, {"ok": ok, "state": self.state, "processes": processes}

    # -- internals -------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        with self._lock:
            changed = state != self.state
            self.state = state
        self.metrics.set_state(state)
        if changed:
            log_event(log, logging.INFO, "state", state=state)
            self.events.publish("state", {"state": state})

    def _fault(self, reason: str) -> None:
        with self._lock:
            self.last_error = reason
            task = self.task
            if self.state != "shutting_down":
                self._set_state("fault")
        log_event(log, logging.ERROR, "fault", reason=reason)
        if task is not None:
            self._request_stop(task, "failed", reason)

    def _request_stop(self, task: Task, outcome: str, reason: str) -> None:
        """Hold the arm now and let the task thread wind down (it commits the episode)."""
        with self._gate:
            with self._lock:
                if task.state != "running":
                    return
                task.state = "stopping"
                task.outcome, task.reason = outcome, reason
                if self.state == "running":
                    self._set_state("stopping")
            if self.servo is not None and self.servo.alive:
                with contextlib.suppress(RuntimeError):
                    self.servo.hold(reason)
        log_event(log, logging.INFO, "task stopping", task=task.id, outcome=outcome, reason=reason)

    def _restart(self, name: str, start: Any, old: Any) -> None:
        if old is not None:
            try:
                old.close()
            except Exception:
                log.exception("closing the dead %s process", name)
        self._restarts[name] += 1
        self.metrics.restarts.labels(name).inc()
        self._process_state[name] = "restarting"
        start()
        log_event(log, logging.WARNING, f"{name} process restarted", restarts=self._restarts[name])

    # -- the task thread -------------------------------------------------------------------

    def _run_task(self, task: Task) -> None:
        from aimg.runtime.scheduler import Scheduler, SchedulerConfig

        tap = _PlanTap(self.planner)
        try:
            self._lay_out_scene(task)
            self._path.clear()
            self._plan_points = np.zeros((0, 3))
            self._recording = self._new_recording(task)
            cfg = self.config.scheduler
            scheduler = Scheduler(
                tap,
                self.camera,
                _GatedServo(self, task),
                task.instruction,
                SchedulerConfig(
                    join=cfg.join,
                    blend_s=cfg.blend_s,
                    ensemble_s=cfg.ensemble_s,
                    own_grasp_height=cfg.own_grasp_height,
                    replan_period_s=cfg.replan_period_s,
                    gripper_settle_s=cfg.gripper_settle_s,
                    camera_latency_s=self._camera_latency(),
                ),
                seed=self._task_count * 1000,
                poses=self.poses,
            )
            self._scheduler = scheduler
            success_since: float | None = None
            next_judge = 0.0
            while task.state == "running":
                elapsed = (time.monotonic_ns() - task.started_ns) / 1e9
                if elapsed >= task.max_duration_s:
                    self._request_stop(
                        task, "timed_out", f"max_duration_s {task.max_duration_s:g} s reached"
                    )
                    break
                if self.supervisor is not None and task.scene is not None and elapsed >= next_judge:
                    next_judge = elapsed + 0.25
                    if self.supervisor.success():
                        success_since = success_since if success_since is not None else elapsed
                        if elapsed - success_since >= SUCCESS_HOLD_S:
                            self._request_stop(task, "succeeded", "the simulator judged success")
                            break
                    else:
                        success_since = None
                try:
                    record = scheduler.step(timeout_s=0.5)
                except PlannerDied as exc:
                    self._request_stop(task, "failed", f"{exc}: the arm holds; restarting it")
                    break
                except Exception as exc:  # any planner failure stops the arm, never the daemon
                    log.exception("planner failed")
                    self._request_stop(
                        task, "failed", f"planner failed: {type(exc).__name__}: {exc}"
                    )
                    break
                if scheduler.stopped_reason is not None:
                    self._request_stop(task, "failed", scheduler.stopped_reason)
                    break
                if record is not None and tap.last is not None:
                    self._on_plan(task, tap.last, record)
        except Exception as exc:
            log.exception("task failed")
            self._request_stop(task, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._finish_task(task)

    def _lay_out_scene(self, task: Task) -> None:
        """Sim only: a fresh scene whose target is the one asked for (when one is found)."""
        if self.supervisor is None:
            return
        from aimg.robot.sim.tasks import get_task

        sim = self.config.devices.sim
        text = task.instruction.strip().lower()
        kind = (
            "pick" if text.startswith("pick") else "reach" if text.startswith("reach") else sim.task
        )
        task_obj = get_task(kind)
        seed = self._next_scene_seed
        matched = False
        for candidate in range(self._next_scene_seed, self._next_scene_seed + 400):
            scene = task_obj.sample_scene(np.random.default_rng(candidate))
            if task_obj.instruction(scene) == text:
                seed, matched = candidate, True
                break
        self._next_scene_seed = seed + 1
        with self._gate:
            if task.state != "running":
                return
            self.servo.pause("new task: the simulator lays out a scene and moves the arm there")
        time.sleep(0.05)  # a servo tick or more, so no command races the teleport
        info = self.supervisor.start_episode(kind, seed)
        with self._gate:
            if task.state != "running":  # stopped or e-stopped meanwhile: leave the latch set
                return
            self.servo.reset()
        wait_for_fresh_frames(self.camera, time.monotonic_ns())
        task.scene = {"task": kind, "seed": seed, "matched": matched, "objects": info["objects"]}
        if not matched:
            task.scene = None  # no judge for an instruction the simulator cannot lay out
            log_event(
                log,
                logging.WARNING,
                "no simulated scene matches the instruction: success is not judged",
                instruction=task.instruction,
                seed=seed,
            )
        task.started_ns = time.monotonic_ns()  # the clock starts once the scene stands

    def _new_recording(self, task: Task) -> Any:
        if not self.config.recording.enabled:
            return None
        from aimg.runtime.task_recording import TaskRecording

        cameras = {name: self.camera.cameras[name] for name in self.camera.view_names}
        return TaskRecording(
            self.config.recording.dir,
            task.instruction,
            (task.scene or {}).get("task", "daemon"),
            cameras,
            metadata={
                "task_id": task.id,
                "cell": self.config.name,
                "model": str(self.config.model.path),
                "scene": task.scene,
            },
        )

    def _on_plan(self, task: Task, plan: Any, record: Any) -> None:
        task.plans += 1
        latency = float(plan.latency_s)
        self._latencies.append(latency)
        self._plan_times.append(time.monotonic())
        self._last_plan_ready_ns = int(plan.ready_ns)
        self.metrics.plans.inc()
        self.metrics.plan_latency.observe(latency)
        valid = plan.waypoints.finite & (plan.waypoints.confidence > 0)
        self._plan_points = plan.waypoints.positions[valid]
        recording = self._recording
        if recording is not None:
            recording.add_plan(plan, submitted=int(record.submitted))
        if self.events.listeners:
            self.events.publish(
                "plan",
                {
                    "task_id": task.id,
                    "plan_id": int(plan.waypoints.plan_id),
                    "latency_s": round(latency, 4),
                    "waypoints": np.round(self._plan_points, 4).tolist(),
                    "action_images": plan_strips(plan.action_images, self.view_names),
                },
            )

    def _finish_task(self, task: Task) -> None:
        with self._gate, self._lock:
            if task.state == "running":  # ended without a request (should not happen)
                task.outcome, task.reason = "failed", "the task loop ended"
            task.state = "ended"
        if task.outcome != "estopped" and self.servo is not None and self.servo.alive:
            with contextlib.suppress(RuntimeError):
                self.servo.hold(f"{task.id} {task.outcome}: {task.reason}")
        time.sleep(0.3)  # let the arm settle before judging and closing the episode
        if task.scene is not None and self.supervisor is not None:
            try:
                task.success = bool(self.supervisor.success())
            except Exception as exc:
                log_event(log, logging.WARNING, "could not judge success", error=str(exc))
        if task.outcome == "timed_out" and task.success:
            task.outcome = "succeeded"
        self._scheduler = None
        with self._rec_lock:
            if self.servo is not None and self.servo.alive:
                self._drain_events_locked()  # the last commands and events go in
            recording, self._recording = self._recording, None
            if recording is not None:
                try:
                    path = recording.commit(task.outcome or "failed", task.success, task.reason)
                    task.episode = str(path) if path is not None else None
                    if path is not None:
                        self.metrics.episodes.inc()
                except Exception as exc:
                    log.exception("could not commit the episode")
                    self.last_error = f"episode of {task.id} not recorded: {exc}"
        task.ended_unix = time.time()
        self.metrics.tasks.labels(task.outcome or "failed").inc()
        with self._lock:
            self.last_task, self.task = task, None
            if self.state in ("running", "stopping"):
                self._set_state("idle")
        if task.outcome == "failed":
            self.last_error = task.reason
        log_event(
            log,
            logging.INFO,
            "task ended",
            task=task.id,
            outcome=task.outcome,
            reason=task.reason,
            success=task.success,
            plans=task.plans,
            episode=task.episode,
            elapsed_s=round(task.elapsed_s(), 2),
        )
        self.events.publish("task", task.to_json())

    # -- the supervisor thread -------------------------------------------------------------

    def _supervise(self) -> None:
        period = 0.05
        next_stats = 0.0
        while not self._closing.wait(period):
            try:
                self._supervise_once()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + 0.5
                    self._refresh_stats()
                    if self.events.listeners:
                        self.events.publish("status", self.status())
            except Exception:
                log.exception("supervisor iteration failed")

    def _supervise_once(self) -> None:
        camera, servo = self.camera, self.servo
        if camera is not None and not camera.alive and self._process_state["camera"] == "running":
            self._process_state["camera"] = "dead"
            self._fault("the camera process died: the arm holds (POST /reset restarts it)")
        if servo is not None and not servo.alive and self._process_state["servo"] == "running":
            self._process_state["servo"] = "dead"
            reason = servo.state().exit_reason or "no reason given"
            self._fault(f"the servo process stopped ({reason}): POST /reset restarts it")
        restarting = self._planner_restart is not None and self._planner_restart.is_alive()
        if self.planner.state in ("ready", "dead") and not self.planner.alive and not restarting:
            self._on_planner_death()
        if servo is not None and servo.alive:
            task, scheduler = self.task, self._scheduler
            if task is not None and task.state == "running" and scheduler is not None:
                silence = (time.monotonic_ns() - scheduler.last_active_ns) / 1e9
                planner_ok = silence < self.limits.max_planner_silence_s / 2
            else:
                planner_ok = self.planner.alive
            frame_age = camera.frame_age_s() if camera is not None and camera.alive else None
            with contextlib.suppress(RuntimeError):
                servo.heartbeat(frame_age_s=frame_age, planner_ok=planner_ok)
            self._drain_events()
        task = self.task
        if task is not None and task.state == "running":
            # Here, not only in the task thread: a plan in flight must not stretch the task.
            elapsed = (time.monotonic_ns() - task.started_ns) / 1e9
            if elapsed >= task.max_duration_s:
                self._request_stop(
                    task, "timed_out", f"max_duration_s {task.max_duration_s:g} s reached"
                )
        if task is not None and task.deadman_s is not None and task.state == "running":
            quiet = (time.monotonic_ns() - task.keepalive_ns) / 1e9
            if quiet > task.deadman_s:
                self._request_stop(
                    task,
                    "stopped",
                    f"dead-man: no POST /keepalive for {quiet:.2f} s (> deadman_s "
                    f"{task.deadman_s:g} s)",
                )

    def _on_planner_death(self) -> None:
        reason = self.planner.death_reason()
        self.planner.state = "dead"
        with self._lock:
            self.last_error = f"{reason}; restarting it"
            task = self.task
        log_event(log, logging.ERROR, "planner died", reason=reason, pid=self.planner.pid)
        if task is not None:
            self._request_stop(task, "failed", f"{reason}: the arm holds; restarting it")

        def restart() -> None:
            try:
                self.planner.restart()
                self.metrics.restarts.labels("planner").inc()
                log_event(
                    log,
                    logging.WARNING,
                    "planner restarted",
                    pid=self.planner.pid,
                    restarts=self.planner.restarts,
                )
            except Exception as exc:
                self._fault(f"the planner could not be restarted: {exc}")

        if not self._closing.is_set() and self.state != "shutting_down":
            self._planner_restart = threading.Thread(
                target=restart, name="aimg-planner-restart", daemon=True
            )
            self._planner_restart.start()

    def _drain_events(self) -> None:
        with self._rec_lock:
            self._drain_events_locked()

    def _drain_events_locked(self) -> None:
        events = self.servo.events()
        recording = self._recording
        for event in events:
            entry = {
                "time_unix": time.time() - (time.monotonic_ns() - event.time_ns) / 1e9,
                "kind": event.kind,
                "severity": event.severity,
                "message": event.message,
            }
            self._safety.append(entry)
            self.metrics.safety.labels(event.kind).inc()
            self.events.publish("safety", entry)
            if recording is not None:
                recording.add_event(event)
        if recording is not None:
            recording.add_commands(self.servo.drain_commands())
        else:
            self.servo.drain_commands()  # between tasks nothing keeps them

    def _refresh_stats(self) -> None:
        servo, camera = self.servo, self.camera
        alive = {"planner": self.planner.alive}
        if servo is not None and servo.alive:
            stats = servo.stats(window_s=10.0)
            self._servo_stats = stats
            ticks = stats.get("ticks", 0)
            last = getattr(self, "_last_ticks", None)
            now = time.monotonic()
            if last is not None and now > last[1]:
                stats["rate_measured_hz"] = round((ticks - last[0]) / (now - last[1]), 2)
            self._last_ticks = (ticks, now)
            self.metrics.jitter.set(stats["jitter_ms"]["p99"])
            self.metrics.overruns.set(stats["overruns"])
        alive["servo"] = bool(servo is not None and servo.alive)
        if camera is not None and camera.alive:
            cstats = camera.stats()
            period = cstats.read_period_p50_s
            self._camera_stats = {"fps": round(1.0 / period, 2) if period > 0 else None}
            self.metrics.frame_age.set(min(camera.frame_age_s(), 1e6))
        alive["camera"] = bool(camera is not None and camera.alive)
        for name, value in alive.items():
            self.metrics.alive.labels(name).set(1.0 if value else 0.0)

    # -- the recorder thread ---------------------------------------------------------------

    def _record(self) -> None:
        """Camera frames and arm states into the episode, and frames onto the live page."""
        last_counter = 0
        next_feed = 0.0
        next_arm = 0.0
        feed_period = 1.0 / self.config.api.frame_rate_hz
        while not self._closing.wait(0.01):
            try:
                camera, servo = self.camera, self.servo
                if camera is None or not camera.alive or servo is None or not servo.alive:
                    continue
                now = time.monotonic()
                with self._rec_lock:
                    next_arm, last_counter, frames = self._record_once(now, next_arm, last_counter)
                if frames is not None and self.events.listeners and now >= next_feed:
                    next_feed = now + feed_period
                    path = np.array(self._path) if self._path else np.zeros((0, 3))
                    stamp = int(min(frames.host_timestamps_ns.values()))
                    state = self.servo.state()
                    pose = np.asarray(state.tool_pose) if state is not None else None
                    workspace = (
                        np.asarray(self.limits.workspace_low),
                        np.asarray(self.limits.workspace_high),
                    )
                    message = frame_message(
                        frames.images,
                        camera.cameras,
                        stamp,
                        path,
                        self._plan_points,
                        pose if pose is not None and np.all(np.isfinite(pose)) else None,
                        workspace,
                    )
                    self.events.publish("frame", message)
            except Exception:
                log.exception("recorder iteration failed")
                time.sleep(0.5)

    def _record_once(self, now: float, next_arm: float, last_counter: int) -> tuple:
        camera, servo, recording = self.camera, self.servo, self._recording
        if now >= next_arm:
            next_arm = now + 0.05
            state = servo.state()
            pose = np.asarray(state.tool_pose)
            if self.task is not None and np.all(np.isfinite(pose)):
                self._path.append(pose[:3, 3].copy())
            if recording is not None:
                recording.add_arm_state(
                    int(state.time_ns or time.monotonic_ns()),
                    pose,
                    float(state.gripper),
                    int(state.error_code),
                )
        counter = camera.latest_counter
        if counter == last_counter:
            return next_arm, last_counter, None
        frames = camera.latest()
        if frames is None:
            return next_arm, last_counter, None
        if recording is not None:
            stamp = int(min(frames.host_timestamps_ns.values()))
            measured = self.poses.at(stamp) if self.poses is not None else None
            if measured is None:
                state = servo.state()
                measured = (state.tool_pose, state.gripper)
            recording.add_frames(frames.images, stamp, measured[0], float(measured[1]))
        return next_arm, counter, frames

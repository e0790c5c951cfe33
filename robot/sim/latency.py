"""Simulated latency for lock-step sim cells: an arm whose commands take effect late, and a camera
rig whose frames arrive late and show the world as it was when they were exposed.

Time is the world's simulated clock, and `LatencyCell.wait` is what advances it: it steps physics
one tick at a time and, before each tick, hands the arm the commands that have become due and
exposes a camera frame when one is due. Ground truth (all in simulated time):

- arm (`DelayedArm`): a command (`servo`, `set_gripper`, `stop`) sent at t reaches the simulated
  controller at the first physics tick at or after t + `arm_latency_s`, in the order sent; the
  controller then follows it with its own dynamics, whose lag comes on top (`LatencyCell.tcp_log`
  records the true TCP at every tick, to measure the total). `read_state` reports the true state
  now, as a controller reports its encoders. `emergency_stop`, `clear_errors` and `enable` act at
  once (a hardware line, synchronous calls) and an emergency stop drops the queued commands.
- cameras (`DelayedCameraRig`): every `1 / fps` (on the physics tick at or after the due time) all
  views are rendered from the world as it is then: that is the exposure, the frame's device
  timestamp. View v's frame is received `camera_latency_s[v]` (+ a seeded uniform jitter in
  [0, `camera_jitter_s`]) later: that is its host timestamp. `read()` at time t returns, per view,
  the newest-exposed frame received by t, so the pixels really are `camera_latency_s` old (median
  latency = `camera_latency_s + camera_jitter_s / 2`). Both stamps are on the sim clock, which the
  rig reports as its timestamp domain "sim_time".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aimg.geometry import Camera
from aimg.robot.interfaces import Arm, ArmState, CameraRig, RigFrames
from aimg.robot.sim.world import SimWorld

Clock = Callable[[], int]  # the sim clock, ns
SIM_TIME_DOMAIN = "sim_time"


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


class DelayedArm(Arm):
    """An `Arm` whose motion commands take effect `latency_s` after they are sent (see module).

    Commands are stamped with `clock()` when sent; whoever owns time calls `deliver(now_ns)` to
    hand the due ones to the wrapped arm.
    """

    def __init__(self, arm: Arm, clock: Clock, latency_s: float) -> None:
        if not 0.0 <= latency_s < 2.0:
            raise ValueError(f"arm latency must be in [0, 2) s, got {latency_s}")
        self.inner = arm
        self.latency_s = float(latency_s)
        self._clock = clock
        self._queue: deque[tuple[int, Callable[[], None]]] = deque()

    @property
    def pending(self) -> int:
        """Commands sent but not yet delivered."""
        return len(self._queue)

    def deliver(self, now_ns: int) -> None:
        """Hand the wrapped arm every command due by `now_ns`, in the order they were sent."""
        while self._queue and self._queue[0][0] <= now_ns:
            self._queue.popleft()[1]()

    def _send(self, command: Callable[[], None]) -> None:
        self._queue.append((self._clock() + _ns(self.latency_s), command))

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self._queue.clear()
        self.inner.disconnect()

    @property
    def is_connected(self) -> bool:
        return self.inner.is_connected

    def enable(self) -> None:
        self.inner.enable()

    def read_state(self) -> ArmState:
        return self.inner.read_state()

    def servo(self, tool_pose: np.ndarray) -> None:
        pose = np.array(tool_pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"servo needs a finite [4, 4] TCP pose, got shape {pose.shape}")
        self._send(lambda: self.inner.servo(pose))

    def set_gripper(self, openness: float) -> None:
        if not np.isfinite(openness):
            raise ValueError(f"gripper openness must be finite in [0, 1], got {openness}")
        value = float(openness)
        self._send(lambda: self.inner.set_gripper(value))

    def stop(self) -> None:
        self._send(self.inner.stop)

    def emergency_stop(self) -> None:
        self._queue.clear()
        self.inner.emergency_stop()

    def clear_errors(self) -> None:
        self.inner.clear_errors()


@dataclass
class _Frame:
    exposure_ns: int
    receipt_ns: int
    image: np.ndarray


class DelayedCameraRig(CameraRig):
    """A `CameraRig` whose frames arrive `camera_latency_s` after exposure (see module).

    rig: renders the world as it is now on `read()` (e.g. `SimCameraRig`). latency_s: one value
    for all views or view -> seconds. Whoever owns time calls `expose_due(now_ns)` every tick.
    wait: advances sim time; `read()` uses it only before the first frame has arrived, as a real
    rig's first read blocks until the stream has started.
    """

    def __init__(
        self,
        rig: CameraRig,
        clock: Clock,
        latency_s: float | Mapping[str, float],
        fps: float = 30.0,
        jitter_s: float = 0.0,
        seed: int = 0,
        wait: Callable[[float], None] | None = None,
    ) -> None:
        views = rig.view_names
        if isinstance(latency_s, Mapping):
            if set(latency_s) != set(views):
                raise ValueError(
                    f"camera latency is given for {sorted(latency_s)}, the rig has {list(views)}"
                )
            latency = {v: float(latency_s[v]) for v in views}
        else:
            latency = {v: float(latency_s) for v in views}
        if not all(0.0 <= s < 2.0 for s in latency.values()) or not 0.0 <= jitter_s < 1.0:
            raise ValueError(f"camera latency must be in [0, 2) s, jitter in [0, 1) s: {latency}")
        if not 0.5 <= fps <= 500.0:
            raise ValueError(f"fps must be in [0.5, 500], got {fps}")
        self.inner = rig
        self.latency_s = latency
        self.jitter_s = float(jitter_s)
        self.fps = float(fps)
        self._period_ns = _ns(1.0 / fps)
        self._clock = clock
        self._wait = wait
        self._rng = np.random.default_rng(seed)
        self._next_exposure_ns: int | None = None
        self._history: dict[str, list[_Frame]] = {v: [] for v in views}

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.inner.view_names

    @property
    def cameras(self) -> dict[str, Camera]:
        return self.inner.cameras

    @property
    def timestamp_domains(self) -> dict[str, str]:
        """View -> "sim_time": device and host timestamps are both on the sim clock."""
        return {v: SIM_TIME_DOMAIN for v in self.view_names}

    def expose_due(self, now_ns: int) -> None:
        """Expose (render) a frame set if one is due by `now_ns`; keep the frame grid."""
        if self._next_exposure_ns is None:
            self._next_exposure_ns = now_ns
        if now_ns < self._next_exposure_ns:
            return
        images = self.inner.read().images
        for view, image in images.items():
            jitter = self._rng.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0
            receipt = now_ns + _ns(self.latency_s[view] + jitter)
            self._history[view].append(_Frame(now_ns, receipt, image))
        while self._next_exposure_ns <= now_ns:
            self._next_exposure_ns += self._period_ns
        for view in self._history:
            self._newest_received(view, now_ns)  # drops frames that can never be read again

    def _newest_received(self, view: str, now_ns: int) -> _Frame | None:
        history = self._history[view]
        received = [f for f in history if f.receipt_ns <= now_ns]
        if not received:
            return None
        newest = max(received, key=lambda f: f.exposure_ns)
        self._history[view] = [f for f in history if f.exposure_ns >= newest.exposure_ns]
        return newest

    def read(self) -> RigFrames:
        """Per view, the newest-exposed frame received by now (device ts = exposure, host ts =
        receipt). Before the first frame has arrived, advances sim time until it has."""
        now = self._clock()
        self.expose_due(now)
        frames = {v: self._newest_received(v, now) for v in self.view_names}
        while any(f is None for f in frames.values()):
            if self._wait is None:
                raise RuntimeError(
                    "no frame has arrived yet: advance sim time first (this rig was given no "
                    "`wait` to do it)"
                )
            missing = [v for v, f in frames.items() if f is None]
            first = min(f.receipt_ns for v in missing for f in self._history[v])
            self._wait(max(first - now, 1) / 1e9)
            now = self._clock()
            self.expose_due(now)
            frames = {v: self._newest_received(v, now) for v in self.view_names}
        return RigFrames(
            images={v: f.image for v, f in frames.items()},
            device_timestamps_ns={v: f.exposure_ns for v, f in frames.items()},
            host_timestamps_ns={v: f.receipt_ns for v, f in frames.items()},
        )


@dataclass(frozen=True)
class LatencyTruth:
    """The simulated latencies (s): what `aimg calib latency --sim` is scored against."""

    arm_latency_s: float
    camera_latency_s: dict[str, float]
    camera_jitter_s: float
    fps: float

    @property
    def camera_median_s(self) -> dict[str, float]:
        """Median exposure -> receipt delay per view (latency plus half the uniform jitter)."""
        return {v: s + self.camera_jitter_s / 2.0 for v, s in self.camera_latency_s.items()}

    def to_dict(self) -> dict:
        return {
            "arm_latency_s": self.arm_latency_s,
            "camera_latency_s": dict(self.camera_latency_s),
            "camera_jitter_s": self.camera_jitter_s,
            "camera_median_s": self.camera_median_s,
            "fps": self.fps,
        }


class LatencyCell:
    """A lock-step sim cell whose arm and cameras have known latencies (see module).

    Wraps `world` with its `arm` and `rig` (e.g. a `SimCalibrationCell`'s): use `arm`, `rig`
    and `wait` of this object, never `world.step` directly, or commands and exposures fall due
    unseen. `cell` is whatever was wrapped (`with_latency`), closed by `close()`.
    """

    def __init__(
        self,
        world: SimWorld,
        arm: Arm,
        rig: CameraRig,
        arm_latency_s: float = 0.05,
        camera_latency_s: float | Mapping[str, float] = 0.03,
        fps: float = 30.0,
        camera_jitter_s: float = 0.0,
        seed: int = 0,
        cell: Any = None,
    ) -> None:
        if world.real_time:
            raise ValueError("LatencyCell needs a lock-step world (real_time is on)")
        self.world = world
        self.cell = cell
        self.arm = DelayedArm(arm, self.clock_ns, arm_latency_s)
        self.rig = DelayedCameraRig(
            rig, self.clock_ns, camera_latency_s, fps, camera_jitter_s, seed, wait=self.wait
        )
        self.truth = LatencyTruth(
            float(arm_latency_s), dict(self.rig.latency_s), float(camera_jitter_s), float(fps)
        )
        self._tcp_times: list[int] | None = None
        self._tcp_positions: list[np.ndarray] = []

    def clock_ns(self) -> int:
        """The sim clock (ns): the time base of commands, states and frames alike."""
        return self.world.time_ns

    def _tick(self) -> None:
        now = self.world.time_ns
        self.arm.deliver(now)
        self.rig.expose_due(now)
        if self._tcp_times is not None:
            self._tcp_times.append(now)
            self._tcp_positions.append(self.world.tool_pose()[:3, 3])

    def wait(self, seconds: float) -> None:
        """Advance sim time by `seconds` (whole physics ticks, at least one if `seconds` > 0),
        delivering commands and exposing frames on the way."""
        ticks = round(seconds * self.world.config.physics_hz)
        ticks = max(1, ticks) if seconds > 0 else 0
        for _ in range(ticks):
            self._tick()
            self.world.step(1)
        self._tick()

    def start_tcp_log(self) -> None:
        """Record the true TCP position at every physics tick from now on (ground truth)."""
        self._tcp_times, self._tcp_positions = [], []

    def tcp_log(self) -> tuple[np.ndarray, np.ndarray]:
        """The recorded true TCP: times [N] int64 ns (sim clock), positions [N, 3] (m)."""
        if self._tcp_times is None:
            raise RuntimeError("call start_tcp_log() first")
        positions = np.array(self._tcp_positions).reshape(-1, 3)
        return np.array(self._tcp_times, dtype=np.int64), positions

    def close(self) -> None:
        if self.cell is not None and hasattr(self.cell, "close"):
            self.cell.close()

    def __enter__(self) -> LatencyCell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_latency(
    cell: Any,
    arm_latency_s: float = 0.05,
    camera_latency_s: float | Mapping[str, float] = 0.03,
    fps: float = 30.0,
    camera_jitter_s: float = 0.0,
    seed: int = 0,
) -> LatencyCell:
    """A `LatencyCell` around an existing lock-step cell with `world`, `arm` and `rig` (such as
    `aimg.calib.sim.SimCalibrationCell`); the cell's own `wait` must not be used afterwards."""
    for name in ("world", "arm", "rig"):
        if not hasattr(cell, name):
            raise TypeError(f"{type(cell).__name__} has no `{name}`: pass a sim cell")
    return LatencyCell(
        cell.world,
        cell.arm,
        cell.rig,
        arm_latency_s,
        camera_latency_s,
        fps,
        camera_jitter_s,
        seed,
        cell=cell,
    )

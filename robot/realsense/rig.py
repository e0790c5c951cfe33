"""`RealSenseRig`: several RealSense cameras, selected by serial number, as one `CameraRig`.

Every camera streams into a librealsense callback on its own thread. The callback only keeps
the newest frame set and counts frame-number gaps, so drops are the camera's (or the USB bus's),
never a slow reader's. `read()` waits until every camera has delivered a frame set newer than
the last one returned and hands back the newest of each: colour as [H, W, 3] uint8 RGB, and,
with `depth=True`, depth in metres aligned to the colour image (`align_depth=False` keeps the
depth sensor's own geometry) in `extras["depth/<view>"]`.

Failures are errors the caller can act on, each naming the camera: `StaleFrameError` (no new
frame within `stale_timeout_s`), `CameraDisconnectedError` (unplugged; later `read()` calls
retry it with exponential backoff and resume once it is back), `RecordingEndedError` (a
non-looping recording is over), `CalibrationMissingError`, `OptionLockError`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aimg.geometry import Camera
from aimg.robot.interfaces import CameraRig, RigFrames
from aimg.robot.realsense.sources import (
    DeviceSource,
    LiveSource,
    RecordingSource,
    enum_name,
    import_rs,
    info,
)

EOF_DRAIN_S = 0.5  # how long a finished recording is drained for frames still in flight
HANDEYE_HINT = "run `aimg calib handeye --config CELL` and pass its result as `calibration`"


class RealSenseError(RuntimeError):
    """A camera of the rig failed; `view` and `serial` say which."""

    def __init__(self, message: str, view: str = "", serial: str = "") -> None:
        super().__init__(message)
        self.view = view
        self.serial = serial


class CameraDisconnectedError(RealSenseError):
    """The camera is not there (unplugged, or never found); `retry_in_s` until the next try."""

    def __init__(self, message: str, view: str, serial: str, retry_in_s: float) -> None:
        super().__init__(message, view, serial)
        self.retry_in_s = retry_in_s


class StaleFrameError(RealSenseError):
    """The camera is connected but delivered no new frame in time."""


class RecordingEndedError(RealSenseError):
    """A recorded camera played to its end and the source does not loop."""


class CalibrationMissingError(RealSenseError):
    """A view has no camera-to-base pose."""


class OptionLockError(RealSenseError):
    """An exposure / gain / white-balance setting the sensor lacks or did not accept."""


@dataclass(frozen=True)
class RealSenseCamera:
    """One camera of the rig: the view name the model knows, its serial, the stream it opens."""

    name: str
    serial: str
    width: int = 640
    height: int = 480
    fps: int = 30

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"camera name {self.name!r} must be a plain identifier (front, wrist)")
        if not str(self.serial).strip():
            raise ValueError(f"camera {self.name!r}: serial is empty (see `aimg realsense list`)")
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(
                f"camera {self.name!r}: width, height and fps must be positive, "
                f"got {self.width}x{self.height}@{self.fps}"
            )
        object.__setattr__(self, "serial", str(self.serial))

    @classmethod
    def from_config(cls, entry: Any) -> RealSenseCamera:
        """From a cell-config camera entry (a mapping or an object): name, serial, size, fps."""
        get = entry.get if isinstance(entry, Mapping) else lambda k, d=None: getattr(entry, k, d)
        return cls(
            name=get("name"),
            serial=str(get("serial")),
            width=int(get("width", 640)),
            height=int(get("height", 480)),
            fps=int(get("fps", 30) or 30),
        )


@dataclass(frozen=True)
class Intrinsics:
    """Colour-stream intrinsics as the device reports them (pixels; librealsense model name)."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str
    coeffs: tuple[float, ...]

    @property
    def K(self) -> np.ndarray:
        """[3, 3] OpenCV camera matrix."""
        return np.array([[self.fx, 0.0, self.ppx], [0.0, self.fy, self.ppy], [0.0, 0.0, 1.0]])

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "ppx": self.ppx,
            "ppy": self.ppy,
            "model": self.model,
            "coeffs": list(self.coeffs),
        }


@dataclass(frozen=True)
class CameraStats:
    """Counters of one camera since `connect()`; `dropped` counts missing frame numbers."""

    frames: int
    dropped: int
    resets: int  # frame numbers that went back (a restarted device or a looped recording)
    stale: int
    reconnects: int  # restarts after a stall or an unplug (not a looped recording)
    last_frame_number: int
    timestamp_domain: str
    state: str  # "streaming", "disconnected", "looping" or "stopped"


@dataclass
class _Cam:
    """Mutable per-camera state; fields written by the callback are guarded by the rig's lock."""

    spec: RealSenseCamera
    pipe: Any = None
    align: Any = None
    state: str = "stopped"
    generation: int = 0
    latest: Any = None
    latest_host_ns: int = 0
    seq: int = 0
    returned_seq: int = 0
    frames_since_start: int = 0
    started_ns: int = 0
    last_arrival_ns: int = 0
    last_fn: int | None = None
    frames: int = 0
    dropped: int = 0
    resets: int = 0
    stale: int = 0
    reconnects: int = 0
    domain: str = ""
    callback_error: str = ""
    eof: bool = False
    halt: threading.Event = field(default_factory=threading.Event)
    puller: threading.Thread | None = None
    next_retry_ns: int = 0
    backoff_s: float = 0.0
    intrinsics: Intrinsics | None = None
    device: dict[str, str] = field(default_factory=dict)
    options: dict[str, float] = field(default_factory=dict)


def _to_ns(seconds: float) -> int:
    return int(seconds * 1e9)


class RealSenseRig(CameraRig):
    """RealSense cameras by serial number behind the `CameraRig` interface.

    cameras: one `RealSenseCamera` per view. calibration: view -> [4, 4] camera-to-base pose or a
    `Camera`. intrinsics: "device" (default) takes K from the device; "calibration" takes it
    from the calibration's `Camera` (e.g. a ChArUco calibration), which must then be at the
    stream's size. The device's distortion is not applied. source: where the
    pipelines come from (default: the connected cameras). exposure / gain / white_balance: lock
    the colour sensor (auto off, value set and read back) in the sensor's own units
    (`rs.option.exposure`: D4xx colour in 100 us steps; white balance in kelvin); None keeps auto.
    global_time: turn on librealsense's global time where a sensor supports it, so device
    timestamps of all cameras share the host's clock.
    """

    def __init__(
        self,
        cameras: Sequence[RealSenseCamera],
        calibration: Mapping[str, np.ndarray | Camera] | None = None,
        source: DeviceSource | None = None,
        *,
        intrinsics: Literal["device", "calibration"] = "device",
        depth: bool = False,
        align_depth: bool = True,
        global_time: bool = True,
        exposure: float | None = None,
        gain: float | None = None,
        white_balance: float | None = None,
        stale_timeout_s: float = 1.0,
        start_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        specs = tuple(cameras)
        if not specs:
            raise ValueError("a RealSenseRig needs at least one camera")
        for kind, values in (
            ("view names", [c.name for c in specs]),
            ("serials", [c.serial for c in specs]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"camera {kind} repeat: {values}")
        if intrinsics not in ("device", "calibration"):
            raise ValueError(f'intrinsics must be "device" or "calibration", got {intrinsics!r}')
        self._calibration: dict[str, np.ndarray] = {}
        self._calibrated_cameras: dict[str, Camera] = {}
        for view, pose in (calibration or {}).items():
            if view not in {c.name for c in specs}:
                raise ValueError(
                    f"calibration has view {view!r}, which is not a camera of this rig "
                    f"({[c.name for c in specs]})"
                )
            c2w = pose.c2w if isinstance(pose, Camera) else np.asarray(pose, dtype=np.float64)
            if c2w.shape != (4, 4):
                raise ValueError(f"calibration of {view!r} must be a [4, 4] pose, got {c2w.shape}")
            self._calibration[view] = c2w
            spec = next(c for c in specs if c.name == view)
            if intrinsics == "calibration":
                if not isinstance(pose, Camera):
                    raise ValueError(
                        f'intrinsics="calibration" needs a `Camera` for {view!r}, got a bare pose'
                    )
                if (pose.width, pose.height) != (spec.width, spec.height):
                    raise ValueError(
                        f"calibration of {view!r} is for {pose.width}x{pose.height} images but "
                        f"the camera streams {spec.width}x{spec.height}: recalibrate at that size"
                    )
                self._calibrated_cameras[view] = pose
        if stale_timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError("stale_timeout_s and start_timeout_s must be positive")
        self._rs = import_rs()
        self._source = source
        self._cams = {c.name: _Cam(c) for c in specs}
        self._depth = depth
        self._align_depth = align_depth
        self._global_time = global_time
        self._locks = {"exposure": exposure, "gain": gain, "white_balance": white_balance}
        self._stale_timeout_ns = _to_ns(stale_timeout_s)
        self._start_timeout_ns = _to_ns(start_timeout_s)
        self._backoff = backoff_s
        self._cond = threading.Condition()
        self._connected = False

    @classmethod
    def from_recording(
        cls,
        directory: str | Path,
        calibration: Mapping[str, np.ndarray | Camera] | None = None,
        *,
        real_time: bool = True,
        loop: bool = True,
        **kwargs: Any,
    ) -> RealSenseRig:
        """A rig on the cameras of an `aimg realsense record` directory, by their recorded names."""
        source = RecordingSource(directory, real_time=real_time, loop=loop)
        cameras = [
            RealSenseCamera(c.name, c.serial, c.width, c.height, c.fps)
            for c in source.manifest.cameras
        ]
        kwargs.setdefault("depth", source.manifest.depth)
        kwargs.setdefault("global_time", False)  # a recording's domain is already fixed
        return cls(cameras, calibration, source, **kwargs)

    # -- CameraRig --------------------------------------------------------------------------

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self._cams)

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        """Start every camera; raises (naming the camera) if one is missing or cannot stream."""
        if self._connected:
            return
        if self._source is None:
            self._source = LiveSource()
        try:
            for cam in self._cams.values():
                self._start(cam)
        except BaseException:
            for cam in self._cams.values():
                self._stop(cam, "stopped")
            raise
        self._connected = True

    def disconnect(self) -> None:
        for cam in self._cams.values():
            self._stop(cam, "stopped")
        self._connected = False

    @property
    def cameras(self) -> dict[str, Camera]:
        """View -> `Camera` with the device's intrinsics and the calibrated camera-to-base pose."""
        result = {}
        for view, cam in self._cams.items():
            if view not in self._calibration:
                raise CalibrationMissingError(
                    f"camera {view!r} (serial {cam.spec.serial}) has no camera-to-base "
                    f"calibration: {HANDEYE_HINT}",
                    view,
                    cam.spec.serial,
                )
            if cam.intrinsics is None:
                raise RealSenseError(
                    "RealSenseRig has not read the device intrinsics yet: call connect() "
                    "(or use `with rig:`)"
                )
            if view in self._calibrated_cameras:
                result[view] = self._calibrated_cameras[view]
                continue
            intr = cam.intrinsics
            result[view] = Camera(intr.K, self._calibration[view], intr.width, intr.height)
        return result

    @property
    def intrinsics(self) -> dict[str, Intrinsics]:
        """View -> the colour intrinsics the device reported at the last (re)start."""
        return {v: c.intrinsics for v, c in self._cams.items() if c.intrinsics is not None}

    @property
    def devices(self) -> dict[str, dict[str, str]]:
        """View -> device name, serial, firmware and USB type."""
        return {v: dict(c.device) for v, c in self._cams.items()}

    @property
    def options(self) -> dict[str, dict[str, float]]:
        """View -> the option values read back after setting them (global time, locks)."""
        return {v: dict(c.options) for v, c in self._cams.items()}

    @property
    def timestamp_domains(self) -> dict[str, str]:
        """View -> the domain of its latest frame: "global_time", "hardware_clock", ..."""
        with self._cond:
            return {v: c.domain for v, c in self._cams.items()}

    def stats(self) -> dict[str, CameraStats]:
        with self._cond:
            return {
                view: CameraStats(
                    frames=c.frames,
                    dropped=c.dropped,
                    resets=c.resets,
                    stale=c.stale,
                    reconnects=c.reconnects,
                    last_frame_number=-1 if c.last_fn is None else c.last_fn,
                    timestamp_domain=c.domain,
                    state=c.state,
                )
                for view, c in self._cams.items()
            }

    def read(self) -> RigFrames:
        """The newest frame set of every camera, each newer than the one `read()` last returned."""
        if not self._connected:
            raise RealSenseError(
                "RealSenseRig is not connected: call connect() (or use `with rig:`)"
            )
        grabbed = None
        while grabbed is None:
            for cam in self._cams.values():
                if cam.state == "looping":
                    self._stop(cam, "looping")
                    self._start(cam)
                elif cam.state != "streaming":
                    self._retry(cam)
            grabbed = self._wait_for_new_frames()
        images: dict[str, np.ndarray] = {}
        device_ns: dict[str, int] = {}
        host_ns: dict[str, int] = {}
        extras: dict[str, np.ndarray] = {}
        for view, (frameset, host, cam) in grabbed.items():
            color = frameset.get_color_frame()
            images[view] = np.asanyarray(color.get_data()).copy()
            device_ns[view] = round(color.get_timestamp() * 1e6)
            host_ns[view] = host
            extras[f"frame_number/{view}"] = np.array(color.get_frame_number(), dtype=np.int64)
            if self._depth:
                extras[f"depth/{view}"] = self._depth_metres(cam, frameset)
        return RigFrames(images, device_ns, host_ns, extras)

    # -- streaming --------------------------------------------------------------------------

    def _wait_for_new_frames(self) -> dict[str, tuple[Any, int, _Cam]] | None:
        """Newest frame set per camera once all are new; None if a recording must loop first."""
        source = self._source
        with self._cond:
            while True:
                now = time.monotonic_ns()
                waiting = [c for c in self._cams.values() if c.seq == c.returned_seq]
                if not waiting:
                    break
                wake_ns = now + _to_ns(0.05)
                for cam in waiting:
                    if self._check_alive(cam, source, now):
                        return None
                    if cam.frames_since_start == 0:
                        deadline = cam.started_ns + self._start_timeout_ns
                    else:
                        deadline = cam.last_arrival_ns + self._stale_timeout_ns
                    wake_ns = min(wake_ns, deadline)
                self._cond.wait(max(wake_ns - now, 0) / 1e9)
            grabbed = {}
            for view, cam in self._cams.items():
                cam.returned_seq = cam.seq
                grabbed[view] = (cam.latest, cam.latest_host_ns, cam)
            return grabbed

    def _check_alive(self, cam: _Cam, source: DeviceSource, now: int) -> bool:
        """Raise (lock held) if `cam` has failed, after scheduling its restart; True if it is a
        recording to play again from the start."""
        spec = cam.spec
        name = f"camera {spec.name!r} (serial {spec.serial})"
        if cam.callback_error:
            message = cam.callback_error
            self._mark_failed(cam, now)
            raise RealSenseError(
                f"{name} failed while streaming: {message}", spec.name, spec.serial
            )
        if cam.eof:
            if source.loop:
                cam.state = "looping"
                cam.generation += 1
                return True
            raise RecordingEndedError(
                f"{name}: {source.describe()} has ended after {cam.frames} frames",
                spec.name,
                spec.serial,
            )
        if cam.frames_since_start == 0:
            if now - cam.started_ns > self._start_timeout_ns:
                cam.stale += 1
                self._mark_failed(cam, now)
                raise StaleFrameError(
                    f"{name} started but delivered no frame within "
                    f"{self._start_timeout_ns / 1e9:.1f} s; check the USB link (USB 3 needed "
                    f"for {spec.width}x{spec.height}@{spec.fps}) and `aimg realsense list`",
                    spec.name,
                    spec.serial,
                )
        elif now - cam.last_arrival_ns > self._stale_timeout_ns:
            cam.stale += 1
            self._mark_failed(cam, now)
            raise StaleFrameError(
                f"{name} delivered no new frame for {(now - cam.last_arrival_ns) / 1e9:.2f} s "
                f"(limit {self._stale_timeout_ns / 1e9:.2f} s, last frame number {cam.last_fn}); "
                "the rig restarts it on the next read",
                spec.name,
                spec.serial,
            )
        return False

    def _mark_failed(self, cam: _Cam, now: int) -> None:
        """Flag the camera for a restart by the next `read()` (the lock is held)."""
        cam.state = "disconnected"
        cam.generation += 1  # frames still in flight from the old pipeline are ignored
        cam.next_retry_ns = now

    def _retry(self, cam: _Cam) -> None:
        """Restart a failed camera if its backoff allows; raise CameraDisconnectedError if not."""
        spec = cam.spec
        now = time.monotonic_ns()
        if now < cam.next_retry_ns:
            wait_s = (cam.next_retry_ns - now) / 1e9
            raise CameraDisconnectedError(
                f"camera {spec.name!r} (serial {spec.serial}) is disconnected; "
                f"next reconnect try in {wait_s:.2f} s",
                spec.name,
                spec.serial,
                wait_s,
            )
        self._stop(cam, "disconnected")
        try:
            self._start(cam)
        except RealSenseError as exc:
            with self._cond:
                cam.state = "disconnected"
                delay = cam.backoff_s or self._backoff[0]
                cam.next_retry_ns = time.monotonic_ns() + _to_ns(delay)
                cam.backoff_s = min(delay * 2, self._backoff[1])
            raise CameraDisconnectedError(
                f"{exc}; retrying in {delay:.2f} s", spec.name, spec.serial, delay
            ) from exc
        with self._cond:
            cam.reconnects += 1
            cam.backoff_s = 0.0

    def _start(self, cam: _Cam) -> None:
        """Open and start one camera's pipeline, then set and read back its options."""
        rs, spec, source = self._rs, cam.spec, self._source
        name = f"camera {spec.name!r} (serial {spec.serial})"
        available = source.serials()
        if spec.serial not in available:
            raise CameraDisconnectedError(
                f"{name} is not among the {source.describe()} (found: {available or 'none'}); "
                "check the cable and `aimg realsense list`",
                spec.name,
                spec.serial,
                0.0,
            )
        pipe, cfg = source.pipeline(spec.serial)
        cfg.enable_stream(rs.stream.color, spec.width, spec.height, rs.format.rgb8, spec.fps)
        if self._depth:
            cfg.enable_stream(rs.stream.depth, spec.width, spec.height, rs.format.z16, spec.fps)
        with self._cond:
            cam.generation += 1
            generation = cam.generation
            cam.latest, cam.frames_since_start, cam.callback_error = None, 0, ""
            cam.seq = cam.returned_seq = 0
            cam.eof = False
            cam.started_ns = time.monotonic_ns()
        streams = "rgb8" + (" + z16 depth" if self._depth else "")
        try:
            if source.pull:
                profile = pipe.start(cfg)
            else:
                profile = pipe.start(cfg, lambda frame: self._on_frame(cam, generation, frame))
        except RuntimeError as exc:
            raise RealSenseError(
                f"{name} cannot stream {spec.width}x{spec.height} {streams} at {spec.fps} fps: "
                f"{exc}; see the supported profiles with `aimg realsense list`",
                spec.name,
                spec.serial,
            ) from exc
        cam.pipe = pipe
        if source.pull:
            cam.halt = threading.Event()
            cam.puller = threading.Thread(
                target=self._pull,
                args=(cam, generation, pipe, cam.halt),
                name=f"realsense-{spec.name}",
                daemon=True,
            )
            cam.puller.start()
        try:
            device = profile.get_device()
            cam.device = {
                "name": info(device, "name"),
                "serial": info(device, "serial_number"),
                "firmware": info(device, "firmware_version"),
                "usb_type": info(device, "usb_type_descriptor"),
            }
            cam.options = self._configure(cam, device)
            intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
            cam.intrinsics = Intrinsics(
                intr.width,
                intr.height,
                float(intr.fx),
                float(intr.fy),
                float(intr.ppx),
                float(intr.ppy),
                enum_name(intr.model),
                tuple(float(c) for c in intr.coeffs),
            )
            cam.align = rs.align(rs.stream.color) if self._depth and self._align_depth else None
        except BaseException:
            self._stop(cam, "stopped")
            raise
        with self._cond:
            cam.state = "streaming"
            cam.started_ns = time.monotonic_ns()

    def _configure(self, cam: _Cam, device: Any) -> dict[str, float]:
        """Global time on every sensor that has it; exposure / gain / white balance locks on the
        colour sensor. Returns the values read back."""
        rs, spec = self._rs, cam.spec
        readback: dict[str, float] = {}
        color_sensor = None
        for sensor in device.query_sensors():
            if any(p.stream_type() == rs.stream.color for p in sensor.get_stream_profiles()):
                color_sensor = color_sensor or sensor
            if sensor.supports(rs.option.global_time_enabled) and not sensor.is_option_read_only(
                rs.option.global_time_enabled
            ):
                sensor.set_option(rs.option.global_time_enabled, 1.0 if self._global_time else 0.0)
                readback["global_time_enabled"] = sensor.get_option(rs.option.global_time_enabled)
        locks = (
            ("exposure", rs.option.enable_auto_exposure),
            ("gain", rs.option.enable_auto_exposure),
            ("white_balance", rs.option.enable_auto_white_balance),
        )
        for key, auto in locks:
            value = self._locks[key]
            if value is None:
                continue
            option = getattr(rs.option, key)
            where = f"camera {spec.name!r} (serial {spec.serial})"
            if color_sensor is None or not color_sensor.supports(option):
                raise OptionLockError(
                    f"{where}: its colour sensor has no {key} option; leave {key} unset (auto)",
                    spec.name,
                    spec.serial,
                )
            if color_sensor.supports(auto):
                color_sensor.set_option(auto, 0.0)
                readback[enum_name(auto)] = color_sensor.get_option(auto)
            limits = color_sensor.get_option_range(option)
            if not limits.min <= value <= limits.max:
                raise OptionLockError(
                    f"{where}: {key} {value} is outside the sensor's range "
                    f"[{limits.min}, {limits.max}] (step {limits.step})",
                    spec.name,
                    spec.serial,
                )
            color_sensor.set_option(option, float(value))
            actual = color_sensor.get_option(option)
            if abs(actual - value) > max(limits.step / 2, 1e-6):
                raise OptionLockError(
                    f"{where}: set {key} to {value} but the sensor reports {actual}",
                    spec.name,
                    spec.serial,
                )
            readback[key] = actual
        return readback

    def _stop(self, cam: _Cam, state: str) -> None:
        """Stop one camera's pipeline; never called with the lock held (stop joins the callback)."""
        pipe, cam.pipe = cam.pipe, None
        puller, cam.puller = cam.puller, None
        cam.halt.set()
        with self._cond:
            cam.generation += 1
            cam.state = state
            cam.latest = None
        if puller is not None:
            puller.join(5.0)  # before stop(): never stop a pipeline another thread waits on
        if pipe is not None:
            with contextlib.suppress(RuntimeError):  # an unplugged device cannot be stopped cleanly
                pipe.stop()

    def _pull(self, cam: _Cam, generation: int, pipe: Any, halt: threading.Event) -> None:
        """Recording thread: take every frame set (playback waits for it), pace it, publish it."""
        source, serial = self._source, cam.spec.serial
        first: tuple[float, float] | None = None  # (device ms, host s) of the first frame
        ended_since: float | None = None
        while not halt.is_set():
            try:
                ok, frameset = pipe.try_wait_for_frames(100)
            except RuntimeError:
                return  # the pipeline was stopped
            if not ok:
                if first is None or not source.ended(serial):
                    continue
                # The file is read to its end, but its last frames may still be on their way.
                ended_since = ended_since or time.monotonic()
                if time.monotonic() - ended_since >= EOF_DRAIN_S:
                    with self._cond:
                        if generation == cam.generation:
                            cam.eof = True
                            self._cond.notify_all()
                    return
                continue
            ended_since = None
            stamp = frameset.get_timestamp()
            if first is None:
                first = (stamp, time.monotonic())
            if source.real_time:
                delay = first[1] + (stamp - first[0]) / 1000.0 - time.monotonic()
                if delay > 0 and halt.wait(delay):
                    return
            self._on_frame(cam, generation, frameset)

    def _on_frame(self, cam: _Cam, generation: int, frame: Any) -> None:
        """librealsense callback thread: keep the newest frame set, count frame-number gaps."""
        try:
            host = time.monotonic_ns()
            frameset = frame.as_frameset() if frame.is_frameset() else None
            color = frameset.get_color_frame() if frameset is not None else None
            if not color:
                return
            if self._depth and not frameset.get_depth_frame():
                return
            number = color.get_frame_number()
            domain = enum_name(color.get_frame_timestamp_domain())
            with self._cond:
                if generation != cam.generation:
                    return
                if cam.last_fn is not None:
                    if number > cam.last_fn + 1:
                        cam.dropped += number - cam.last_fn - 1
                    elif number <= cam.last_fn:
                        cam.resets += 1
                cam.last_fn = number
                cam.latest, cam.latest_host_ns = frameset, host
                cam.seq += 1
                cam.frames += 1
                cam.frames_since_start += 1
                cam.last_arrival_ns = host
                cam.domain = domain
                self._cond.notify_all()
        except Exception as exc:  # an exception must not escape into librealsense's thread
            with self._cond:
                cam.callback_error = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()

    def _depth_metres(self, cam: _Cam, frameset: Any) -> np.ndarray:
        """[H, W] float32 metres, aligned to colour if configured; 0 where depth is unknown."""
        if cam.align is not None:
            frameset = cam.align.process(frameset)
        depth = frameset.get_depth_frame()
        return np.asanyarray(depth.get_data()).astype(np.float32) * np.float32(depth.get_units())

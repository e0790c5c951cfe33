"""Where a `RealSenseRig` gets its pipelines: connected cameras, a recording, or any other source.

The rig never builds a `pyrealsense2.pipeline` itself; it asks a `DeviceSource` for a pipeline
and config bound to one serial number, then enables its streams and starts it. That one seam is
what lets the same rig code run on USB cameras (`LiveSource`), on a directory written by
`aimg realsense record` (`RecordingSource`) and, in the tests, on librealsense software devices,
all through the real pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from aimg.optional import require


def import_rs() -> ModuleType:
    """pyrealsense2, or an error that names the extra to install."""
    return require("pyrealsense2", "robot")


def info(obj: Any, key: str, default: str = "") -> str:
    """`obj.get_info(rs.camera_info.<key>)`, or `default` where the device does not report it."""
    rs = import_rs()
    field = getattr(rs.camera_info, key)
    try:
        return str(obj.get_info(field)) if obj.supports(field) else default
    except RuntimeError:
        return default


def enum_name(value: Any) -> str:
    """`rs.timestamp_domain.global_time` -> "global_time" (pybind enums have no plain `.name`)."""
    return str(value).rsplit(".", 1)[-1]


class DeviceSource(Protocol):
    """Opens pipelines bound to one camera, found by its serial number.

    pull: False for cameras, which push frames into the rig's callback; True for recordings,
    whose frames the rig pulls with `wait_for_frames` (lossless) and paces itself when
    `real_time`. loop: a recording that ends plays again from its start.
    """

    pull: bool
    real_time: bool
    loop: bool

    def serials(self) -> list[str]:
        """Serial numbers that can be opened now (an unplugged camera is missing)."""
        ...

    def pipeline(self, serial: str) -> tuple[Any, Any]:
        """A new `rs.pipeline` and `rs.config` bound to `serial`, no streams enabled yet."""
        ...

    def ended(self, serial: str) -> bool:
        """True once a recorded camera has played to its end (live cameras never end)."""
        ...

    def describe(self) -> str:
        """Where the cameras come from, for error messages."""
        ...


class LiveSource:
    """Cameras on USB, enumerated through one `rs.context` (the ordinary librealsense path)."""

    pull = False
    real_time = True
    loop = False

    def __init__(self, context: Any | None = None) -> None:
        rs = import_rs()
        self._rs = rs
        self.context = context if context is not None else rs.context()

    def serials(self) -> list[str]:
        return [info(dev, "serial_number") for dev in self.context.query_devices()]

    def pipeline(self, serial: str) -> tuple[Any, Any]:
        pipe = self._rs.pipeline(self.context)
        cfg = self._rs.config()
        cfg.enable_device(serial)
        return pipe, cfg

    def ended(self, serial: str) -> bool:
        return False

    def describe(self) -> str:
        return "connected RealSense devices"


class RecordingSource:
    """Cameras played back from a directory written by `aimg realsense record`.

    Each file is loaded once into a context (kept referenced: the context holds user devices
    weakly), switched to non-real-time playback and only then bound to its pipeline with
    `set_device`, so no frame is lost at the start. The rig pulls every frame; with
    `real_time=True` it releases them at the recorded pace (device timestamps), otherwise as
    fast as it can. In librealsense's own real-time mode frames were lost at random (measured
    with 2.59: up to 5 of 61), and a callback-started pipeline stalls in non-real-time mode.
    """

    pull = True

    def __init__(self, directory: str | Path, real_time: bool = True, loop: bool = True) -> None:
        from aimg.robot.realsense.recording import read_manifest

        rs = import_rs()
        self._rs = rs
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.real_time = real_time
        self.loop = loop
        self._context = rs.context()
        self._files = {cam.serial: self.directory / cam.file for cam in self.manifest.cameras}
        self._devices: dict[str, Any] = {}

    def _playback(self, serial: str) -> Any:
        if serial not in self._devices:
            # The context holds only a weak reference: keep the device object alive here.
            self._devices[serial] = self._context.load_device(str(self._files[serial]))
        playback = self._devices[serial].as_playback()
        playback.set_real_time(False)  # lossless; the rig paces the frames
        return playback

    def serials(self) -> list[str]:
        return list(self._files)

    def pipeline(self, serial: str) -> tuple[Any, Any]:
        if serial not in self._files:
            raise KeyError(f"serial {serial} is not in the recording {self.directory}")
        pipe = self._rs.pipeline(self._context)
        pipe.set_device(self._playback(serial))
        return pipe, self._rs.config()

    def ended(self, serial: str) -> bool:
        device = self._devices.get(serial)
        if device is None:
            return False
        return device.as_playback().current_status() == self._rs.playback_status.stopped

    def describe(self) -> str:
        return f"the recording {self.directory}"


@dataclass(frozen=True)
class DeviceSummary:
    """What `aimg realsense list` shows about one connected camera."""

    name: str
    serial: str
    firmware: str
    usb_type: str
    product_line: str
    color_profiles: tuple[str, ...]  # "640x480@30 rgb8", largest first


def list_devices(context: Any | None = None) -> list[DeviceSummary]:
    """The connected cameras and the colour profiles each can stream."""
    rs = import_rs()
    ctx = context if context is not None else rs.context()
    summaries = []
    for dev in ctx.query_devices():
        profiles: set[tuple[int, int, int, str]] = set()
        for sensor in dev.query_sensors():
            for profile in sensor.get_stream_profiles():
                if (
                    profile.stream_type() != rs.stream.color
                    or not profile.is_video_stream_profile()
                ):
                    continue
                video = profile.as_video_stream_profile()
                profiles.add(
                    (video.width(), video.height(), profile.fps(), enum_name(profile.format()))
                )
        ordered = sorted(profiles, key=lambda p: (-p[0] * p[1], -p[2], p[3]))
        summaries.append(
            DeviceSummary(
                name=info(dev, "name"),
                serial=info(dev, "serial_number"),
                firmware=info(dev, "firmware_version", "?"),
                usb_type=info(dev, "usb_type_descriptor", "?"),
                product_line=info(dev, "product_line", "?"),
                color_profiles=tuple(f"{w}x{h}@{fps} {fmt}" for w, h, fps, fmt in ordered),
            )
        )
    return summaries

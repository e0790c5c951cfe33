"""Fake RealSense cameras made of librealsense software devices, for the RealSense rig tests.

A `SoftCamera` is a `pyrealsense2.software_device` with a colour stream (optionally depth) and
the options a D4xx colour sensor has; the test pushes every frame, so it controls pixels,
frame numbers, timestamps and domains. `SoftwareSource` hands their pipelines to the rig the
way the notes prescribe (`pipeline.set_device`), and can "unplug" a camera.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pyrealsense2 as rs

FPS = 30
ACTUAL_FPS = rs.frame_metadata_value.actual_fps


def option_range(low: float, high: float, step: float, default: float) -> Any:
    # The binding's 4-argument constructor stores step and default swapped: set fields instead.
    r = rs.option_range()
    r.min, r.max, r.step, r.default = low, high, step, default
    return r


def make_image(camera_id: int, frame_number: int, width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8 that says which camera and frame it is, with a gradient for pixel checks."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = camera_id
    img[..., 1] = frame_number % 256
    img[..., 2] = (np.arange(width)[None, :] + np.arange(height)[:, None]) % 256
    return img


def decode_image(img: np.ndarray) -> tuple[int, int]:
    """(camera id, frame number mod 256) from `make_image` pixels."""
    return int(img[0, 0, 0]), int(img[0, 0, 1])


class SoftCamera:
    """One fake camera: a software device with its own serial, intrinsics and options."""

    def __init__(
        self,
        serial: str,
        camera_id: int,
        width: int = 64,
        height: int = 48,
        fx: float = 60.0,
        depth: bool = False,
        options: bool = True,
    ) -> None:
        self.serial, self.camera_id, self.width, self.height = serial, camera_id, width, height
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, f"Intel RealSense D435 (software {serial})")
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.firmware_version, "5.16.0.1")
        self.device.register_info(rs.camera_info.usb_type_descriptor, "3.2")
        self.sensor = self.device.add_sensor("RGB Camera")
        intr = rs.intrinsics()
        intr.width, intr.height = width, height
        intr.fx, intr.fy = fx, fx * 1.01
        intr.ppx, intr.ppy = width / 2 + 0.5, height / 2 - 0.25
        intr.model = rs.distortion.brown_conrady
        intr.coeffs = [0.1, -0.2, 0.001, 0.002, 0.03]
        self.intrinsics = intr
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, camera_id * 10
        stream.width, stream.height, stream.fps = width, height, FPS
        stream.bpp, stream.fmt, stream.intrinsics = 3, rs.format.rgb8, intr
        self.color_profile = self.sensor.add_video_stream(stream, True).as_video_stream_profile()
        self.depth_profile = None
        if depth:
            dstream = rs.video_stream()
            dstream.type, dstream.index, dstream.uid = rs.stream.depth, 0, camera_id * 10 + 1
            dstream.width, dstream.height, dstream.fps = width, height, FPS
            dstream.bpp, dstream.fmt, dstream.intrinsics = 2, rs.format.z16, intr
            self.depth_profile = self.sensor.add_video_stream(dstream, True)
            self.depth_profile = self.depth_profile.as_video_stream_profile()
            extr = rs.extrinsics()
            extr.rotation, extr.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
            self.depth_profile.register_extrinsics_to(self.color_profile, extr)
            self.sensor.add_read_only_option(rs.option.depth_units, 0.001)
        # Without it the syncer computes a bogus rate from frame number / timestamp (notes, P9).
        self.sensor.set_metadata(ACTUAL_FPS, FPS * 1000)
        if options:
            self.sensor.add_option(rs.option.enable_auto_exposure, option_range(0, 1, 1, 1))
            self.sensor.add_option(rs.option.exposure, option_range(1, 10000, 1, 156))
            self.sensor.add_option(rs.option.gain, option_range(0, 128, 1, 64))
            self.sensor.add_option(rs.option.enable_auto_white_balance, option_range(0, 1, 1, 1))
            self.sensor.add_option(rs.option.white_balance, option_range(2800, 6500, 10, 4600))
            self.sensor.add_option(rs.option.global_time_enabled, option_range(0, 1, 1, 0))

    def push(
        self,
        frame_number: int,
        timestamp_ms: float | None = None,
        domain: Any = rs.timestamp_domain.global_time,
        depth_mm: int = 1000,
    ) -> None:
        """Deliver one frame (and a depth frame) as the camera would; no-op if not streaming."""
        ts = timestamp_ms if timestamp_ms is not None else 1.7e12 + frame_number * 1000.0 / FPS
        img = make_image(self.camera_id, frame_number, self.width, self.height)
        frame = rs.software_video_frame()  # a new object per frame: reusing one crashes (P1)
        frame.pixels = np.ascontiguousarray(img)
        frame.stride, frame.bpp = self.width * 3, 3
        frame.timestamp, frame.domain, frame.frame_number = ts, domain, frame_number
        frame.profile = self.color_profile
        self.sensor.on_video_frame(frame)
        if self.depth_profile is not None:
            depth = np.full((self.height, self.width), depth_mm, np.uint16)
            dframe = rs.software_video_frame()
            dframe.pixels = depth
            dframe.stride, dframe.bpp = self.width * 2, 2
            dframe.timestamp, dframe.domain, dframe.frame_number = ts, domain, frame_number
            dframe.depth_units = 0.001
            dframe.profile = self.depth_profile
            self.sensor.on_video_frame(dframe)


class SoftwareSource:
    """A `DeviceSource` over software devices: one pipeline per camera via `set_device`."""

    pull = False
    real_time = True
    loop = False

    def __init__(self, *cameras: SoftCamera) -> None:
        self.cameras = {cam.serial: cam for cam in cameras}

    def serials(self) -> list[str]:
        return list(self.cameras)

    def pipeline(self, serial: str) -> tuple[Any, Any]:
        pipe = rs.pipeline()
        pipe.set_device(self.cameras[serial].device)
        return pipe, rs.config()

    def ended(self, serial: str) -> bool:
        return False

    def describe(self) -> str:
        return "software devices"

    def unplug(self, serial: str) -> SoftCamera:
        return self.cameras.pop(serial)

    def plug(self, camera: SoftCamera) -> None:
        self.cameras[camera.serial] = camera


class Feeder:
    """Pushes frames into a camera from a thread at about `fps`, like a camera streaming.

    `skip` lists frame numbers never sent (dropped on the "USB bus"); `pause()` stalls the camera.
    """

    def __init__(self, camera: SoftCamera, fps: float = FPS, skip: frozenset[int] = frozenset()):
        self.camera, self.period, self.skip = camera, 1.0 / fps, skip
        self.frame_number = 0
        self.running = threading.Event()
        self.running.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.running.is_set():
                self.frame_number += 1
                if self.frame_number not in self.skip:
                    self.camera.push(self.frame_number)
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

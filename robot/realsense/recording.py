"""Recordings of a RealSense rig: one librealsense file per camera plus `manifest.json`.

`record()` streams the cameras through a `RealSenseRig` (same options, drop counting and stale
detection as the cell) with librealsense's own recorder on each pipeline, so playback goes
through librealsense again (`RecordingSource`, `RealSenseRig.from_recording`). librealsense
2.58+ writes only ROS2 `.db3` files; older versions write ROS1 `.bag`; both play back in 2.59.
The manifest maps view names to serials and files and keeps what a replay needs to know.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aimg.robot.realsense.sources import DeviceSource, LiveSource, import_rs

MANIFEST = "manifest.json"
FORMAT = "aimg-realsense-recording"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RecordedCamera:
    """One camera's file in a recording and what was seen while recording it."""

    name: str
    serial: str
    file: str
    width: int
    height: int
    fps: int
    frames: int
    dropped: int
    timestamp_domain: str
    intrinsics: dict[str, Any]
    device: dict[str, str]


@dataclass(frozen=True)
class RecordingManifest:
    cameras: tuple[RecordedCamera, ...]
    seconds: float
    depth: bool
    librealsense: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **dataclasses.asdict(self),
            "cameras": [dataclasses.asdict(c) for c in self.cameras],
        }


def recording_extension() -> str:
    """ "The file suffix: .db3 for librealsense 2.58+ (the only format they write), else .bag."""
    major, minor = (int(part) for part in import_rs().__version__.split(".")[:2])
    return ".db3" if (major, minor) >= (2, 58) else ".bag"


def read_manifest(directory: str | Path) -> RecordingManifest:
    """Read and check `directory/manifest.json`; errors say what is wrong with the directory."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a RealSense recording (no {MANIFEST}): "
            "write one with `aimg realsense record --serial S --seconds N --out DIR`"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, "
            f"got {data.get('format')!r} version {data.get('version')!r}"
        )
    try:
        cameras = tuple(RecordedCamera(**c) for c in data["cameras"])
        manifest = RecordingManifest(
            cameras=cameras,
            seconds=float(data["seconds"]),
            depth=bool(data["depth"]),
            librealsense=str(data["librealsense"]),
            created=str(data["created"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: missing or unexpected field ({exc})") from exc
    for cam in cameras:
        if not (directory / cam.file).is_file():
            raise FileNotFoundError(
                f"{path} lists {cam.file} for camera {cam.name!r}; it is missing"
            )
    return manifest


class _RecordingTo:
    """A source whose pipelines also record to `out/<file>` (librealsense's recorder)."""

    def __init__(self, inner: DeviceSource, files: dict[str, Path]) -> None:
        self._inner = inner
        self._files = files
        self.pull, self.real_time = inner.pull, inner.real_time
        self.loop = False

    def serials(self) -> list[str]:
        return self._inner.serials()

    def pipeline(self, serial: str) -> tuple[Any, Any]:
        pipe, cfg = self._inner.pipeline(serial)
        cfg.enable_record_to_file(str(self._files[serial]))
        return pipe, cfg

    def ended(self, serial: str) -> bool:
        return self._inner.ended(serial)

    def describe(self) -> str:
        return self._inner.describe()


def record(
    cameras: Sequence[Any],
    out: str | Path,
    seconds: float,
    source: DeviceSource | None = None,
    **rig_options: Any,
) -> RecordingManifest:
    """Record `cameras` (`RealSenseCamera`s) for `seconds` into the new directory `out`.

    rig_options go to `RealSenseRig` (depth, exposure, ...). A stalled or unplugged camera aborts
    the recording with the rig's error; the partial files stay for inspection, without a manifest.
    """
    from aimg.robot.realsense.rig import RealSenseRig

    out = Path(out)
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --out directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    ext = recording_extension()
    files = {c.serial: out / f"{c.name}-{c.serial}{ext}" for c in cameras}
    source = source if source is not None else LiveSource()
    rig = RealSenseRig(cameras, None, _RecordingTo(source, files), **rig_options)
    try:
        rig.connect()
    except BaseException:
        del rig
        gc.collect()
        for path in files.values():  # started before another camera failed: nothing to keep
            path.unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rig.read()
    finally:
        rig.disconnect()
    stats, intrinsics, devices = rig.stats(), rig.intrinsics, rig.devices
    del rig
    gc.collect()  # a file is complete once librealsense's recorder object is destroyed
    recorded = []
    for cam in cameras:
        s = stats[cam.name]
        recorded.append(
            RecordedCamera(
                name=cam.name,
                serial=cam.serial,
                file=files[cam.serial].name,
                width=cam.width,
                height=cam.height,
                fps=cam.fps,
                frames=s.frames,
                dropped=s.dropped,
                timestamp_domain=s.timestamp_domain,
                intrinsics=intrinsics[cam.name].as_dict(),
                device=devices[cam.name],
            )
        )
    manifest = RecordingManifest(
        cameras=tuple(recorded),
        seconds=float(seconds),
        depth=bool(rig_options.get("depth", False)),
        librealsense=import_rs().__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest

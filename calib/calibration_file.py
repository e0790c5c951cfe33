"""The calibration file: one YAML record per camera, read and written only here.

Everything that needs camera calibration (runtime, daemon, data collection, the sim) gets its
`Camera` objects from `read_calibration(path).cameras()`. Per camera: serial, K (pixels of a
`width` x `height` image), OpenCV distortion, c2w (camera-to-base, OpenCV axes, metres), date,
method, residuals, the reference frames for the board drift check (each an image next to the
file, the tool pose it was taken at and its board detection) and the static-scene reference
image of the daemon's drift check; per cell, the measured latencies (`aimg calib latency`).
Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aimg.atomic_files import write_bytes_atomic
from aimg.calib.board import BoardSpec, Detection
from aimg.geometry import Camera

FORMAT = "aimg-calibration"
VERSION = 1
_DIST_LENGTHS = (4, 5, 8, 12, 14)


class CalibrationFileError(ValueError):
    """A calibration file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class ReferenceFrame:
    """The drift-check reference of one camera: `image` (path relative to the calibration
    file), the TCP pose [4, 4] the arm held, and the board detection in that image."""

    image: str
    tool_pose: np.ndarray
    detection: Detection


@dataclass(frozen=True)
class CameraCalibration:
    """One camera's record. K [3, 3], distortion [n] (OpenCV order), c2w [4, 4]."""

    name: str
    serial: str
    K: np.ndarray
    distortion: np.ndarray
    c2w: np.ndarray
    width: int
    height: int
    date: str
    method: str
    residuals: dict = field(default_factory=dict)
    references: tuple[ReferenceFrame, ...] = ()
    #: the static scene as this camera saw it after calibration (PNG beside the file), for the
    #: drift check that needs no board (`aimg.calib.scene_drift`, run by the daemon)
    scene_reference: str | None = None

    def camera(self) -> Camera:
        return Camera(self.K, self.c2w, self.width, self.height)


@dataclass(frozen=True)
class Latency:
    """What `aimg calib latency` measured: per camera, exposure -> host receipt (s); the arm,
    command -> motion (s). The runtime conditions plans on `host time - camera_s` and leads
    servo commands by `arm_s`."""

    camera_s: dict[str, float]
    arm_s: float
    date: str
    method: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "camera_s": {name: round(float(v), 6) for name, v in self.camera_s.items()},
            "arm_s": round(float(self.arm_s), 6),
            "date": self.date,
            "method": self.method,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: object) -> Latency:
        if not isinstance(data, dict) or "camera_s" not in data or "arm_s" not in data:
            raise ValueError("latency needs camera_s (per camera) and arm_s")
        camera_s = data["camera_s"]
        if not isinstance(camera_s, dict):
            raise ValueError("latency.camera_s must map camera names to seconds")
        values = {str(k): float(v) for k, v in camera_s.items()}
        arm_s = float(data["arm_s"])
        if not all(0.0 <= v < 2.0 for v in [*values.values(), arm_s]):
            raise ValueError(f"latencies must be in [0, 2) s, got {values} and arm_s {arm_s}")
        return cls(
            values,
            arm_s,
            str(data.get("date", "")),
            str(data.get("method", "")),
            dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class CalibrationFile:
    """A whole calibration: per-camera records, the board and its mount on the tool
    (tool_T_board [4, 4], needed by the drift check), where it came from, and its path."""

    records: dict[str, CameraCalibration]
    board: BoardSpec | None = None
    tool_T_board: np.ndarray | None = None
    source: str = ""
    path: Path | None = None
    latency: Latency | None = None

    def cameras(self) -> dict[str, Camera]:
        """Camera name -> `Camera` (K, c2w, image size)."""
        return {name: record.camera() for name, record in self.records.items()}

    def require(self, names: Iterable[str], serials: Mapping[str, str] | None = None) -> None:
        """Raise unless this file calibrates exactly the cameras `names` (and their serials)."""
        wanted, have = sorted(names), sorted(self.records)
        where = self.path or "the calibration"
        if wanted != have:
            raise CalibrationFileError(
                f"{where} is for cameras {have}, but this cell has {wanted}: use the file made "
                "for this cell, or calibrate it with `aimg calib handeye`"
            )
        for name, serial in (serials or {}).items():
            if self.records[name].serial != serial:
                raise CalibrationFileError(
                    f"{where}: camera '{name}' was calibrated with serial "
                    f"{self.records[name].serial!r} but serial {serial!r} is connected: "
                    "recalibrate with `aimg calib handeye`"
                )

    def reference_image_paths(self, name: str) -> list[Path]:
        """Where camera `name`'s reference images are (beside the calibration file)."""
        return [self.resolve(ref.image) for ref in self.records[name].references]

    def resolve(self, relative: str) -> Path:
        """A path recorded in the file (reference images), relative to the file's folder."""
        base = self.path.parent if self.path is not None else Path.cwd()
        return base / relative


def _matrix(value: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not a numeric matrix") from exc
    if array.shape != shape:
        raise ValueError(f"{what} has shape {list(array.shape)}, expected {list(shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinity")
    return array


def _pose(value: object, what: str) -> np.ndarray:
    pose = _matrix(value, (4, 4), what)
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{what} last row is {pose[3].tolist()}, expected [0, 0, 0, 1]")
    rotation = pose[:3, :3]
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-5) or np.linalg.det(rotation) < 0:
        raise ValueError(f"{what} rotation block is not a proper rotation matrix")
    return pose


def _record_from_yaml(name: str, data: object) -> CameraCalibration:
    if not isinstance(data, dict):
        raise ValueError("is not a mapping")
    required = ("serial", "K", "distortion", "c2w", "width", "height", "date", "method")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"lacks {missing}")
    K = _matrix(data["K"], (3, 3), "K")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError("K must be OpenCV intrinsics: fx, fy > 0 and last row [0, 0, 1]")
    distortion = np.asarray(data["distortion"], dtype=np.float64).reshape(-1)
    if len(distortion) not in _DIST_LENGTHS or not np.isfinite(distortion).all():
        raise ValueError(f"distortion must be {_DIST_LENGTHS} finite OpenCV coefficients")
    width, height = data["width"], data["height"]
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    references = []
    for k, ref in enumerate(data.get("references") or []):
        if not isinstance(ref, dict) or not {"image", "tool_pose", "detection"} <= set(ref):
            raise ValueError(f"references[{k}] needs image, tool_pose and detection")
        references.append(
            ReferenceFrame(
                str(ref["image"]),
                _pose(ref["tool_pose"], f"references[{k}] tool_pose"),
                Detection.from_dict(ref["detection"]),
            )
        )
    return CameraCalibration(
        name=name,
        serial=str(data["serial"]),
        K=K,
        distortion=distortion,
        c2w=_pose(data["c2w"], "c2w"),
        width=width,
        height=height,
        date=str(data["date"]),
        method=str(data["method"]),
        residuals=dict(data.get("residuals") or {}),
        references=tuple(references),
        scene_reference=str(data["scene_reference"]) if data.get("scene_reference") else None,
    )


def read_camera_document(
    path: Path,
    fmt: str,
    version: int,
    redo: str,
    parse_record: Callable[[str, object], Any],
    error: type[Exception],
) -> tuple[dict, dict[str, Any]]:
    """The skeleton every per-camera YAML file of aimg shares (this one, `aimg calib
    intrinsics`'): `format` and `version` checked, one record per camera under `cameras:`
    parsed by `parse_record(name, entry)` (ValueError: what is wrong). Errors (`error`) name the
    file, the camera and `redo`, the command that writes a good file. Returns the document and
    the records."""
    kind = fmt.removeprefix("aimg-")
    if not path.is_file():
        raise error(f"{kind} file {path} does not exist: run `{redo} --out {path}`")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML ({exc}); rerun `{redo}`") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not an aimg {kind} file (no `format: {fmt}`)")
    if data.get("version") != version:
        raise error(
            f"{path} has {kind} format version {data.get('version')}; this aimg reads "
            f"version {version}: rerun `{redo}`"
        )
    cameras = data.get("cameras")
    if not isinstance(cameras, dict) or not cameras:
        raise error(f"{path} lists no cameras under `cameras:`")
    records = {}
    for name, entry in cameras.items():
        try:
            records[str(name)] = parse_record(str(name), entry)
        except ValueError as exc:
            raise error(f"{path}: camera '{name}' {exc}; fix the entry or rerun `{redo}`") from exc
    return data, records


def read_calibration(path: str | Path) -> CalibrationFile:
    """Read and validate a calibration file; errors name the file, the camera and the key."""
    path = Path(path)
    data, records = read_camera_document(
        path, FORMAT, VERSION, "aimg calib handeye", _record_from_yaml, CalibrationFileError
    )
    try:
        board = BoardSpec.from_dict(data["board"]) if data.get("board") else None
        mount = _pose(data["tool_T_board"], "tool_T_board") if data.get("tool_T_board") else None
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{path}: board or tool_T_board invalid: {exc}") from exc
    try:
        latency = Latency.from_dict(data["latency"]) if data.get("latency") else None
    except (TypeError, ValueError) as exc:
        raise CalibrationFileError(f"{path}: {exc}; remeasure with `aimg calib latency`") from exc
    if latency is not None and set(latency.camera_s) - set(records):
        raise CalibrationFileError(
            f"{path}: latency.camera_s names cameras {sorted(set(latency.camera_s) - set(records))}"
            f" that the file does not calibrate; remeasure with `aimg calib latency`"
        )
    return CalibrationFile(records, board, mount, str(data.get("source", "")), path, latency)


def _rounded(array: np.ndarray, digits: int = 9) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def to_yaml_dict(calibration: CalibrationFile) -> dict:
    """The YAML document of a calibration (plain lists and numbers)."""
    cameras = {}
    for name, r in calibration.records.items():
        entry = {
            "serial": r.serial,
            "width": r.width,
            "height": r.height,
            "K": _rounded(r.K),
            "distortion": _rounded(r.distortion),
            "c2w": _rounded(r.c2w),
            "date": r.date,
            "method": r.method,
            "residuals": r.residuals,
        }
        if r.references:
            entry["references"] = [
                {
                    "image": ref.image,
                    "tool_pose": _rounded(ref.tool_pose),
                    "detection": ref.detection.to_dict(),
                }
                for ref in r.references
            ]
        if r.scene_reference:
            entry["scene_reference"] = r.scene_reference
        cameras[name] = entry
    doc: dict = {"format": FORMAT, "version": VERSION, "source": calibration.source}
    if calibration.board is not None:
        doc["board"] = calibration.board.to_dict()
    if calibration.tool_T_board is not None:
        doc["tool_T_board"] = _rounded(calibration.tool_T_board)
    doc["cameras"] = cameras
    if calibration.latency is not None:
        doc["latency"] = calibration.latency.to_dict()
    return doc


def exact_calibration(
    cameras: Mapping[str, Camera], source: str, path: Path | None = None
) -> CalibrationFile:
    """A calibration file of cameras known exactly (a simulated rig): no distortion, no
    residuals, method "sim-exact"."""
    date = now_iso()
    records = {
        name: CameraCalibration(
            name=name,
            serial=name,
            K=cam.K,
            distortion=np.zeros(5),
            c2w=cam.c2w,
            width=cam.width,
            height=cam.height,
            date=date,
            method="sim-exact",
        )
        for name, cam in cameras.items()
    }
    return CalibrationFile(records, source=source, path=path)


def write_calibration(path: str | Path, calibration: CalibrationFile) -> Path:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_yaml_dict(calibration), sort_keys=False, default_flow_style=None)
    return write_bytes_atomic(path, text.encode())


def now_iso() -> str:
    """UTC timestamp for the `date` field."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

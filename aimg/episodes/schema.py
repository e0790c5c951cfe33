"""Names, constants and value checks of the episode format, shared by writer and reader.

`EpisodeData` is the in-memory episode a writer is given; the `*_problem` and `check_*` helpers
return or raise the messages both sides use, so a writer refuses exactly what a reader rejects.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimg.geometry import Camera

FORMAT_NAME = "aimg-episode"
FORMAT_VERSION = 1
META_FILE = "meta.json"
POSES_FILE = "poses.npy"
TIMESTAMPS_FILE = "timestamps_ns.npy"
EPISODE_PREFIX = "episode_"
INDEX_DIGITS = 6

EPISODE_DIR_RE = re.compile(rf"^{EPISODE_PREFIX}(\d{{{INDEX_DIGITS},}})$")
TEMP_DIR_RE = re.compile(rf"^\.{EPISODE_PREFIX}(\w+?)\.tmp-(\d+)-[0-9a-f]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
HASH_CHUNK = 1 << 22

CORRUPT_ADVICE = "The episode is corrupt: delete its directory and re-collect it."


class EpisodeError(ValueError):
    """A stored episode is corrupt or incomplete; the message names the file and what to do."""


def frames_file(view: str) -> str:
    """File name of one view's frames inside an episode directory."""
    return f"frames_{view}.npy"


def extra_file(name: str) -> str:
    """File name of one extra per-frame array inside an episode directory."""
    return f"extra_{name}.npy"


def stream_file(name: str) -> str:
    """File name of one stream (an array not tied to frames) inside an episode directory."""
    return f"stream_{name}.npy"


def episode_dir_name(index: int) -> str:
    """Directory name of episode `index` (zero-padded, so names sort in index order)."""
    return f"{EPISODE_PREFIX}{index:0{INDEX_DIGITS}d}"


# ---------------------------------------------------------------------------------------------
# Writer input.


@dataclass
class EpisodeData:
    """One recorded episode in memory, as given to `write_episode`.

    frames: view name -> [T, H, W, 3] uint8 RGB (view order is kept and meaningful: view 0 first).
    cameras: view name -> one static `Camera` or a list of T cameras (moving camera), each at
        that view's H x W.
    poses: [T, 7] float64 tool pose `[x, y, z, rx, ry, rz, g]`: base frame, metres, extrinsic-xyz
        Euler radians, gripper g in [0, 1] with 1 = open.
    timestamps_ns: [T] int64, strictly increasing (`time.monotonic_ns()` or simulated time).
    metadata: JSON-able dict (seed, object poses, ...); NumPy arrays and scalars are stored as
        lists and numbers.
    extras: optional per-frame arrays [T, ...] of a numeric dtype (joint positions, commanded
        actions, ...), names like view names.
    streams: optional numeric arrays of any shape not tied to frames (commands at the servo
        rate, plans, arm states at their own rate, ...), names like view names.
    """

    instruction: str
    task: str
    frames: dict[str, np.ndarray]
    cameras: dict[str, Camera | list[Camera]]
    poses: np.ndarray
    timestamps_ns: np.ndarray
    success: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    streams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self.frames)

    @property
    def num_frames(self) -> int:
        return int(np.shape(self.poses)[0]) if np.ndim(self.poses) else 0

    @property
    def gripper(self) -> np.ndarray:
        """[T] gripper openness in [0, 1], 1 = open."""
        return np.asarray(self.poses, dtype=np.float64)[:, 6]

    def validate(self) -> None:
        """Raise ValueError saying what is wrong; `write_episode` calls this before writing."""
        validate_data(self)


def validate_data(data: EpisodeData) -> None:
    if not isinstance(data.instruction, str):
        raise ValueError(f"instruction must be a str, got {type(data.instruction).__name__}")
    if not isinstance(data.task, str) or not data.task:
        raise ValueError("task must be a non-empty str naming the task (e.g. 'pick_cube')")
    if not isinstance(data.success, bool | np.bool_):
        raise ValueError(f"success must be a bool, got {type(data.success).__name__}")
    poses = np.asarray(data.poses)
    problem = pose_problem(poses)
    if problem:
        raise ValueError(f"poses: {problem}")
    t = poses.shape[0]
    problem = timestamps_problem(np.asarray(data.timestamps_ns), t)
    if problem:
        raise ValueError(f"timestamps_ns: {problem}")
    if not isinstance(data.frames, Mapping) or not isinstance(data.cameras, Mapping):
        raise ValueError("frames and cameras must be dicts keyed by view name")
    if not data.frames:
        raise ValueError("frames is empty: an episode needs at least one camera view")
    if set(data.frames) != set(data.cameras):
        raise ValueError(
            f"frames and cameras must have the same views, got frames {sorted(data.frames)} "
            f"and cameras {sorted(data.cameras)}"
        )
    for view, frames in data.frames.items():
        check_name(view, "view")
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise ValueError(
                f"frames['{view}'] must be a uint8 numpy array [T, H, W, 3] RGB, got "
                f"{getattr(frames, 'dtype', type(frames).__name__)} (convert float [0, 1] images "
                "with (x * 255).round().astype(np.uint8))"
            )
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] != t:
            raise ValueError(f"frames['{view}'] must be [T={t}, H, W, 3], got {frames.shape}")
        if frames.shape[1] == 0 or frames.shape[2] == 0:
            raise ValueError(f"frames['{view}'] has an empty image: {frames.shape}")
        check_cameras(view, data.cameras[view], t, frames.shape[1], frames.shape[2], ValueError)
    if not isinstance(data.extras, Mapping):
        raise ValueError("extras must be a dict name -> [T, ...] array")
    for name, array in data.extras.items():
        check_name(name, "extra")
        array = np.asarray(array)
        if array.dtype.kind not in "biuf" or array.ndim < 1 or array.shape[0] != t:
            raise ValueError(
                f"extras['{name}'] must be a numeric array [T={t}, ...], got "
                f"{array.dtype} {array.shape}"
            )
    if not isinstance(data.streams, Mapping):
        raise ValueError("streams must be a dict name -> numeric array")
    for name, array in data.streams.items():
        check_stream(name, np.asarray(array))
    metadata_json(data.metadata)


def check_stream(name: object, array: np.ndarray) -> None:
    """Raise ValueError unless `array` can be stored as stream `name` (numeric, ndim >= 1)."""
    check_name(name, "stream")
    if array.dtype.kind not in "biuf" or array.ndim < 1:
        raise ValueError(
            f"streams['{name}'] must be a numeric array with at least one dimension (any "
            f"length, 0 included), got {array.dtype} {array.shape}"
        )


def check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{what} name {name!r} is not usable in a file name: use 1-64 letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )


def pose_problem(poses: np.ndarray) -> str | None:
    if poses.dtype.kind not in "iuf":
        return f"must be real numbers, got dtype {poses.dtype}"
    if poses.ndim != 2 or poses.shape[1] != 7 or poses.shape[0] < 1:
        return f"must be [T, 7] with T >= 1 ([x, y, z, rx, ry, rz, g]), got {poses.shape}"
    finite = np.isfinite(poses).all(axis=1)
    if not finite.all():
        return f"non-finite values (NaN or inf) at frame {int(np.argmin(finite))}"
    gripper = poses[:, 6]
    bad = (gripper < 0.0) | (gripper > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        return f"gripper (column 6) must lie in [0, 1] (1 = open), frame {i} has {gripper[i]}"
    return None


def timestamps_problem(stamps: np.ndarray, num_frames: int) -> str | None:
    if stamps.dtype.kind not in "iu":
        return f"must be integer nanoseconds (int64), got dtype {stamps.dtype}"
    if stamps.shape != (num_frames,):
        return f"must be [T={num_frames}] like the poses, got {stamps.shape}"
    steps = np.diff(stamps.astype(np.int64))
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        return f"must be strictly increasing, frame {i + 1} is not after frame {i}"
    return None


def check_cameras(
    view: str,
    cameras: object,
    num_frames: int,
    height: int,
    width: int,
    error: type[ValueError],
    where: str = "",
) -> None:
    listed = cameras if isinstance(cameras, list | tuple) else [cameras]
    if isinstance(cameras, list | tuple) and len(listed) != num_frames:
        raise error(
            f"{where}cameras['{view}'] lists {len(listed)} cameras for {num_frames} frames: give "
            "one static Camera or exactly one per frame"
        )
    for i, camera in enumerate(listed):
        if not isinstance(camera, Camera):
            raise error(f"{where}cameras['{view}'] entry {i} is not an aimg.geometry.Camera")
        if (camera.height, camera.width) != (height, width):
            raise error(
                f"{where}cameras['{view}'] entry {i} is calibrated for "
                f"{camera.width}x{camera.height} but the frames are {width}x{height}: rescale "
                "it with Camera.resized / Camera.scaled to the stored image size"
            )


def _json_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def metadata_json(metadata: object) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metadata must be JSON-serialisable (str keys; numbers, str, lists, dicts, NumPy "
            f"arrays; no NaN or inf): {exc}"
        ) from exc


def npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool] | None:
    """(dtype, shape, fortran_order) from a .npy header without reading the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
    except (OSError, ValueError):
        return None
    return np.dtype(dtype), tuple(shape), bool(fortran)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

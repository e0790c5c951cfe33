"""The on-disk episode format: one directory per episode, written atomically, read lazily.

Layout (docs/episodes.md is the full specification)::

    <root>/episode_000042/
        meta.json               format version, instruction, task, views, cameras, success,
                                metadata, and the size and sha256 of every data file
        poses.npy               [T, 7] float64 tool pose as action 7-vector (base frame, m, rad)
        timestamps_ns.npy       [T] int64, strictly increasing
        frames_<view>.npy       [T, H, W, 3] uint8 RGB, one file per view
        extra_<name>.npy        optional per-frame arrays [T, ...] (joint positions, ...)

Frames are plain `.npy` so readers memory-map them (`np.load(mmap_mode="r")`): a training
loader touches only the frames it samples. A writer fills a hidden temporary sibling
(`.episode_000042.tmp-<pid>-<hex>`), fsyncs every file and renames it into place; the rename is
atomic on POSIX, so a crash never leaves a directory that `list_episodes` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimg import __version__
from aimg.geometry import Camera

FORMAT_NAME = "aimg-episode"
FORMAT_VERSION = 1
META_FILE = "meta.json"
POSES_FILE = "poses.npy"
TIMESTAMPS_FILE = "timestamps_ns.npy"
EPISODE_PREFIX = "episode_"
INDEX_DIGITS = 6

_EPISODE_DIR = re.compile(rf"^{EPISODE_PREFIX}(\d{{{INDEX_DIGITS},}})$")
_TEMP_DIR = re.compile(rf"^\.{EPISODE_PREFIX}(\d+)\.tmp-(\d+)-[0-9a-f]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HASH_CHUNK = 1 << 22

_CORRUPT = "The episode is corrupt: delete its directory and re-collect it."


class EpisodeError(ValueError):
    """A stored episode is corrupt or incomplete; the message names the file and what to do."""


def frames_file(view: str) -> str:
    """File name of one view's frames inside an episode directory."""
    return f"frames_{view}.npy"


def extra_file(name: str) -> str:
    """File name of one extra per-frame array inside an episode directory."""
    return f"extra_{name}.npy"


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
        _validate_data(self)


def _validate_data(data: EpisodeData) -> None:
    if not isinstance(data.instruction, str):
        raise ValueError(f"instruction must be a str, got {type(data.instruction).__name__}")
    if not isinstance(data.task, str) or not data.task:
        raise ValueError("task must be a non-empty str naming the task (e.g. 'pick_cube')")
    if not isinstance(data.success, bool | np.bool_):
        raise ValueError(f"success must be a bool, got {type(data.success).__name__}")
    poses = np.asarray(data.poses)
    problem = _pose_problem(poses)
    if problem:
        raise ValueError(f"poses: {problem}")
    t = poses.shape[0]
    problem = _timestamps_problem(np.asarray(data.timestamps_ns), t)
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
        _check_name(view, "view")
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
        _check_cameras(view, data.cameras[view], t, frames.shape[1], frames.shape[2], ValueError)
    if not isinstance(data.extras, Mapping):
        raise ValueError("extras must be a dict name -> [T, ...] array")
    for name, array in data.extras.items():
        _check_name(name, "extra")
        array = np.asarray(array)
        if array.dtype.kind not in "biuf" or array.ndim < 1 or array.shape[0] != t:
            raise ValueError(
                f"extras['{name}'] must be a numeric array [T={t}, ...], got "
                f"{array.dtype} {array.shape}"
            )
    _metadata_json(data.metadata)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} name {name!r} is not usable in a file name: use 1-64 letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )


def _pose_problem(poses: np.ndarray) -> str | None:
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


def _timestamps_problem(stamps: np.ndarray, num_frames: int) -> str | None:
    if stamps.dtype.kind not in "iu":
        return f"must be integer nanoseconds (int64), got dtype {stamps.dtype}"
    if stamps.shape != (num_frames,):
        return f"must be [T={num_frames}] like the poses, got {stamps.shape}"
    steps = np.diff(stamps.astype(np.int64))
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        return f"must be strictly increasing, frame {i + 1} is not after frame {i}"
    return None


def _check_cameras(
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


def _metadata_json(metadata: object) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metadata must be JSON-serialisable (str keys; numbers, str, lists, dicts, NumPy "
            f"arrays; no NaN or inf): {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Writer.


def write_episode(root: str | Path, data: EpisodeData, index: int | None = None) -> Path:
    """Write `data` as a new episode under `root` atomically; returns its directory.

    `index=None` takes the next free index (`next_episode_index`) and, if a concurrent writer
    takes it first, the one after. An explicit index that already exists raises FileExistsError.
    Invalid `data` raises ValueError before anything touches the disk. On any failure the
    temporary directory is removed; after a hard crash it stays hidden (see
    `remove_stale_temp_dirs`) and no reader accepts it.
    """
    data.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if index is not None and (not isinstance(index, int) or index < 0):
        raise ValueError(f"episode index must be a non-negative int, got {index!r}")
    chosen = next_episode_index(root) if index is None else index
    tmp = root / f".{episode_dir_name(chosen)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_contents(tmp, data)
        final = _commit(root, tmp, chosen, retry=index is None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_contents(directory: Path, data: EpisodeData) -> None:
    files: dict[str, dict[str, Any]] = {}
    poses = np.ascontiguousarray(data.poses, dtype=np.float64)
    files[POSES_FILE] = _save_npy(directory / POSES_FILE, poses)
    stamps = np.ascontiguousarray(data.timestamps_ns, dtype=np.int64)
    files[TIMESTAMPS_FILE] = _save_npy(directory / TIMESTAMPS_FILE, stamps)
    views = []
    for view, frames in data.frames.items():
        frames = np.ascontiguousarray(frames)
        files[frames_file(view)] = _save_npy(directory / frames_file(view), frames)
        cameras = data.cameras[view]
        record: dict[str, Any] = {
            "name": view,
            "file": frames_file(view),
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
        }
        if isinstance(cameras, list | tuple):
            record["cameras"] = [camera.to_dict() for camera in cameras]
        else:
            record["camera"] = cameras.to_dict()
        views.append(record)
    extras = {}
    for name, array in data.extras.items():
        array = np.asarray(array)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        files[extra_file(name)] = _save_npy(directory / extra_file(name), array)
        extras[name] = {"file": extra_file(name), "dtype": array.dtype.str, "shape": array.shape}
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "instruction": data.instruction,
        "task": data.task,
        "success": bool(data.success),
        "num_frames": int(poses.shape[0]),
        "views": views,
        "extras": extras,
        "metadata": _metadata_json(data.metadata),
        "files": files,
        "writer": f"aimg {__version__}",
        "written_unix_ns": time.time_ns(),
    }
    text = json.dumps(meta, indent=1, allow_nan=False)
    _write_durable(directory / META_FILE, text.encode("utf-8"))
    _fsync_dir(directory)


def _save_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write one `.npy` durably; returns its size and sha256 for meta.json."""
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _write_durable(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(root: Path, tmp: Path, index: int, retry: bool) -> Path:
    """Rename the finished temporary directory to its final name (the atomic step)."""
    while True:
        final = root / episode_dir_name(index)
        if not final.exists():
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
            else:
                _fsync_dir(root)
                return final
        if not retry:
            raise FileExistsError(
                f"episode {final} already exists: choose another index or pass index=None"
            )
        index += 1


def next_episode_index(root: str | Path) -> int:
    """Index after the highest complete episode under `root` (0 if none): resumable numbering."""
    if not Path(root).exists():
        return 0
    paths = list_episodes(root)
    return _episode_index(paths[-1]) + 1 if paths else 0


def _episode_index(path: Path) -> int:
    match = _EPISODE_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like an episode directory (episode_NNNNNN)")
    return int(match.group(1))


def remove_stale_temp_dirs(root: str | Path) -> list[Path]:
    """Delete temporary directories of writers that died on this host; returns what was removed.

    Only directories whose writer process no longer exists are removed, so it is safe to call
    while other collectors write into the same root.
    """
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        match = _TEMP_DIR.match(path.name)
        if match and path.is_dir() and not _process_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Reader.


def list_episodes(root: str | Path) -> list[Path]:
    """Complete episode directories under `root`, sorted by index.

    Temporary directories of unfinished writes and directories without meta.json are skipped;
    a listed episode can still be corrupt (bit rot, truncation): `read_episode` says so.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"episode root {root} does not exist or is not a directory")
    found = []
    for path in root.iterdir():
        match = _EPISODE_DIR.match(path.name)
        if match and (path / META_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def read_episode(path: str | Path, verify: bool = False) -> Episode:
    """Open and validate one episode directory; frames stay on disk until asked for.

    Always checks the format version, every file's presence, size, dtype and shape, and the
    poses, gripper and timestamps. `verify=True` also compares sha256 hashes (reads every byte).
    Raises EpisodeError naming the file and what to do.
    """
    return Episode(Path(path), verify=verify)


def load_episodes(root: str | Path, verify: bool = False) -> list[Episode]:
    """`read_episode` for every episode `list_episodes(root)` returns, in index order."""
    return [read_episode(path, verify=verify) for path in list_episodes(root)]


def iter_episodes(root: str | Path, verify: bool = False) -> Iterator[Episode]:
    """Like `load_episodes`, one at a time."""
    for path in list_episodes(root):
        yield read_episode(path, verify=verify)


class Episode:
    """A validated episode on disk. Poses and timestamps are in memory, frames memory-mapped.

    Pickles cheaply (the path and parsed metadata; memory maps are reopened), so it can go to
    DataLoader workers.
    """

    def __init__(self, path: Path, verify: bool = False) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path)
        self._meta = meta
        self._check_files(verify)
        self._poses = self._load_small(POSES_FILE)
        self._timestamps = self._load_small(TIMESTAMPS_FILE)
        problem = _pose_problem(self._poses)
        if problem:
            raise self._error(POSES_FILE, problem)
        problem = _timestamps_problem(self._timestamps, self.num_frames)
        if problem:
            raise self._error(TIMESTAMPS_FILE, problem)
        self._poses.flags.writeable = False
        self._timestamps.flags.writeable = False
        self._cameras = self._parse_cameras()
        self._mapped: dict[str, np.ndarray] = {}

    # -- fields -------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return _episode_index(self.path)

    @property
    def instruction(self) -> str:
        return self._meta["instruction"]

    @property
    def task(self) -> str:
        return self._meta["task"]

    @property
    def success(self) -> bool:
        return self._meta["success"]

    @property
    def metadata(self) -> dict[str, Any]:
        return self._meta["metadata"]

    @property
    def num_frames(self) -> int:
        return self._meta["num_frames"]

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(view["name"] for view in self._meta["views"])

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(self._meta["extras"])

    @property
    def poses(self) -> np.ndarray:
        """[T, 7] float64 `[x, y, z, rx, ry, rz, g]`, base frame, m / rad, read-only."""
        return self._poses

    @property
    def gripper(self) -> np.ndarray:
        """[T] gripper openness in [0, 1], 1 = open."""
        return self._poses[:, 6]

    @property
    def timestamps_ns(self) -> np.ndarray:
        """[T] int64 nanoseconds, strictly increasing, read-only."""
        return self._timestamps

    @property
    def cameras(self) -> dict[str, Camera | list[Camera]]:
        """View name -> static Camera, or a list of T cameras for a moving camera."""
        return {
            view: list(cameras) if isinstance(cameras, list) else cameras
            for view, cameras in self._cameras.items()
        }

    def image_size(self, view: str) -> tuple[int, int]:
        """(height, width) of one view's frames in pixels."""
        record = self._view(view)
        return record["height"], record["width"]

    def camera_is_static(self, view: str) -> bool:
        return isinstance(self._cameras[self._view(view)["name"]], Camera)

    def camera(self, view: str, t: int = 0) -> Camera:
        """Calibration of `view` at frame `t` (the same for every t if the camera is static)."""
        cameras = self._cameras[self._view(view)["name"]]
        if isinstance(cameras, Camera):
            if not -self.num_frames <= t < self.num_frames:
                raise IndexError(f"frame {t} out of range for {self.num_frames} frames")
            return cameras
        return cameras[t]

    def frames(self, view: str) -> np.ndarray:
        """[T, H, W, 3] uint8 RGB of one view, memory-mapped read-only (index it to load)."""
        record = self._view(view)
        if view not in self._mapped:
            self._mapped[view] = np.load(
                self.path / record["file"], mmap_mode="r", allow_pickle=False
            )
        return self._mapped[view]

    def frame(self, view: str, t: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB of one view at frame `t`, loaded into memory."""
        return np.array(self.frames(view)[t])

    def extra(self, name: str) -> np.ndarray:
        """An extra per-frame array [T, ...], memory-mapped read-only."""
        if name not in self._meta["extras"]:
            raise KeyError(f"episode {self.path} has no extra {name!r}; it has {self.extra_names}")
        key = f"extra:{name}"
        if key not in self._mapped:
            file = self._meta["extras"][name]["file"]
            self._mapped[key] = np.load(self.path / file, mmap_mode="r", allow_pickle=False)
        return self._mapped[key]

    def to_data(self) -> EpisodeData:
        """Everything in memory as EpisodeData (to copy, edit or re-write an episode)."""
        return EpisodeData(
            instruction=self.instruction,
            task=self.task,
            frames={view: np.array(self.frames(view)) for view in self.view_names},
            cameras=self.cameras,
            poses=self.poses.copy(),
            timestamps_ns=self.timestamps_ns.copy(),
            success=self.success,
            metadata=json.loads(json.dumps(self.metadata)),
            extras={name: np.array(self.extra(name)) for name in self.extra_names},
        )

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"Episode({str(self.path)!r}, task={self.task!r}, frames={self.num_frames}, "
            f"views={list(self.view_names)}, success={self.success})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mapped"] = {}
        return state

    # -- validation ---------------------------------------------------------------------------

    def _view(self, view: str) -> dict[str, Any]:
        for record in self._meta["views"]:
            if record["name"] == view:
                return record
        raise KeyError(f"episode {self.path} has no view {view!r}; it has {self.view_names}")

    def _error(self, file: str, problem: str, advice: str = _CORRUPT) -> EpisodeError:
        return EpisodeError(f"episode {self.path}: {file}: {problem}. {advice}")

    def _check_files(self, verify: bool) -> None:
        meta = self._meta
        t = meta["num_frames"]
        expected: dict[str, tuple[np.dtype, tuple[int, ...] | None]] = {
            POSES_FILE: (np.dtype(np.float64), (t, 7)),
            TIMESTAMPS_FILE: (np.dtype(np.int64), (t,)),
        }
        for view in meta["views"]:
            expected[view["file"]] = (np.dtype(np.uint8), (t, view["height"], view["width"], 3))
        for name, extra in meta["extras"].items():
            if extra.get("file") != extra_file(name):
                raise self._error(META_FILE, f"extra {name!r} has no valid file entry")
            try:
                dtype = np.dtype(extra["dtype"])
                shape = tuple(int(n) for n in extra["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                raise self._error(META_FILE, f"extra {name!r} is malformed ({exc})") from exc
            if not shape or shape[0] != t:
                raise self._error(META_FILE, f"extra {name!r} shape {shape} is not [T={t}, ...]")
            expected[extra["file"]] = (dtype, shape)
        missing_records = sorted(set(expected) - set(meta["files"]))
        if missing_records:
            raise self._error(META_FILE, f"lists no size or hash for {missing_records}")
        for file, (dtype, shape) in expected.items():
            record = meta["files"][file]
            path = self.path / file
            if not path.is_file():
                raise self._error(file, "is missing")
            size = path.stat().st_size
            if size != record["bytes"]:
                raise self._error(
                    file,
                    f"has {size} bytes but {record['bytes']} were written (truncated or replaced)",
                )
            found = _npy_header(path)
            if found is None:
                raise self._error(file, "is not a valid .npy file")
            found_dtype, found_shape, fortran = found
            if found_dtype != dtype or found_shape != shape or fortran:
                raise self._error(
                    file,
                    f"holds {found_dtype} {found_shape} but meta.json expects {dtype} {shape}",
                )
            if verify and _sha256(path) != record["sha256"]:
                raise self._error(file, "sha256 does not match the one recorded when written")

    def _load_small(self, file: str) -> np.ndarray:
        try:
            return np.load(self.path / file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise self._error(file, f"cannot be read ({exc})") from exc

    def _parse_cameras(self) -> dict[str, Camera | list[Camera]]:
        cameras: dict[str, Camera | list[Camera]] = {}
        for view in self._meta["views"]:
            try:
                if "camera" in view:
                    parsed: Camera | list[Camera] = Camera.from_dict(view["camera"])
                else:
                    parsed = [Camera.from_dict(record) for record in view["cameras"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise self._error(
                    META_FILE, f"camera of view {view['name']!r} is invalid ({exc})"
                ) from exc
            _check_cameras(
                view["name"],
                parsed,
                self.num_frames,
                view["height"],
                view["width"],
                EpisodeError,
                where=f"episode {self.path}: {META_FILE}: ",
            )
            cameras[view["name"]] = parsed
        return cameras


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse and structurally validate meta.json; raises EpisodeError."""

    def error(problem: str, advice: str = _CORRUPT) -> EpisodeError:
        return EpisodeError(f"episode {path}: {META_FILE}: {problem}. {advice}")

    if not path.is_dir():
        raise EpisodeError(f"episode {path} does not exist or is not a directory")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        hint = (
            "This is the temporary directory of an interrupted write: remove it with "
            "aimg.episodes.remove_stale_temp_dirs(root) and re-collect the episode."
            if _TEMP_DIR.match(path.name)
            else "The episode is incomplete (not written by aimg.episodes.write_episode, or "
            "copied partially): delete its directory and re-collect it."
        )
        raise error("is missing", hint)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise error(f'is not an aimg episode (expected "format": "{FORMAT_NAME}")')
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise error(f"has no integer format version (got {version!r})")
    if version > FORMAT_VERSION:
        raise error(
            f"uses episode format version {version}, this aimg ({__version__}) reads up to "
            f"{FORMAT_VERSION}",
            "Upgrade aimg to read it.",
        )
    if version < 1:
        raise error(f"has an invalid format version {version}")
    types = {
        "instruction": str,
        "task": str,
        "success": bool,
        "num_frames": int,
        "views": list,
        "extras": dict,
        "metadata": dict,
        "files": dict,
    }
    for key, kind in types.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise error(f"field {key!r} must be a {kind.__name__}, got {value!r:.80}")
    if meta["num_frames"] < 1:
        raise error(f"num_frames must be >= 1, got {meta['num_frames']}")
    if not meta["views"]:
        raise error("lists no views")
    seen = set()
    for view in meta["views"]:
        if not isinstance(view, dict) or not isinstance(view.get("name"), str):
            raise error(f"view record {view!r:.80} has no name")
        name = view["name"]
        if not _NAME.match(name) or name in seen:
            raise error(f"view name {name!r} is invalid or repeated")
        seen.add(name)
        if view.get("file") != frames_file(name):
            raise error(f"view {name!r} must store its frames in {frames_file(name)!r}")
        for key in ("height", "width"):
            value = view.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise error(f"view {name!r} has invalid {key} {value!r}")
        if ("camera" in view) == ("cameras" in view):
            raise error(f"view {name!r} must have exactly one of 'camera' or 'cameras'")
        if "cameras" in view and not isinstance(view["cameras"], list):
            raise error(f"view {name!r}: 'cameras' must be a list of per-frame cameras")
    for name, extra in meta["extras"].items():
        if not _NAME.match(name) or not isinstance(extra, dict):
            raise error(f"extra {name!r} is invalid")
    for file, record in meta["files"].items():
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("bytes"), int)
            or not isinstance(record.get("sha256"), str)
        ):
            raise error(f"files[{file!r}] must have integer 'bytes' and str 'sha256'")
    return meta


def _npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool] | None:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = [
    "FORMAT_VERSION",
    "Episode",
    "EpisodeData",
    "EpisodeError",
    "episode_dir_name",
    "iter_episodes",
    "list_episodes",
    "load_episodes",
    "next_episode_index",
    "read_episode",
    "remove_stale_temp_dirs",
    "write_episode",
]

"""Reading episodes: `read_episode` validates a directory and returns a lazy `Episode`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aimg import __version__
from aimg.episodes.layout import episode_index, list_episodes
from aimg.episodes.schema import (
    CORRUPT_ADVICE,
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    NAME_RE,
    POSES_FILE,
    TEMP_DIR_RE,
    TIMESTAMPS_FILE,
    EpisodeData,
    EpisodeError,
    check_cameras,
    extra_file,
    frames_file,
    npy_header,
    pose_problem,
    sha256_file,
    stream_file,
    timestamps_problem,
)
from aimg.geometry import Camera


def read_episode(path: str | Path, verify: bool = False) -> Episode:
    """Open and validate one episode directory; frames stay on disk until asked for.

    Always checks the format version, every file's presence, size, dtype and shape (frames,
    extras and streams), and the poses, gripper and timestamps. `verify=True` also compares
    sha256 hashes (reads every byte). Raises EpisodeError naming the file and what to do.
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
        meta = read_meta(self.path)
        self._meta = meta
        self._check_files(verify)
        self._poses = self._load_small(POSES_FILE)
        self._timestamps = self._load_small(TIMESTAMPS_FILE)
        problem = pose_problem(self._poses)
        if problem:
            raise self._error(POSES_FILE, problem)
        problem = timestamps_problem(self._timestamps, self.num_frames)
        if problem:
            raise self._error(TIMESTAMPS_FILE, problem)
        self._poses.flags.writeable = False
        self._timestamps.flags.writeable = False
        self._cameras = self._parse_cameras()
        self._mapped: dict[str, np.ndarray] = {}

    # -- fields -------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return episode_index(self.path)

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
    def stream_names(self) -> tuple[str, ...]:
        """Streams (arrays not tied to frames) this episode holds; () for episodes without."""
        return tuple(self._meta.get("streams", {}))

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

    def stream(self, name: str) -> np.ndarray:
        """A stream array (any shape), memory-mapped read-only."""
        streams = self._meta.get("streams", {})
        if name not in streams:
            raise KeyError(
                f"episode {self.path} has no stream {name!r}; it has {self.stream_names}"
            )
        key = f"stream:{name}"
        if key not in self._mapped:
            path = self.path / streams[name]["file"]
            empty = 0 in streams[name]["shape"]  # a zero-length mapping is not allowed
            self._mapped[key] = np.load(path, mmap_mode=None if empty else "r", allow_pickle=False)
            self._mapped[key].flags.writeable = False
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
            streams={name: np.array(self.stream(name)) for name in self.stream_names},
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

    def _error(self, file: str, problem: str, advice: str = CORRUPT_ADVICE) -> EpisodeError:
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
            dtype, shape = self._array_record("extra", name, extra, extra_file(name))
            if not shape or shape[0] != t:
                raise self._error(META_FILE, f"extra {name!r} shape {shape} is not [T={t}, ...]")
            expected[extra["file"]] = (dtype, shape)
        for name, stream in meta.get("streams", {}).items():
            dtype, shape = self._array_record("stream", name, stream, stream_file(name))
            if not shape or min(shape) < 0 or dtype.kind not in "biuf":
                raise self._error(
                    META_FILE, f"stream {name!r} must be numeric with ndim >= 1: {dtype} {shape}"
                )
            expected[stream["file"]] = (dtype, shape)
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
            found = npy_header(path)
            if found is None:
                raise self._error(file, "is not a valid .npy file")
            found_dtype, found_shape, fortran = found
            if found_dtype != dtype or found_shape != shape or fortran:
                raise self._error(
                    file,
                    f"holds {found_dtype} {found_shape} but meta.json expects {dtype} {shape}",
                )
            if verify and sha256_file(path) != record["sha256"]:
                raise self._error(file, "sha256 does not match the one recorded when written")

    def _array_record(
        self, kind: str, name: str, record: dict, file: str
    ) -> tuple[np.dtype, tuple[int, ...]]:
        """dtype and shape of an extra's or a stream's meta.json record (file name checked)."""
        if record.get("file") != file:
            raise self._error(META_FILE, f"{kind} {name!r} has no valid file entry")
        try:
            return np.dtype(record["dtype"]), tuple(int(n) for n in record["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error(META_FILE, f"{kind} {name!r} is malformed ({exc})") from exc

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
            check_cameras(
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


def read_meta(path: Path) -> dict[str, Any]:
    """Parse and structurally validate meta.json; raises EpisodeError."""

    def error(problem: str, advice: str = CORRUPT_ADVICE) -> EpisodeError:
        return EpisodeError(f"episode {path}: {META_FILE}: {problem}. {advice}")

    if not path.is_dir():
        raise EpisodeError(f"episode {path} does not exist or is not a directory")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        hint = (
            "This is the temporary directory of an interrupted write: remove it with "
            "aimg.episodes.remove_stale_temp_dirs(root) and re-collect the episode."
            if TEMP_DIR_RE.match(path.name)
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
    if not meta["task"]:
        raise error("field 'task' is empty")
    if meta["num_frames"] < 1:
        raise error(f"num_frames must be >= 1, got {meta['num_frames']}")
    if not meta["views"]:
        raise error("lists no views")
    seen = set()
    for view in meta["views"]:
        if not isinstance(view, dict) or not isinstance(view.get("name"), str):
            raise error(f"view record {view!r:.80} has no name")
        name = view["name"]
        if not NAME_RE.match(name) or name in seen:
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
        if not NAME_RE.match(name) or not isinstance(extra, dict):
            raise error(f"extra {name!r} is invalid")
    streams = meta.get("streams", {})  # optional: episodes written before streams existed
    if not isinstance(streams, dict):
        raise error(f"field 'streams' must be a dict, got {streams!r:.80}")
    for name, stream in streams.items():
        if not NAME_RE.match(name) or not isinstance(stream, dict):
            raise error(f"stream {name!r} is invalid")
    for file, record in meta["files"].items():
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("bytes"), int)
            or not isinstance(record.get("sha256"), str)
        ):
            raise error(f"files[{file!r}] must have integer 'bytes' and str 'sha256'")
    return meta

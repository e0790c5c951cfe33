"""Atomic episode writers: everything goes into a hidden temporary directory, then one rename.

`write_episode` writes an in-memory `EpisodeData`; `EpisodeWriter` streams frames (and, through
`open_stream`, any growing array) to disk as they arrive, so long real-robot episodes need not fit
in memory. Both validate their input before it reaches the disk, fsync every file, write
meta.json last and rename the directory into place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from aimg import __version__
from aimg.episodes.layout import next_episode_index
from aimg.episodes.schema import (
    EPISODE_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_DIGITS,
    META_FILE,
    POSES_FILE,
    TIMESTAMPS_FILE,
    EpisodeData,
    check_cameras,
    check_name,
    check_stream,
    episode_dir_name,
    extra_file,
    frames_file,
    metadata_json,
    pose_problem,
    sha256_file,
    stream_file,
)
from aimg.geometry import Camera


def write_episode(root: str | Path, data: EpisodeData, index: int | None = None) -> Path:
    """Write `data` as a new episode under `root` atomically; returns its directory.

    `index=None` takes the next free index (`next_episode_index`) and, if a concurrent writer
    takes it first, the one after. An explicit index that already exists raises FileExistsError.
    Invalid `data` raises ValueError before anything touches the disk. On any failure the
    temporary directory is removed; after a hard crash it stays hidden (see
    `remove_stale_temp_dirs`) and no reader accepts it.
    """
    data.validate()
    _check_index(index)
    tmp = _make_temp_dir(Path(root), index)
    try:
        files: dict[str, dict[str, Any]] = {}
        views = []
        for view, frames in data.frames.items():
            files[frames_file(view)] = _save_npy(tmp / frames_file(view), frames)
            views.append(_view_record(view, frames.shape[1], frames.shape[2], data.cameras[view]))
        streams = {}
        for name, array in data.streams.items():
            files[stream_file(name)], streams[name] = _save_stream(tmp, name, np.asarray(array))
        return _publish(
            tmp,
            index,
            files,
            instruction=data.instruction,
            task=data.task,
            success=data.success,
            poses=data.poses,
            timestamps_ns=data.timestamps_ns,
            views=views,
            extras=data.extras,
            streams=streams,
            metadata=data.metadata,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class EpisodeWriter:
    """Streams one episode to disk frame by frame; `commit` publishes it atomically.

    For recordings too long to hold in memory (a real robot at 15 Hz for minutes)::

        views = {"front": front_camera, "wrist": (480, 640)}   # static Camera or (H, W) if moving
        with EpisodeWriter(root, "put the cup on the plate", "cup_on_plate", views) as writer:
            for ...:
                writer.append({"front": rgb0, "wrist": rgb1}, pose, time.monotonic_ns(),
                              cameras={"wrist": wrist_camera_now})
            path = writer.commit(success=True, metadata={"operator": "..."})

    Each `append` is validated before any byte of it is written (ValueError, episode unchanged).
    Frames go straight into the temporary directory; poses, timestamps and extras stay in
    memory. Streams (arrays not tied to frames) are written whole with `add_stream`, or item by
    item through `open_stream`. Leaving the `with` block without `commit`, or with an exception,
    discards the episode. Not thread-safe: callers on several threads hold one lock.
    """

    def __init__(
        self,
        root: str | Path,
        instruction: str,
        task: str,
        views: Mapping[str, Camera | tuple[int, int]],
        index: int | None = None,
    ) -> None:
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        if not isinstance(task, str) or not task:
            raise ValueError("task must be a non-empty str naming the task (e.g. 'pick_cube')")
        if not isinstance(views, Mapping) or not views:
            raise ValueError("views must be a non-empty dict: view name -> Camera or (H, W)")
        self._sizes: dict[str, tuple[int, int]] = {}
        self._static: dict[str, Camera] = {}
        for view, spec in views.items():
            check_name(view, "view")
            if isinstance(spec, Camera):
                self._static[view] = spec
                self._sizes[view] = (spec.height, spec.width)
            elif (
                isinstance(spec, tuple | list)
                and len(spec) == 2
                and all(isinstance(n, int) and n > 0 for n in spec)
            ):
                self._sizes[view] = (int(spec[0]), int(spec[1]))
            else:
                raise ValueError(
                    f"views['{view}'] must be a static Camera or (height, width) of a moving "
                    f"camera whose Camera is given with every append, got {spec!r}"
                )
        _check_index(index)
        self.instruction = instruction
        self.task = task
        self._index = index
        self._poses: list[np.ndarray] = []
        self._stamps: list[int] = []
        self._moving: dict[str, list[Camera]] = {
            v: [] for v in self._sizes if v not in self._static
        }
        self._extras: dict[str, list[np.ndarray]] | None = None
        self._tmp = _make_temp_dir(Path(root), index)
        self._frame_files = {
            view: NpyAppender(self._tmp / frames_file(view), np.uint8, (h, w, 3))
            for view, (h, w) in self._sizes.items()
        }
        self._stream_files: dict[str, dict[str, Any]] = {}
        self._stream_records: dict[str, dict[str, Any]] = {}
        self._open_streams: dict[str, NpyAppender] = {}
        self._closed = False

    @property
    def num_frames(self) -> int:
        return len(self._poses)

    @property
    def temp_dir(self) -> Path:
        """Where the unfinished episode lives until `commit`."""
        return self._tmp

    def append(
        self,
        frames: Mapping[str, np.ndarray],
        pose: np.ndarray,
        timestamp_ns: int,
        cameras: Mapping[str, Camera] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Add one frame: RGB uint8 [H, W, 3] per view, pose [7], timestamp (ns, increasing).

        `cameras` holds this frame's Camera of every moving view (and nothing else); `extras`
        the same named arrays (fixed shape and dtype) at every frame, or never.
        """
        self._check_open()
        t = self.num_frames
        if not isinstance(frames, Mapping) or set(frames) != set(self._sizes):
            raise ValueError(
                f"frame {t}: frames must have exactly the views {list(self._sizes)}, got "
                f"{list(frames) if isinstance(frames, Mapping) else type(frames).__name__}"
            )
        for view, image in frames.items():
            h, w = self._sizes[view]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise ValueError(f"frame {t}: frames['{view}'] must be a uint8 RGB array")
            if image.shape != (h, w, 3):
                raise ValueError(
                    f"frame {t}: frames['{view}'] must be [{h}, {w}, 3], got {image.shape}"
                )
        pose = np.asarray(pose, dtype=np.float64)
        problem = pose_problem(pose.reshape(1, -1)) if pose.shape == (7,) else "must be [7]"
        if problem:
            raise ValueError(f"frame {t}: pose {problem}")
        if not isinstance(timestamp_ns, int | np.integer):
            raise ValueError(f"frame {t}: timestamp_ns must be an int (ns), got {timestamp_ns!r}")
        if self._stamps and timestamp_ns <= self._stamps[-1]:
            raise ValueError(
                f"frame {t}: timestamp_ns {timestamp_ns} is not after the previous frame's "
                f"{self._stamps[-1]} (timestamps must be strictly increasing)"
            )
        cameras = dict(cameras or {})
        if set(cameras) != set(self._moving):
            raise ValueError(
                f"frame {t}: cameras must hold exactly the moving views {list(self._moving)}, "
                f"got {list(cameras)}"
            )
        for view, camera in cameras.items():
            check_cameras(view, camera, 1, *self._sizes[view], ValueError, where=f"frame {t}: ")
        extras = {name: np.asarray(value) for name, value in (extras or {}).items()}
        self._check_extras(t, extras)
        for view, image in frames.items():
            self._frame_files[view].append(image)
        self._poses.append(pose)
        self._stamps.append(int(timestamp_ns))
        for view, camera in cameras.items():
            self._moving[view].append(camera)
        if self._extras is None:
            self._extras = {name: [] for name in extras}
        for name, value in extras.items():
            self._extras[name].append(value)

    def _check_extras(self, t: int, extras: dict[str, np.ndarray]) -> None:
        for name, value in extras.items():
            check_name(name, "extra")
            if value.dtype.kind not in "biuf":
                raise ValueError(f"frame {t}: extras['{name}'] must be numeric, got {value.dtype}")
        if self._extras is None:
            return
        if set(extras) != set(self._extras):
            raise ValueError(
                f"frame {t}: extras must have the same names at every frame, expected "
                f"{list(self._extras)}, got {list(extras)}"
            )
        for name, value in extras.items():
            first = self._extras[name][0]
            if value.shape != first.shape or value.dtype != first.dtype:
                raise ValueError(
                    f"frame {t}: extras['{name}'] is {value.dtype} {value.shape}, earlier "
                    f"frames were {first.dtype} {first.shape}"
                )

    @property
    def stream_names(self) -> tuple[str, ...]:
        """Streams added or opened so far."""
        return (*self._stream_records, *self._open_streams)

    def add_stream(self, name: str, array: np.ndarray) -> None:
        """Store a whole numeric array (any shape, ndim >= 1) as stream `name`, durably, now.

        It is written into the temporary directory immediately, so it need not stay in memory.
        Raises ValueError (nothing written) for a bad name or dtype or a name already used.
        """
        self._check_open()
        array = np.asarray(array)
        self._check_new_stream(name)
        check_stream(name, array)
        file_record, record = _save_stream(self._tmp, name, array)
        self._stream_files[stream_file(name)] = file_record
        self._stream_records[name] = record

    def open_stream(self, name: str, dtype: DTypeLike, item_shape: Sequence[int]) -> NpyAppender:
        """A stream `name` of shape [N, *item_shape] that grows by `append(item)` until commit.

        Items go straight to disk (for arrays too big to keep in memory, e.g. every plan's
        action images); `commit` fixes the header with the final N (0 is allowed).
        """
        self._check_open()
        self._check_new_stream(name)
        shape = tuple(item_shape)
        if any(not isinstance(n, int | np.integer) or n < 0 for n in shape):
            raise ValueError(f"stream {name!r}: item_shape must be non-negative ints, got {shape}")
        check_stream(name, np.empty((0, *shape), dtype=dtype))
        appender = NpyAppender(self._tmp / stream_file(name), dtype, shape)
        self._open_streams[name] = appender
        return appender

    def _check_new_stream(self, name: str) -> None:
        if name in self._stream_records or name in self._open_streams:
            raise ValueError(f"stream {name!r} was already added to this episode")

    def commit(self, success: bool, metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the files and publish the episode atomically; returns its directory."""
        self._check_open()
        if not isinstance(success, bool | np.bool_):
            raise ValueError(f"success must be a bool, got {type(success).__name__}")
        metadata = dict(metadata or {})
        metadata_json(metadata)
        if not self._poses:
            raise ValueError("no frames were appended: nothing to commit (use abort to discard)")
        self._closed = True
        try:
            files = {
                frames_file(view): appender.finish() for view, appender in self._frame_files.items()
            }
            files.update(self._stream_files)
            streams = dict(self._stream_records)
            for name, appender in self._open_streams.items():
                files[stream_file(name)] = appender.finish()
                streams[name] = appender.record()
            views = [
                _view_record(view, h, w, self._static.get(view) or self._moving[view])
                for view, (h, w) in self._sizes.items()
            ]
            return _publish(
                self._tmp,
                self._index,
                files,
                instruction=self.instruction,
                task=self.task,
                success=success,
                poses=np.stack(self._poses),
                timestamps_ns=np.asarray(self._stamps, dtype=np.int64),
                views=views,
                extras={name: np.stack(values) for name, values in (self._extras or {}).items()},
                streams=streams,
                metadata=metadata,
            )
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Discard the episode and its temporary directory (idempotent)."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        for appender in (*self._frame_files.values(), *self._open_streams.values()):
            appender.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this EpisodeWriter was already committed or aborted")

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.abort()


class NpyAppender:
    """An .npy file of [N, *item_shape] written item by item (frames, or an open stream).

    The header is a fixed-size placeholder until `finish` knows N and rewrites it in place; until
    then the file is only ever inside an episode's temporary directory. Little-endian, C order.
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: DTypeLike, item_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.item_shape = tuple(int(n) for n in item_shape)
        self.count = 0
        header = _npy_header_bytes(self.dtype, (0, *self.item_shape))  # refuses a huge shape
        self._file = open(path, "wb")  # noqa: SIM115 - kept open across appends
        self._file.write(header)

    def append(self, item: np.ndarray) -> None:
        """Write one item [*item_shape] (a dtype that casts to the stream's within its kind)."""
        if self._file.closed:
            raise RuntimeError(f"{self.path.name}: the episode was already committed or aborted")
        item = np.asarray(item)
        if item.shape != self.item_shape:
            raise ValueError(
                f"{self.path.name}: items must be {list(self.item_shape)}, got {list(item.shape)}"
            )
        if not np.can_cast(item.dtype, self.dtype, "same_kind"):
            raise ValueError(f"{self.path.name}: items must be {self.dtype}, got {item.dtype}")
        self._file.write(np.ascontiguousarray(item, dtype=self.dtype).data)
        self.count += 1

    def finish(self) -> dict[str, Any]:
        """Fix the header, fsync and close; returns the size and sha256 for meta.json."""
        self._file.seek(0)
        self._file.write(_npy_header_bytes(self.dtype, (self.count, *self.item_shape)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return {"bytes": self.path.stat().st_size, "sha256": sha256_file(self.path)}

    def record(self) -> dict[str, Any]:
        """Its meta.json stream record."""
        return {
            "file": self.path.name,
            "dtype": self.dtype.str,
            "shape": [self.count, *self.item_shape],
        }

    def close(self) -> None:
        self._file.close()


def _npy_header_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header padded to exactly `NpyAppender.HEADER_BYTES` bytes."""
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    text = repr(fields)
    room = NpyAppender.HEADER_BYTES - 10 - 1
    if len(text) > room:
        raise ValueError(f"shape {shape} is too large for a streamed .npy header")
    text = text.ljust(room) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _check_index(index: int | None) -> None:
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise ValueError(f"episode index must be a non-negative int, got {index!r}")


def _make_temp_dir(root: Path, index: int | None) -> Path:
    """The hidden directory an episode is written into; refuses a taken index up front."""
    root.mkdir(parents=True, exist_ok=True)
    if index is not None and (root / episode_dir_name(index)).exists():
        raise _exists_error(root / episode_dir_name(index))
    label = "next" if index is None else f"{index:0{INDEX_DIGITS}d}"
    tmp = root / f".{EPISODE_PREFIX}{label}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _view_record(
    view: str, height: int, width: int, cameras: Camera | Sequence[Camera]
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": view,
        "file": frames_file(view),
        "height": int(height),
        "width": int(width),
    }
    if isinstance(cameras, Camera):
        record["camera"] = cameras.to_dict()
    else:
        record["cameras"] = [camera.to_dict() for camera in cameras]
    return record


def _publish(
    tmp: Path,
    index: int | None,
    files: dict[str, dict[str, Any]],
    *,
    instruction: str,
    task: str,
    success: bool,
    poses: np.ndarray,
    timestamps_ns: np.ndarray,
    views: list[dict[str, Any]],
    extras: Mapping[str, np.ndarray],
    streams: Mapping[str, dict[str, Any]],
    metadata: Mapping[str, Any],
) -> Path:
    """Write the small arrays and meta.json into `tmp`, then rename it into place."""
    poses = np.asarray(poses, dtype=np.float64)
    files[POSES_FILE] = _save_npy(tmp / POSES_FILE, poses)
    files[TIMESTAMPS_FILE] = _save_npy(tmp / TIMESTAMPS_FILE, np.asarray(timestamps_ns, np.int64))
    extra_records = {}
    for name, array in extras.items():
        array = np.asarray(array)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        files[extra_file(name)] = _save_npy(tmp / extra_file(name), array)
        extra_records[name] = {
            "file": extra_file(name),
            "dtype": array.dtype.str,
            "shape": list(array.shape),
        }
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "instruction": instruction,
        "task": task,
        "success": bool(success),
        "num_frames": int(poses.shape[0]),
        "views": views,
        "extras": extra_records,
        "streams": dict(streams),
        "metadata": metadata_json(metadata),
        "files": files,
        "writer": f"aimg {__version__}",
        "written_unix_ns": time.time_ns(),
    }
    _write_durable(tmp / META_FILE, json.dumps(meta, indent=1, allow_nan=False).encode("utf-8"))
    _fsync_dir(tmp)
    root = tmp.parent
    return _commit(root, tmp, next_episode_index(root) if index is None else index, index is None)


def _save_stream(tmp: Path, name: str, array: np.ndarray) -> tuple[dict, dict[str, Any]]:
    """Write stream `name` into `tmp`; returns its files record and its meta.json record."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    record = {"file": stream_file(name), "dtype": array.dtype.str, "shape": list(array.shape)}
    return _save_npy(tmp / stream_file(name), array), record


def _save_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write one C-order `.npy` durably; returns its size and sha256 for meta.json."""
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
            raise _exists_error(final)
        index += 1


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(
        f"episode {path} already exists: choose another index or pass index=None"
    )

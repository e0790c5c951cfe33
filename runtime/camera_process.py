"""`CameraProcess`: a camera rig read continuously in its own process into shared memory.

One process per device (deployment notes): a RealSense delivers at its own rate and the sim
renders for 10-20 ms per read, and neither may make the runtime's other loops wait. The
process builds its rig with a picklable factory, reads it in a loop (paced to `fps` if given)
and writes every frame set into a ring of `slots` slots in `SharedMemory`; the client copies the
newest complete one out. Each slot is guarded by a seqlock: its sequence number is odd while
the writer fills it, and a reader that sees the number change (or odd) retries, so a reader
never returns a torn frame set and the writer never waits for a reader.

Health: a rig that raises is dropped and rebuilt with exponential backoff (state
"reconnecting", `reconnects`, `last_error`); a `read()` that does not return within
`stall_timeout_s` is reported as "stalled"; in both cases no frame arrives and `frame_age_s()`
grows, which is what the runtime's watchdog watches. Device timestamps that go backwards are
counted and the frame set is flagged (`extras["timestamps_backwards"]`).

Memory layout (int64 words unless said): a status block (`_H_*` fields) and the last error text
(UTF-8, `_ERROR_BYTES`); per slot a header `[seq, counter, flags, device_ns x V, host_ns x V]`;
then per slot and view the image bytes [H, W, 3] uint8, every region 64-byte aligned.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from aimg.geometry import Camera
from aimg.robot.interfaces import CameraRig, RigFrames

RigFactory = Callable[[], CameraRig]

#: `RigFrames.extras` keys of a frame set from `CameraProcess` (0-d arrays).
EXTRA_COUNTER = "frame_counter"
EXTRA_TIMESTAMPS_BACKWARDS = "timestamps_backwards"
EXTRA_SEQUENCE = "slot_sequence"

STATES = ("starting", "running", "reconnecting", "stalled", "stopped")
FAULTS = ("pause", "resume", "timestamps_back", "raise")

(
    _H_STATUS_SEQ,
    _H_STATE,
    _H_FRAMES,
    _H_DROPPED,
    _H_ERRORS,
    _H_RECONNECTS,
    _H_BACKWARDS,
    _H_ERROR_NS,
    _H_ERROR_LEN,
    _H_PERIOD_P50,
    _H_PERIOD_P99,
    _H_READ_P50,
    _H_READ_P99,
    _H_LATEST,
    _H_CONSUMED,
    _H_WORDS,
) = range(16)
_ERROR_BYTES = 1024
_FLAG_BACKWARDS = 1
_BACKOFF_S = (0.1, 2.0)


#: How long the spawned camera process may take to start Python and import before it tries the
#: rig; `start_timeout_s` (the rig's own connect time) counts from then.
SPAWN_TIMEOUT_S = 60.0


def _align(offset: int) -> int:
    return -(-offset // 64) * 64


_fence_locks = threading.local()


def _fence() -> None:
    """Order the stores (or loads) before this call before those after it.

    Releasing then re-acquiring a held lock is a release followed by an acquire: the seqlock
    needs that on weakly ordered CPUs (aarch64 Jetson); on x86 it only costs ~0.2 us.
    """
    lock = getattr(_fence_locks, "lock", None)
    if lock is None:
        lock = _fence_locks.lock = threading.Lock()
        lock.acquire()
    lock.release()
    lock.acquire()


@dataclass(frozen=True)
class _Layout:
    """Where everything lives in the shared block (see the module docstring)."""

    view_names: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]
    slots: int

    @property
    def slot_words(self) -> int:
        return _align((3 + 2 * len(self.view_names)) * 8) // 8

    @property
    def slot_headers_offset(self) -> int:
        return _align(_H_WORDS * 8 + _ERROR_BYTES)

    @property
    def images_offset(self) -> int:
        return _align(self.slot_headers_offset + self.slots * self.slot_words * 8)

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return tuple(_align(h * w * c) for h, w, c in self.shapes)

    @property
    def size(self) -> int:
        return self.images_offset + self.slots * sum(self.image_sizes)

    def views(self, buffer: memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Numpy views: status [_H_WORDS], error text [bytes], slot headers [slots, words],
        images[slot][view] [H, W, 3] uint8."""
        status = np.ndarray((_H_WORDS,), np.int64, buffer, 0)
        error = np.ndarray((_ERROR_BYTES,), np.uint8, buffer, _H_WORDS * 8)
        headers = np.ndarray(
            (self.slots, self.slot_words), np.int64, buffer, self.slot_headers_offset
        )
        images = []
        offset = self.images_offset
        for _ in range(self.slots):
            slot = []
            for shape, size in zip(self.shapes, self.image_sizes, strict=True):
                slot.append(np.ndarray(shape, np.uint8, buffer, offset))
                offset += size
            images.append(slot)
        return status, error, headers, images


@dataclass(frozen=True)
class CameraStats:
    """Health of a camera process. Periods and read times in seconds (over the last 256 reads);
    `frames_dropped`: frame sets overwritten before any `latest()` / `wait_newer()` saw them;
    `read_errors`: reads that raised plus reads reported stalled; `torn_retries`: reads of this
    client that met a slot being written and retried."""

    state: str
    alive: bool
    frames_read: int
    frames_dropped: int
    read_errors: int
    reconnects: int
    timestamps_backwards: int
    read_period_p50_s: float
    read_period_p99_s: float
    read_time_p50_s: float
    read_time_p99_s: float
    last_error: str
    last_error_age_s: float
    torn_retries: int


# -- the camera process ------------------------------------------------------------------------


class _Faults:
    """Test hooks applied around `rig.read()`: pause (a read that does not return), clock
    jumps back, reads that raise."""

    def __init__(self) -> None:
        self.paused = False
        self.shift_ns = 0
        self.raise_count = 0

    def apply(self, message: tuple) -> None:
        _, fault, params = message
        if fault == "pause":
            self.paused = True
        elif fault == "resume":
            self.paused = False
        elif fault == "timestamps_back":
            self.shift_ns += round(float(params.get("seconds", 1.0)) * 1e9)
        elif fault == "raise":
            self.raise_count += int(params.get("count", 1))

    def read(self, rig: CameraRig, stop: threading.Event) -> RigFrames:
        while self.paused and not stop.is_set():
            stop.wait(0.005)
        if self.raise_count > 0:
            self.raise_count -= 1
            raise RuntimeError("injected read failure")
        frames = rig.read()
        if self.shift_ns:
            frames = RigFrames(
                images=frames.images,
                device_timestamps_ns={
                    k: v - self.shift_ns for k, v in frames.device_timestamps_ns.items()
                },
                host_timestamps_ns=frames.host_timestamps_ns,
            )
        return frames


class _Writer:
    """The camera process's side: publishes frame sets and status into the shared block."""

    def __init__(self, shm: SharedMemory, layout: _Layout) -> None:
        self.layout = layout
        self.status, self.error, self.headers, self.images = layout.views(shm.buf)
        self.counter = 0
        self.last_device = [None] * len(layout.view_names)
        self.status_lock = threading.Lock()
        self.periods: deque[int] = deque(maxlen=256)
        self.read_times: deque[int] = deque(maxlen=256)
        self.last_write_ns: int | None = None
        self.last_stats_ns = 0

    def write(self, frames: RigFrames, read_ns: int) -> None:
        layout = self.layout
        views = len(layout.view_names)
        flags = 0
        device = []
        for i, name in enumerate(layout.view_names):
            image = frames.images[name]
            if image.shape != layout.shapes[i] or image.dtype != np.uint8:
                raise ValueError(
                    f"view {name!r} gave {image.dtype} {image.shape}, but the rig's cameras "
                    f"say uint8 {layout.shapes[i]}"
                )
            stamp = int(frames.device_timestamps_ns[name])
            if self.last_device[i] is not None and stamp < self.last_device[i]:
                flags |= _FLAG_BACKWARDS
            self.last_device[i] = stamp
            device.append(stamp)
        self.counter += 1
        slot = self.counter % layout.slots
        header = self.headers[slot]
        overwritten = int(header[1])
        header[0] += 1
        _fence()
        for i, name in enumerate(layout.view_names):
            self.images[slot][i][...] = frames.images[name]
        header[1] = self.counter
        header[2] = flags
        header[3 : 3 + views] = device
        header[3 + views : 3 + 2 * views] = [
            int(frames.host_timestamps_ns[name]) for name in layout.view_names
        ]
        _fence()
        header[0] += 1
        _fence()
        self.status[_H_LATEST] = self.counter

        now = time.monotonic_ns()
        if self.last_write_ns is not None:
            self.periods.append(now - self.last_write_ns)
        self.last_write_ns = now
        self.read_times.append(read_ns)
        with self.status_lock:
            self._begin()
            self.status[_H_FRAMES] = self.counter
            self.status[_H_STATE] = STATES.index("running")
            if overwritten and overwritten > self.status[_H_CONSUMED]:
                self.status[_H_DROPPED] += 1
            if flags & _FLAG_BACKWARDS:
                self.status[_H_BACKWARDS] += 1
            if len(self.periods) < 16 or now - self.last_stats_ns > 200_000_000:
                self.last_stats_ns = now
                for field, values in (
                    (_H_PERIOD_P50, self.periods),
                    (_H_READ_P50, self.read_times),
                ):
                    if values:
                        p50, p99 = np.percentile(np.fromiter(values, np.int64), [50, 99])
                        self.status[field], self.status[field + 1] = int(p50), int(p99)
            self._end()

    def _begin(self) -> None:
        self.status[_H_STATUS_SEQ] += 1
        _fence()

    def _end(self) -> None:
        _fence()
        self.status[_H_STATUS_SEQ] += 1

    def release(self) -> None:
        """Drop the views into the shared block (it cannot be closed while they exist)."""
        self.status = self.error = self.headers = self.images = None

    def report(self, state: str, error: str | None = None, reconnect: bool = False) -> None:
        with self.status_lock:
            self._begin()
            self.status[_H_STATE] = STATES.index(state)
            if error is not None:
                text = error.encode("utf-8", "replace")[:_ERROR_BYTES]
                self.error[: len(text)] = np.frombuffer(text, np.uint8)
                self.status[_H_ERROR_LEN] = len(text)
                self.status[_H_ERROR_NS] = time.monotonic_ns()
                self.status[_H_ERRORS] += 1
            if reconnect:
                self.status[_H_RECONNECTS] += 1
            self._end()


def _connect_rig(factory: RigFactory) -> CameraRig:
    rig = factory()
    try:
        rig.connect()
    except BaseException:
        with contextlib.suppress(Exception):
            rig.disconnect()
        raise
    return rig


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _camera_main(
    factory: RigFactory,
    fps: float | None,
    slots: int,
    connection: Connection,
    stop: threading.Event,
    stall_timeout_s: float,
) -> None:
    """The camera process: connect, hand the layout over, then read and publish until stopped."""
    backoff = _BACKOFF_S[0]
    rig = None
    connection.send(("started",))  # the connect timeout runs from here, not from the spawn
    while rig is None:
        try:
            rig = _connect_rig(factory)
            names = tuple(rig.view_names)
            cameras = rig.cameras
        except Exception as exc:
            rig = None
            connection.send(("error", _describe(exc)))
            if stop.wait(backoff):
                return
            backoff = min(2 * backoff, _BACKOFF_S[1])
    shapes = tuple((cameras[name].height, cameras[name].width, 3) for name in names)
    layout = _Layout(names, shapes, slots)
    connection.send(("layout", names, cameras, layout))
    message = connection.recv()
    if message is None:
        rig.disconnect()
        return
    shm = SharedMemory(name=message[1])
    writer = _Writer(shm, layout)
    faults = _Faults()
    reading_since: list[int | None] = [None]

    def watch() -> None:
        """Apply control messages, report stalled reads, stop when the parent goes away."""
        stalled = False
        while not stop.is_set():
            try:
                if connection.poll(0.02):
                    faults.apply(connection.recv())
            except (EOFError, OSError):
                stop.set()
                return
            since = reading_since[0]
            late = since is not None and time.monotonic_ns() - since > stall_timeout_s * 1e9
            if late and not stalled:
                age = (time.monotonic_ns() - since) / 1e9
                writer.report("stalled", f"read() has not returned for {age:.1f} s")
            stalled = late

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    period_ns = round(1e9 / fps) if fps else 0
    due = time.monotonic_ns()
    backoff = _BACKOFF_S[0]
    try:
        while not stop.is_set():
            try:
                if rig is None:
                    writer.report("reconnecting", reconnect=True)
                    rig = _connect_rig(factory)
                    if tuple(rig.view_names) != names or any(
                        (rig.cameras[n].height, rig.cameras[n].width, 3) != s
                        for n, s in zip(names, shapes, strict=True)
                    ):
                        raise ValueError(
                            f"the rebuilt rig has other views or sizes than {names} {shapes}"
                        )
                if period_ns:
                    now = time.monotonic_ns()
                    if now < due and stop.wait((due - now) / 1e9):
                        break
                    due = max(due + period_ns, time.monotonic_ns() - period_ns)
                start = reading_since[0] = time.monotonic_ns()
                frames = faults.read(rig, stop)
                reading_since[0] = None
                if stop.is_set():
                    break
                writer.write(frames, time.monotonic_ns() - start)
                backoff = _BACKOFF_S[0]
            except Exception as exc:
                reading_since[0] = None
                writer.report("reconnecting", _describe(exc))
                if rig is not None:
                    with contextlib.suppress(Exception):
                        rig.disconnect()
                    rig = None
                if stop.wait(backoff):
                    break
                backoff = min(2 * backoff, _BACKOFF_S[1])
    finally:
        stop.set()
        if rig is not None:
            with contextlib.suppress(Exception):
                rig.disconnect()
        writer.report("stopped")
        watcher.join(1.0)
        writer.release()
        with contextlib.suppress(BufferError):
            shm.close()


# -- the client --------------------------------------------------------------------------------


class CameraProcess:
    """A `CameraRig` read in its own process; frames come from shared memory.

    rig_factory: picklable callable returning an unconnected rig (a class or
    `functools.partial`), called in the camera process (again after every failure); fps: read
    rate (None: as fast as the rig delivers); slots: ring size (>= 2; a `copy=False` frame set
    stays valid for `slots - 1` newer ones); stall_timeout_s: a read longer than this is
    reported as "stalled".
    """

    def __init__(
        self,
        rig_factory: RigFactory,
        fps: float | None = None,
        slots: int = 4,
        start_timeout_s: float = 60.0,
        stall_timeout_s: float = 1.0,
    ) -> None:
        if slots < 2:
            raise ValueError(f"the ring needs at least 2 slots, got {slots}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        self._factory = rig_factory
        self._fps = fps
        self._slots = slots
        self._start_timeout_s = start_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._process: Any = None
        self._connection: Connection | None = None
        self._stop: Any = None
        self._shm: SharedMemory | None = None
        self._layout: _Layout | None = None
        self._cameras: dict[str, Camera] = {}
        self._send_lock = threading.Lock()
        self._torn_retries = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> CameraProcess:
        """Spawn the process and wait until its rig is connected (raises with its last error)."""
        if self._process is not None:
            return self
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._stop = context.Event()
        self._process = context.Process(
            target=_camera_main,
            args=(
                self._factory,
                self._fps,
                self._slots,
                child,
                self._stop,
                self._stall_timeout_s,
            ),
            daemon=True,
            name="aimg-camera",
        )
        self._process.start()
        child.close()
        deadline = time.monotonic() + SPAWN_TIMEOUT_S + self._start_timeout_s
        last_error = "none"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._connection.poll(remaining):
                    raise RuntimeError(
                        f"the camera process did not connect its rig within "
                        f"{self._start_timeout_s:g} s (last error: {last_error}); check the "
                        "camera and its factory"
                    )
                message = self._connection.recv()
                if message[0] == "started":  # a new Python may take seconds on a busy machine
                    deadline = time.monotonic() + self._start_timeout_s
                    continue
                if message[0] == "error":
                    last_error = message[1]
                    continue
                _, names, cameras, layout = message
                break
            self._shm = SharedMemory(create=True, size=layout.size)
            self._layout, self._cameras = layout, dict(cameras)
            self._status, self._error, self._headers, self._images = layout.views(self._shm.buf)
            self._connection.send(("shm", self._shm.name))
        except (EOFError, ConnectionResetError) as exc:
            self.close()
            raise RuntimeError(
                f"the camera process died while starting (exit code {self._process_exitcode()})"
            ) from exc
        except BaseException:
            self.close()
            raise
        return self

    def _process_exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the process and free the shared memory (idempotent)."""
        if self._process is None:
            return
        self._stop.set()
        with self._send_lock, contextlib.suppress(OSError):
            self._connection.close()
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)
        self._process = None
        if self._shm is not None:
            self._status = self._error = self._headers = self._images = None
            with contextlib.suppress(BufferError):  # copy=False views still alive
                self._shm.close()
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
            self._shm = None

    def __enter__(self) -> CameraProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_started(self) -> _Layout:
        if self._layout is None or self._shm is None:
            raise ValueError("the camera process is not running: call start() (or use `with`)")
        return self._layout

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def view_names(self) -> tuple[str, ...]:
        return self._require_started().view_names

    @property
    def cameras(self) -> dict[str, Camera]:
        """View name -> calibration, as the rig reported it when the process started."""
        self._require_started()
        return dict(self._cameras)

    # -- frames ------------------------------------------------------------------------------

    @property
    def latest_counter(self) -> int:
        """Counter of the newest published frame set (0: none yet)."""
        self._require_started()
        return int(self._status[_H_LATEST])

    def latest(self, copy: bool = True) -> RigFrames | None:
        """The newest complete frame set, or None before the first one.

        copy=True: one copy out of shared memory. copy=False: numpy views into the ring slot,
        valid until `slots - 1` newer frame sets have been written; `intact(frames)` tells
        whether they still are.
        """
        layout = self._require_started()
        views = len(layout.view_names)
        for _ in range(1000):
            counter = int(self._status[_H_LATEST])
            if counter == 0:
                return None
            slot = counter % layout.slots
            header = self._headers[slot]
            before = int(header[0])
            if before & 1:
                self._torn_retries += 1
                continue
            _fence()
            words = header.copy()
            images = [image.copy() if copy else image for image in self._images[slot]]
            _fence()
            if int(header[0]) != before:
                self._torn_retries += 1
                continue
            self._mark_consumed(int(words[1]))
            names = layout.view_names
            return RigFrames(
                images=dict(zip(names, images, strict=True)),
                device_timestamps_ns={n: int(words[3 + i]) for i, n in enumerate(names)},
                host_timestamps_ns={n: int(words[3 + views + i]) for i, n in enumerate(names)},
                extras={
                    EXTRA_COUNTER: np.array(int(words[1]), dtype=np.int64),
                    EXTRA_TIMESTAMPS_BACKWARDS: np.array(bool(words[2] & _FLAG_BACKWARDS)),
                    EXTRA_SEQUENCE: np.array([slot, before], dtype=np.int64),
                },
            )
        raise RuntimeError("could not read a consistent frame set in 1000 tries")

    def intact(self, frames: RigFrames) -> bool:
        """Whether a `latest(copy=False)` frame set has not been overwritten since."""
        slot, sequence = (int(v) for v in frames.extras[EXTRA_SEQUENCE])
        _fence()
        return self._shm is not None and int(self._headers[slot][0]) == sequence

    def _mark_consumed(self, counter: int) -> None:
        if counter > self._status[_H_CONSUMED]:
            self._status[_H_CONSUMED] = counter

    def wait_newer(
        self, than_counter: int, timeout_s: float, copy: bool = True
    ) -> RigFrames | None:
        """The newest frame set once its counter exceeds `than_counter`; None on timeout."""
        self._require_started()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._status[_H_LATEST] > than_counter:
                frames = self.latest(copy)
                if frames is not None and frame_counter(frames) > than_counter:
                    return frames
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.0005)

    # -- health ------------------------------------------------------------------------------

    def frame_age_s(self) -> float:
        """Seconds since the newest frame set's (latest) host timestamp; inf before any."""
        layout = self._require_started()
        views = len(layout.view_names)
        for _ in range(1000):
            counter = int(self._status[_H_LATEST])
            if counter == 0:
                return math.inf
            header = self._headers[counter % layout.slots]
            before = int(header[0])
            _fence()
            host = int(header[3 + views : 3 + 2 * views].max())
            _fence()
            if not before & 1 and int(header[0]) == before:
                return (time.monotonic_ns() - host) / 1e9
        return math.inf

    def stats(self) -> CameraStats:
        """Counters and timings the camera process published, plus this client's retries."""
        self._require_started()
        for _ in range(1000):
            before = int(self._status[_H_STATUS_SEQ])
            _fence()
            words = self._status.copy()
            error = bytes(self._error[: int(words[_H_ERROR_LEN])]).decode("utf-8", "replace")
            _fence()
            if not before & 1 and int(self._status[_H_STATUS_SEQ]) == before:
                break
        error_ns = int(words[_H_ERROR_NS])
        return CameraStats(
            state=STATES[int(words[_H_STATE])] if self.alive else "stopped",
            alive=self.alive,
            frames_read=int(words[_H_FRAMES]),
            frames_dropped=int(words[_H_DROPPED]),
            read_errors=int(words[_H_ERRORS]),
            reconnects=int(words[_H_RECONNECTS]),
            timestamps_backwards=int(words[_H_BACKWARDS]),
            read_period_p50_s=float(words[_H_PERIOD_P50]) / 1e9,
            read_period_p99_s=float(words[_H_PERIOD_P99]) / 1e9,
            read_time_p50_s=float(words[_H_READ_P50]) / 1e9,
            read_time_p99_s=float(words[_H_READ_P99]) / 1e9,
            last_error=error,
            last_error_age_s=(time.monotonic_ns() - error_ns) / 1e9 if error_ns else math.inf,
            torn_retries=self._torn_retries,
        )

    # -- fault injection (tests) -------------------------------------------------------------

    def inject(self, fault: str, **params: float) -> None:
        """Test hook: "pause" (reads stop returning), "resume", "timestamps_back"
        (seconds=1.0: the device clock jumps back), "raise" (count=1: reads raise)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {FAULTS}")
        self._require_started()
        with self._send_lock:
            self._connection.send(("inject", fault, params))


def frame_counter(frames: RigFrames) -> int:
    """The counter `CameraProcess` gave a frame set (1, 2, ...: gaps are frames never seen)."""
    return int(frames.extras[EXTRA_COUNTER])

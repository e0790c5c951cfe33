"""CameraProcess: a rig read in its own process into a seqlock ring of shared memory."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from aimg.geometry import Camera, intrinsics_matrix
from aimg.robot.interfaces import CameraRig, RigFrames
from aimg.runtime.camera_process import (
    EXTRA_TIMESTAMPS_BACKWARDS,
    CameraProcess,
    frame_counter,
)


class PatternRig(CameraRig):
    """Frame n of view i is filled with (n + i) % 256 and stamped n ms on the device clock."""

    def __init__(self, height: int = 48, width: int = 64, views: tuple[str, ...] = ("a", "b")):
        self._height, self._width, self._names = height, width, views
        self._n = 0

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    @property
    def view_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def cameras(self) -> dict[str, Camera]:
        K = intrinsics_matrix(50.0, 50.0, self._width / 2, self._height / 2)
        return {name: Camera(K, np.eye(4), self._width, self._height) for name in self._names}

    def read(self) -> RigFrames:
        self._n += 1
        host = time.monotonic_ns()
        shape = (self._height, self._width, 3)
        return RigFrames(
            images={
                n: np.full(shape, (self._n + i) % 256, np.uint8) for i, n in enumerate(self._names)
            },
            device_timestamps_ns={name: self._n * 1_000_000 for name in self._names},
            host_timestamps_ns={name: host for name in self._names},
        )


class UnpluggedRig(PatternRig):
    def connect(self) -> None:
        raise OSError("no camera on the USB bus")


def frame_index(frames: RigFrames) -> int:
    return frames.device_timestamps_ns["a"] // 1_000_000


def assert_pattern(frames: RigFrames) -> None:
    """Every view of the set shows the pattern of the same frame: no torn or mixed frames."""
    n = frame_index(frames)
    for i, (name, image) in enumerate(frames.images.items()):
        assert frames.device_timestamps_ns[name] == n * 1_000_000
        assert image.min() == image.max() == (n + i) % 256


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_latest_is_the_newest_complete_frame_set():
    with CameraProcess(PatternRig, fps=50) as cameras:
        assert cameras.view_names == ("a", "b")
        assert cameras.cameras["a"].width == 64
        first = cameras.wait_newer(0, timeout_s=10.0)
        assert first is not None
        assert_pattern(first)
        second = cameras.wait_newer(frame_counter(first), timeout_s=5.0)
        assert frame_counter(second) > frame_counter(first)
        assert frame_index(second) == frame_counter(second)
        latest = cameras.latest()
        assert frame_counter(latest) >= frame_counter(second)
        assert latest.images["a"].shape == (48, 64, 3) and latest.images["a"].dtype == np.uint8
        assert cameras.frame_age_s() < 1.0
        # The frame set is published before the status block that times it: wait for the
        # first period to appear rather than race the writer.
        deadline = time.monotonic() + 5.0
        while (stats := cameras.stats()).read_period_p50_s == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert stats.state == "running" and stats.read_errors == 0
    assert stats.read_period_p50_s == pytest.approx(0.02, rel=0.5)


def test_no_torn_frames_under_a_fast_writer_and_a_concurrent_reader():
    factory = functools.partial(PatternRig, 240, 320)
    with CameraProcess(factory, fps=None, slots=2) as cameras:
        assert cameras.wait_newer(0, timeout_s=10.0) is not None
        reads, counters = 0, set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            frames = cameras.latest()
            assert_pattern(frames)
            counters.add(frame_counter(frames))
            reads += 1
        stats = cameras.stats()
    print(f"\n{reads} reads of {stats.frames_read} frame sets, {stats.torn_retries} torn retries")
    assert reads > 100 and len(counters) > 50 and stats.frames_read > 100


def test_copy_false_views_stay_valid_until_the_slot_is_overwritten():
    with CameraProcess(PatternRig, fps=100, slots=3, stall_timeout_s=10.0) as cameras:
        cameras.wait_newer(0, timeout_s=10.0)
        cameras.inject("pause")
        time.sleep(0.1)
        frames = cameras.latest(copy=False)
        assert cameras.intact(frames)
        assert_pattern(frames)
        cameras.inject("resume")
        assert wait_for(lambda: cameras.latest_counter >= frame_counter(frames) + 3)
        assert not cameras.intact(frames)


def test_device_timestamps_going_backwards_are_counted_and_flagged():
    with CameraProcess(PatternRig, fps=20) as cameras:
        last = frame_counter(cameras.wait_newer(0, timeout_s=10.0))
        cameras.inject("timestamps_back", seconds=1.0)
        flags = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            frames = cameras.wait_newer(last, timeout_s=0.5)
            if frames is not None:
                last = frame_counter(frames)
                flags.append(bool(frames.extras[EXTRA_TIMESTAMPS_BACKWARDS]))
        stats = cameras.stats()
    assert stats.timestamps_backwards == 1
    assert flags.count(True) == 1 and not flags[-1]


def test_a_rig_that_stops_delivering_ages_the_frames_and_is_reported():
    with CameraProcess(PatternRig, fps=50, stall_timeout_s=0.3) as cameras:
        cameras.wait_newer(0, timeout_s=10.0)
        cameras.inject("pause")
        assert wait_for(lambda: cameras.stats().state == "stalled", 5.0)
        time.sleep(0.2)
        assert cameras.frame_age_s() > 0.4
        assert "has not returned" in cameras.stats().last_error
        cameras.inject("resume")
        assert wait_for(lambda: cameras.frame_age_s() < 0.2, 5.0)
        assert cameras.stats().state == "running"


def test_a_rig_that_raises_is_reported_and_rebuilt():
    with CameraProcess(PatternRig, fps=50) as cameras:
        before = frame_counter(cameras.wait_newer(0, timeout_s=10.0))
        cameras.inject("raise", count=2)
        assert wait_for(lambda: cameras.stats().reconnects >= 2, 10.0)
        assert cameras.wait_newer(cameras.latest_counter, timeout_s=10.0) is not None
        stats = cameras.stats()
    assert stats.read_errors == 2 and stats.reconnects == 2
    assert stats.last_error == "RuntimeError: injected read failure"
    assert stats.state == "running" and stats.frames_read > before


def test_a_rig_that_cannot_connect_fails_start_with_its_error():
    cameras = CameraProcess(UnpluggedRig, start_timeout_s=1.0)
    with pytest.raises(RuntimeError, match="no camera on the USB bus"):
        cameras.start()
    assert not cameras.alive


def test_arm_calls_stay_fast_while_the_camera_process_renders_the_mirror():
    from aimg.robot.sim.mirror import make_sim_cell

    def arm_latencies(arm, seconds: float) -> np.ndarray:
        latencies = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            arm.read_state()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.004)  # a 250 Hz servo loop
        return np.array(latencies) * 1e3

    with make_sim_cell(views=2, height=128, width=128) as cell:
        cell.supervisor().start_episode("reach", 0)
        arm = cell.arm(cell.address.connect())
        arm.connect()
        idle = arm_latencies(arm, 1.0)
        with CameraProcess(cell.rig_factory()) as cameras:
            frames = cameras.wait_newer(0, timeout_s=30.0)
            busy = arm_latencies(arm, 2.0)
            stats = cameras.stats()
        arm.disconnect()
    print(
        f"\narm read_state ms p50/p99: cameras off {np.median(idle):.2f}/"
        f"{np.percentile(idle, 99):.2f}, camera process rendering {np.median(busy):.2f}/"
        f"{np.percentile(busy, 99):.2f}; mirror read ms p50/p99 "
        f"{stats.read_time_p50_s * 1e3:.1f}/{stats.read_time_p99_s * 1e3:.1f}"
    )
    assert frames is not None and stats.frames_read > 5 and stats.read_errors == 0
    assert all(image.std() > 5 for image in frames.images.values())
    assert frames.device_timestamps_ns["left"] > 0


def test_latest_from_several_threads_never_tears():
    with CameraProcess(PatternRig, fps=None, slots=2) as cameras:
        cameras.wait_newer(0, timeout_s=10.0)
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(300):
                    assert_pattern(cameras.latest())
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures

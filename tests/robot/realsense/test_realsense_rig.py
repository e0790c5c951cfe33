"""RealSenseRig on librealsense software devices, through real pipelines (no mocks)."""

from __future__ import annotations

import time

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0) not installed")

from rs_software import Feeder, SoftCamera, SoftwareSource, make_image  # noqa: E402

from aimg.geometry import Camera  # noqa: E402
from aimg.robot.realsense import (  # noqa: E402
    CalibrationMissingError,
    CameraDisconnectedError,
    OptionLockError,
    RealSenseCamera,
    RealSenseRig,
    StaleFrameError,
)

W, H = 64, 48


def two_cameras(**kwargs) -> tuple[SoftCamera, SoftCamera, list[RealSenseCamera]]:
    left = SoftCamera("111111111111", 1, W, H, fx=60.0, **kwargs)
    right = SoftCamera("222222222222", 2, W, H, fx=75.0, **kwargs)
    specs = [
        RealSenseCamera("left", left.serial, W, H, 30),
        RealSenseCamera("right", right.serial, W, H, 30),
    ]
    return left, right, specs


def pose(x: float) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, 3] = [x, 0.0, 0.5]
    return c2w


def test_reads_each_camera_by_serial_with_exact_pixels():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right)) as rig:
        for fn in range(1, 6):
            left.push(fn)
            right.push(fn)
            frames = rig.read()
            np.testing.assert_array_equal(frames.images["left"], make_image(1, fn, W, H))
            np.testing.assert_array_equal(frames.images["right"], make_image(2, fn, W, H))
            assert int(frames.extras["frame_number/left"]) == fn
        assert rig.view_names == ("left", "right")
        assert rig.devices["right"]["serial"] == right.serial
        assert rig.devices["left"]["firmware"] == "5.16.0.1"


def test_intrinsics_come_from_the_device_and_pose_from_calibration():
    left, right, specs = two_cameras()
    calibration = {"left": pose(0.1), "right": Camera(np.diag([9.0, 9.0, 1.0]), pose(0.2), 1, 1)}
    with RealSenseRig(specs, calibration, SoftwareSource(left, right)) as rig:
        cameras = rig.cameras
        for view, soft in (("left", left), ("right", right)):
            intr = rig.intrinsics[view]
            declared = soft.intrinsics
            assert (intr.width, intr.height) == (declared.width, declared.height)
            assert (intr.fx, intr.fy, intr.ppx, intr.ppy) == pytest.approx(
                (declared.fx, declared.fy, declared.ppx, declared.ppy), abs=1e-6
            )
            assert intr.model == "brown_conrady"
            assert intr.coeffs == pytest.approx(declared.coeffs, abs=1e-7)
            np.testing.assert_allclose(
                cameras[view].K,
                [[declared.fx, 0, declared.ppx], [0, declared.fy, declared.ppy], [0, 0, 1]],
                atol=1e-5,
            )
            assert (cameras[view].width, cameras[view].height) == (W, H)
        np.testing.assert_allclose(cameras["left"].c2w, pose(0.1))
        np.testing.assert_allclose(cameras["right"].c2w, pose(0.2))


def test_intrinsics_can_come_from_the_calibration_instead():
    left, right, specs = two_cameras()
    K = np.array([[61.0, 0, 32.0], [0, 61.0, 24.0], [0, 0, 1]])
    calibration = {"left": Camera(K, pose(0.1), W, H), "right": Camera(K, pose(0.2), W, H)}
    rig = RealSenseRig(specs, calibration, SoftwareSource(left, right), intrinsics="calibration")
    with rig:
        np.testing.assert_allclose(rig.cameras["right"].K, K)
        assert rig.intrinsics["right"].fx == pytest.approx(75.0)  # the device's, still reported
    with pytest.raises(ValueError, match="for 32x24 images but the camera streams 64x48"):
        RealSenseRig(specs, {"left": Camera(K, pose(0.1), 32, 24)}, intrinsics="calibration")


def test_missing_calibration_names_the_camera_and_the_command():
    left, right, specs = two_cameras()
    rig = RealSenseRig(specs, {"left": pose(0.1)}, SoftwareSource(left, right))
    with rig, pytest.raises(CalibrationMissingError, match=r"'right'.*aimg calib handeye"):
        _ = rig.cameras


def test_timestamps_are_device_ns_in_global_time_and_host_monotonic():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right)) as rig:
        assert left.sensor.get_option(rs.option.global_time_enabled) == 1.0
        assert rig.options["right"]["global_time_enabled"] == 1.0
        device, host = [], []
        for fn in range(1, 6):
            before = time.monotonic_ns()
            left.push(fn, timestamp_ms=1.7e12 + fn * 33.25)
            right.push(fn, timestamp_ms=1.7e12 + fn * 33.25 + 0.5)
            frames = rig.read()
            after = time.monotonic_ns()
            assert before <= frames.host_timestamps_ns["left"] <= after
            assert frames.device_timestamps_ns["right"] - frames.device_timestamps_ns["left"] == (
                pytest.approx(500_000, abs=2_000)
            )
            device.append(frames.device_timestamps_ns["left"])
            host.append(frames.host_timestamps_ns["left"])
        assert device[0] == pytest.approx((1.7e12 + 33.25) * 1e6, abs=2e3)
        assert np.all(np.diff(device) > 0) and np.all(np.diff(host) > 0)
        assert rig.timestamp_domains == {"left": "global_time", "right": "global_time"}


def test_hardware_clock_domain_is_reported_when_global_time_is_off():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right), global_time=False) as rig:
        assert left.sensor.get_option(rs.option.global_time_enabled) == 0.0
        left.push(1, 5000.0, rs.timestamp_domain.hardware_clock)
        right.push(1, 6000.0, rs.timestamp_domain.hardware_clock)
        frames = rig.read()
        assert frames.device_timestamps_ns == {"left": 5_000_000_000, "right": 6_000_000_000}
        assert rig.stats()["left"].timestamp_domain == "hardware_clock"


def test_dropped_frames_are_counted_per_camera_from_frame_number_gaps():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right)) as rig:
        for fn in range(1, 13):
            right.push(fn)
            if fn not in (4, 5, 9):
                left.push(fn)
                rig.read()
        stats = rig.stats()
    left_stats = stats["left"]
    assert (left_stats.dropped, left_stats.frames, left_stats.last_frame_number) == (3, 9, 12)
    assert (stats["right"].dropped, stats["right"].frames) == (0, 12)


def test_a_slow_reader_does_not_count_as_dropped_frames():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right)) as rig:
        for fn in range(1, 31):
            left.push(fn)
            right.push(fn)
        deadline = time.monotonic() + 5
        while rig.stats()["left"].frames < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        frames = rig.read()  # only the newest frame set is returned
        assert int(frames.extras["frame_number/left"]) == 30
        assert rig.stats()["left"].dropped == 0


def test_a_stalled_camera_raises_naming_it_then_recovers_when_it_streams_again():
    left, right, specs = two_cameras()
    with RealSenseRig(specs, source=SoftwareSource(left, right), stale_timeout_s=0.5) as rig:
        left.push(1)
        right.push(1)
        rig.read()
        left.push(2)  # the right camera stalls
        start = time.monotonic()
        with pytest.raises(StaleFrameError, match=r"'right' \(serial 222222222222\)") as err:
            rig.read()
        assert err.value.view == "right" and 0.45 < time.monotonic() - start < 3
        with Feeder(right):  # it streams again
            left.push(3)
            frames = rig.read()  # restarts the right camera's pipeline
        np.testing.assert_array_equal(frames.images["left"], make_image(1, 3, W, H))
        assert frames.images["right"][0, 0, 0] == 2
        stats = rig.stats()
        assert (stats["right"].stale, stats["right"].reconnects) == (1, 1)
        assert (stats["left"].stale, stats["left"].reconnects) == (0, 0)


def test_an_unplugged_camera_is_retried_with_backoff_and_resumes_when_plugged_back():
    left, right, specs = two_cameras()
    source = SoftwareSource(left, right)
    rig = RealSenseRig(specs, source=source, stale_timeout_s=0.5, backoff_s=(0.2, 0.4))
    with rig:
        left.push(1)
        right.push(1)
        rig.read()
        source.unplug(right.serial)
        left.push(2)
        with pytest.raises(StaleFrameError, match="'right'"):
            rig.read()
        with pytest.raises(CameraDisconnectedError, match="'right'.*not among") as first:
            rig.read()
        assert first.value.retry_in_s == pytest.approx(0.2)
        with pytest.raises(CameraDisconnectedError, match="next reconnect try in"):
            rig.read()  # inside the backoff: no new attempt
        time.sleep(0.25)
        with pytest.raises(CameraDisconnectedError) as second:
            rig.read()
        assert second.value.retry_in_s == pytest.approx(0.4)  # doubled
        source.plug(right)  # back on the bus
        time.sleep(0.45)
        with Feeder(right):
            left.push(3)
            frames = rig.read()
        assert set(frames.images) == {"left", "right"}
        assert rig.stats()["right"].reconnects == 1 and rig.stats()["right"].state == "streaming"


def test_a_camera_missing_at_connect_is_named_with_the_serials_found():
    left, right, specs = two_cameras()
    rig = RealSenseRig(specs, source=SoftwareSource(left))
    with pytest.raises(
        CameraDisconnectedError, match=r"'right' \(serial 222222222222\).*111111111111"
    ):
        rig.connect()
    assert not rig.is_connected
    assert left.sensor.get_active_streams() == []  # the camera that started was stopped again


def test_exposure_gain_and_white_balance_are_locked_and_read_back():
    left, right, specs = two_cameras()
    source = SoftwareSource(left, right)
    with RealSenseRig(specs, source=source, exposure=300, gain=16, white_balance=4500) as rig:
        for cam in (left, right):
            assert cam.sensor.get_option(rs.option.enable_auto_exposure) == 0.0
            assert cam.sensor.get_option(rs.option.enable_auto_white_balance) == 0.0
            assert cam.sensor.get_option(rs.option.exposure) == 300.0
            assert cam.sensor.get_option(rs.option.white_balance) == 4500.0
        assert rig.options["left"]["exposure"] == 300.0
        assert rig.options["left"]["gain"] == 16.0


def test_an_exposure_outside_the_sensor_range_is_refused_with_the_range():
    left, right, specs = two_cameras()
    rig = RealSenseRig(specs, source=SoftwareSource(left, right), exposure=20000)
    with pytest.raises(OptionLockError, match=r"'left'.*exposure 20000.*\[1.0, 10000.0\]"):
        rig.connect()


def test_locking_an_option_the_sensor_lacks_is_an_error():
    left, right, specs = two_cameras(options=False)
    rig = RealSenseRig(specs, source=SoftwareSource(left, right), white_balance=4500)
    with pytest.raises(OptionLockError, match="no white_balance option"):
        rig.connect()


def test_depth_is_aligned_to_colour_in_metres():
    left = SoftCamera("333333333333", 3, W, H, depth=True)
    spec = RealSenseCamera("wrist", left.serial, W, H, 30)
    with RealSenseRig([spec], source=SoftwareSource(left), depth=True) as rig:
        for fn in range(1, 4):
            left.push(fn, depth_mm=750 + fn)
            frames = rig.read()
        depth = frames.extras["depth/wrist"]
        assert depth.shape == (H, W) and depth.dtype == np.float32
        assert float(np.median(depth[depth > 0])) == pytest.approx(0.753, abs=1e-6)
        np.testing.assert_array_equal(frames.images["wrist"], make_image(3, 3, W, H))


def test_an_unsupported_stream_names_the_camera_and_profile():
    left, right, specs = two_cameras()
    specs[1] = RealSenseCamera("right", right.serial, 1280, 720, 30)
    with pytest.raises(RuntimeError, match=r"'right'.*1280x720 rgb8 at 30 fps"):
        RealSenseRig(specs, source=SoftwareSource(left, right)).connect()

"""RealSenseRig on a physical camera: skipped, with the reason, when none is connected."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.hardware


@pytest.fixture(scope="module")
def serial() -> str:
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0) not installed")
    from aimg.robot.realsense import list_devices

    devices = list_devices()
    if not devices:
        pytest.skip("no RealSense camera connected (`aimg realsense list` finds none)")
    return devices[0].serial


def test_a_real_camera_streams_640x480_with_global_time_and_no_stale_frames(serial):
    from aimg.robot.realsense import RealSenseCamera, RealSenseRig

    with RealSenseRig([RealSenseCamera("cam0", serial, 640, 480, 30)]) as rig:
        frames = [rig.read() for _ in range(60)]
        stats = rig.stats()["cam0"]
        intr = rig.intrinsics["cam0"]
        assert rig.options["cam0"].get("global_time_enabled") == 1.0
    assert frames[-1].images["cam0"].shape == (480, 640, 3)
    device = [f.device_timestamps_ns["cam0"] for f in frames]
    host = [f.host_timestamps_ns["cam0"] for f in frames]
    assert np.all(np.diff(device) > 0) and np.all(np.diff(host) > 0)
    assert stats.timestamp_domain == "global_time" and stats.stale == 0
    assert stats.dropped <= 3, "more than 3 dropped frames in 2 s: check the USB 3 link"
    assert 100 < intr.fx < 2000 and 0 < intr.ppx < 640


def test_exposure_lock_is_read_back_from_a_real_camera(serial):
    from aimg.robot.realsense import RealSenseCamera, RealSenseRig

    with RealSenseRig([RealSenseCamera("cam0", serial)], exposure=156, white_balance=4600) as rig:
        rig.read()
        options = rig.options["cam0"]
    assert options["exposure"] == pytest.approx(156, abs=1)
    assert options["enable_auto_exposure"] == 0.0
    assert options["white_balance"] == pytest.approx(4600, abs=10)


def test_a_real_camera_records_and_replays(serial, tmp_path):
    from aimg.robot.realsense import RealSenseCamera, RealSenseRig, RecordingEndedError
    from aimg.robot.realsense.recording import record

    manifest = record([RealSenseCamera("cam0", serial)], tmp_path / "rec", 1.0)
    assert manifest.cameras[0].frames >= 20
    with RealSenseRig.from_recording(tmp_path / "rec", loop=False) as rig:
        with pytest.raises(RecordingEndedError):
            while True:
                rig.read()
        assert rig.stats()["cam0"].frames >= manifest.cameras[0].frames - 2

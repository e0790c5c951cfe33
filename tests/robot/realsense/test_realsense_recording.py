"""Recording cameras and replaying them through RealSenseRig, and the `aimg realsense` CLI."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0) not installed")

from rs_software import Feeder, SoftCamera, SoftwareSource, make_image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from aimg.robot.realsense import (  # noqa: E402
    LiveSource,
    RealSenseCamera,
    RealSenseRig,
    RecordingEndedError,
    RecordingSource,
    list_devices,
)
from aimg.robot.realsense.cli import NO_DEVICE, app  # noqa: E402
from aimg.robot.realsense.recording import read_manifest, record  # noqa: E402

W, H = 64, 48
SKIPPED = frozenset({20, 21})


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two software cameras recorded for 1.5 s at 30 fps; the left one drops frames 20 and 21."""
    left = SoftCamera("111111111111", 1, W, H, fx=60.0)
    right = SoftCamera("222222222222", 2, W, H, fx=75.0)
    specs = [
        RealSenseCamera("left", left.serial, W, H),
        RealSenseCamera("right", right.serial, W, H),
    ]
    out = tmp_path_factory.mktemp("rec") / "cell"
    with Feeder(left, skip=SKIPPED), Feeder(right):
        manifest = record(specs, out, 1.5, SoftwareSource(left, right), stale_timeout_s=3.0)
    return out, manifest, {"left": left, "right": right}


def test_record_writes_one_file_per_camera_and_a_manifest(recording):
    out, manifest, cams = recording
    assert read_manifest(out) == manifest
    ext = ".db3" if tuple(int(p) for p in rs.__version__.split(".")[:2]) >= (2, 58) else ".bag"
    for cam in manifest.cameras:
        assert (out / cam.file).stat().st_size > 0 and cam.file.endswith(ext)
        assert cam.frames > 30 and cam.timestamp_domain == "global_time"
        assert cam.intrinsics["fx"] == pytest.approx(cams[cam.name].intrinsics.fx)
    assert [(c.name, c.serial, c.dropped) for c in manifest.cameras] == [
        ("left", "111111111111", 2),
        ("right", "222222222222", 0),
    ]


def test_replay_delivers_the_recorded_frames_bit_exact_with_the_same_drops(recording):
    out, manifest, cams = recording
    rig = RealSenseRig.from_recording(out, real_time=False, loop=False)
    reads = 0
    with rig:
        assert rig.view_names == ("left", "right")
        assert rig.devices["right"]["serial"] == "222222222222"
        for view, cam in cams.items():
            assert rig.intrinsics[view].fx == pytest.approx(cam.intrinsics.fx)
            assert rig.intrinsics[view].coeffs == pytest.approx(cam.intrinsics.coeffs, abs=1e-7)
        with pytest.raises(RecordingEndedError, match="has ended"):
            while True:
                frames = rig.read()
                reads += 1
                for view, cam in cams.items():
                    number = int(frames.extras[f"frame_number/{view}"])
                    assert number not in SKIPPED or view == "right"
                    expected = make_image(cam.camera_id, number, W, H)
                    np.testing.assert_array_equal(frames.images[view], expected)
                    assert frames.device_timestamps_ns[view] == pytest.approx(
                        (1.7e12 + number * 1000.0 / 30) * 1e6, abs=2e3
                    )
        stats = rig.stats()
    assert reads >= 1
    for cam in manifest.cameras:
        assert (stats[cam.name].frames, stats[cam.name].dropped) == (cam.frames, cam.dropped)
        assert stats[cam.name].timestamp_domain == "global_time"


def test_live_path_enumerates_and_routes_each_serial_to_its_camera(recording):
    """Recorded files loaded into a context enumerate like USB cameras, so the live code path
    (`query_devices`, `pipeline(ctx)`, `enable_device(serial)`) runs for real."""
    out, manifest, cams = recording
    ctx = rs.context()
    loaded = [ctx.load_device(str(out / c.file)) for c in manifest.cameras]  # keep referenced
    devices = {d.serial: d for d in list_devices(ctx)}
    assert set(devices) == {"111111111111", "222222222222"}
    assert devices["222222222222"].name == "Intel RealSense D435 (software 222222222222)"
    assert (devices["222222222222"].firmware, devices["222222222222"].usb_type) == (
        "5.16.0.1",
        "3.2",
    )
    assert devices["111111111111"].color_profiles == ("64x48@30 rgb8",)
    # Swapped view names: each view must get the pixels of the serial it names.
    specs = [RealSenseCamera("a", "222222222222", W, H), RealSenseCamera("b", "111111111111", W, H)]
    with RealSenseRig(specs, source=LiveSource(ctx), global_time=False) as rig:
        frames = rig.read()
        assert rig.intrinsics["a"].fx == pytest.approx(75.0)
    assert frames.images["a"][0, 0, 0] == cams["right"].camera_id
    assert frames.images["b"][0, 0, 0] == cams["left"].camera_id
    del loaded


def test_a_looping_replay_starts_again_without_an_error(recording):
    out, manifest, _ = recording
    source = RecordingSource(out, real_time=False, loop=True)
    specs = [RealSenseCamera(c.name, c.serial, c.width, c.height, c.fps) for c in manifest.cameras]
    with RealSenseRig(specs, source=source, global_time=False) as rig:
        for _ in range(500):
            rig.read()
            if min(s.resets for s in rig.stats().values()) >= 1:
                break
        frames = rig.read()  # still streaming, from the second pass
        stats = rig.stats()
    # A reset means a frame number went back: the file is playing again from its start.
    assert all(s.resets >= 1 and s.reconnects == 0 for s in stats.values())
    assert set(frames.images) == {"left", "right"}
    assert stats["left"].frames > manifest.cameras[0].frames  # more than one pass was read


def test_a_directory_without_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="aimg realsense record"):
        RealSenseRig.from_recording(tmp_path)


def test_record_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").write_text("keep me")
    cam = SoftCamera("555555555555", 5, W, H)
    spec = RealSenseCamera("front", cam.serial, W, H)
    with pytest.raises(FileExistsError, match="not empty"):
        record([spec], tmp_path, 0.5, SoftwareSource(cam))


def test_cli_replay_prints_what_the_rig_saw(recording):
    out, manifest, _ = recording
    result = CliRunner().invoke(app, ["replay", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cameras"]["left"]["frames"] == manifest.cameras[0].frames
    assert summary["seconds"] >= 0.9 * manifest.seconds  # played at the recorded pace
    assert summary["cameras"]["left"]["dropped"] == 2
    assert summary["cameras"]["right"]["intrinsics"]["fx"] == pytest.approx(75.0)


def test_cli_list_without_a_camera_prints_a_friendly_message():
    result = subprocess.run(
        [sys.executable, "-m", "aimg", "realsense", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    if "serial" in result.stdout:
        pytest.skip("a RealSense camera is connected, so the no-device message cannot show")
    assert result.stdout.strip() == NO_DEVICE


def test_cli_record_without_the_camera_fails_naming_it(tmp_path):
    out = tmp_path / "rec"
    result = CliRunner().invoke(
        app, ["record", "--serial", "front=999999999999", "--seconds", "1", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "'front' (serial 999999999999) is not among the connected RealSense devices" in (
        result.output
    )
    assert not out.exists()  # no empty recording left behind


def test_depth_survives_record_and_replay(tmp_path):
    cam = SoftCamera("444444444444", 4, W, H, depth=True)
    spec = RealSenseCamera("wrist", cam.serial, W, H)
    with Feeder(cam):
        manifest = record(
            [spec], tmp_path / "rec", 0.5, SoftwareSource(cam), depth=True, stale_timeout_s=3.0
        )
    assert manifest.depth
    with RealSenseRig.from_recording(tmp_path / "rec", real_time=False, loop=False) as rig:
        frames = rig.read()
    depth = frames.extras["depth/wrist"]
    assert depth.shape == (H, W)
    assert float(np.median(depth[depth > 0])) == pytest.approx(1.0, abs=1e-6)


def test_a_recording_feeds_the_runtime_camera_process(recording):
    """What a cell on recorded cameras runs: the rig built from a picklable factory in the
    runtime's camera process, frames handed over through shared memory."""
    from aimg.runtime.camera_process import CameraProcess

    out, _, cams = recording
    c2w = np.eye(4)
    c2w[2, 3] = 0.7
    factory = functools.partial(
        RealSenseRig.from_recording, out, {"left": c2w, "right": c2w}, loop=True
    )
    process = CameraProcess(factory, fps=15).start()
    try:
        frames = process.wait_newer(0, timeout_s=30)
        assert frames is not None, process.stats().last_error
        assert frames.images["left"].shape == (H, W, 3)
        assert frames.images["right"][0, 0, 0] == cams["right"].camera_id
        np.testing.assert_allclose(process.cameras["left"].c2w, c2w)
        assert process.cameras["right"].K[0, 0] == pytest.approx(75.0)
    finally:
        process.close()

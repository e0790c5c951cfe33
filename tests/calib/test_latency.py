"""`aimg calib latency`: estimates against simulated ground truth, refusals, the file, the CLI."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aimg.calib.calibration_file import (
    CalibrationFile,
    CalibrationFileError,
    CameraCalibration,
    read_calibration,
    write_calibration,
)
from aimg.calib.cli import app
from aimg.calib.latency import (
    LatencyError,
    LatencyMotion,
    Series,
    camera_latency,
    device_clock_offsets,
    fit_delay,
    image_motion,
    measure_latency,
    measure_sim,
    sim_latency_cell,
)
from aimg.geometry import Camera

REPO = Path(__file__).resolve().parents[2]
SEED = 7  # two cameras close enough together for one segment to serve both
#: shorter than the default motion, 20 fps: ~10 s of rendering per run on one core
MOTION = LatencyMotion(period_s=0.8, hold_s=0.35, max_delay_s=0.3, servo_hz=120.0)
TOLERANCE_MS = 10.0

runner = CliRunner()


def said(result) -> str:
    """The command's output as one line (the error panel wraps and frames messages)."""
    return " ".join(result.output.replace("│", " ").split())


def _run(camera_latency_s, arm_latency_s, jitter_s=0.0):
    with sim_latency_cell(SEED, 2, arm_latency_s, camera_latency_s, 20.0, jitter_s) as cell:
        run = measure_sim(cell, MOTION)
        return run, cell.tcp_log(), cell.rig.cameras


@pytest.fixture(scope="module")
def run_30_50():
    return _run(0.03, 0.05)


def _assert_within_tolerance(run) -> None:
    errors = run.errors_ms
    assert set(errors["camera"]) == {"cam0", "cam1"}
    for value in [*errors["camera"].values(), errors["arm"], *errors["arm_by_camera"].values()]:
        assert abs(value) < TOLERANCE_MS, errors
    assert abs(errors["arm_state"]) < TOLERANCE_MS, errors


def test_camera_30_ms_arm_50_ms_are_measured_within_10_ms(run_30_50):
    run = run_30_50[0]
    _assert_within_tolerance(run)
    assert run.truth_arm_s > 0.05  # the controller's own lag comes on top of the injected one
    assert run.result.arm.rms_m < 0.001


def test_camera_70_ms_with_jitter_arm_20_ms_are_measured_within_10_ms():
    run, _, _ = _run(0.07, 0.02, jitter_s=0.008)
    _assert_within_tolerance(run)
    stats = run.result.camera["cam0"]
    assert 0.07 <= stats.min_s <= stats.median_s <= stats.p90_s <= stats.max_s <= 0.078
    assert stats.std_s > 0.0


def test_the_board_in_a_frame_is_where_the_arm_was_at_exposure_not_at_receipt(run_30_50):
    run, (tcp_ns, tcp_pos), cameras = run_30_50
    segment = run.result.segments[0]
    times, points = segment.board["cam1"]
    axis = segment.axis
    seen = image_motion(points, cameras["cam1"].c2w[:3, :3].T @ axis)

    def truth_at(t_ns):
        along = np.interp(t_ns, tcp_ns, tcp_pos @ axis)
        return along - along.mean()

    at_exposure = np.abs(seen - seen.mean() - truth_at(times))
    at_receipt = np.abs(seen - seen.mean() - truth_at(times + 30_000_000))
    assert at_exposure.max() < 0.001
    assert at_receipt.max() > 0.002


def test_a_sim_rig_without_timestamp_domains_is_refused_before_the_arm_moves():
    from aimg.calib.board import BoardSpec
    from aimg.calib.handeye import flag_mount
    from aimg.robot.sim.devices import SimArm, SimCameraRig
    from aimg.robot.sim.world import SimWorld

    with SimWorld(seed=0) as world:
        arm, rig = SimArm(world), SimCameraRig(world, height=32, width=32)
        arm.connect()
        rig.connect()
        before = world.time_ns
        with pytest.raises(LatencyError, match="does not report its timestamp domains"):
            measure_latency(
                arm, rig, BoardSpec(), flag_mount(BoardSpec()), lambda: world.time_ns, world.advance
            )
        assert world.time_ns == before


def _soft_rig(global_time: bool):
    rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0) not installed")
    sys.path.insert(0, str(REPO / "tests" / "robot" / "realsense"))
    from rs_software import SoftCamera, SoftwareSource

    from aimg.robot.realsense import RealSenseCamera, RealSenseRig

    cam = SoftCamera("333333333333", 3, 64, 48)
    rig = RealSenseRig(
        [RealSenseCamera("front", cam.serial, 64, 48, 30)],
        source=SoftwareSource(cam),
        global_time=global_time,
    )
    return rs, cam, rig


def test_realsense_hardware_clock_timestamps_are_refused_not_reported():
    rs, cam, rig = _soft_rig(global_time=False)
    with rig:
        cam.push(1, 5000.0, rs.timestamp_domain.hardware_clock)
        rig.read()
        with pytest.raises(LatencyError, match=r"'front' in 'hardware_clock'.*global_time=True"):
            device_clock_offsets(rig)


def test_realsense_global_time_is_moved_from_the_system_clock_to_the_monotonic_one():
    rs, cam, rig = _soft_rig(global_time=True)
    frames = []
    with rig:
        for number in range(1, 6):
            cam.push(number, time.time_ns() / 1e6 - 25.0, rs.timestamp_domain.global_time)
            frames.append(rig.read())
        stats = camera_latency(frames, device_clock_offsets(rig))["front"]
    assert stats.frames == 5
    # exposed 25 ms before it was pushed; unconverted, host - device would be ~-1.7e9 s
    assert stats.min_s >= 0.0249 and stats.max_s < 5.0


def _raised_cosine_series(delay_s: float, noise_m: float, seed: int) -> Series:
    rng = np.random.default_rng(seed)
    command_t = np.arange(0.0, 2.6, 0.01)

    def x(t):
        u = np.clip(t - 0.4, 0.0, 1.6)
        return 0.015 * (1.0 - np.cos(2.0 * math.pi * u / 0.8))

    observed_t = np.arange(0.0123, 2.6, 1.0 / 30.0)
    observed_x = 0.7 + 0.9 * x(observed_t - delay_s) + rng.normal(0.0, noise_m, observed_t.size)
    return Series(command_t, x(command_t), observed_t, observed_x)


def test_fit_delay_resolves_far_below_a_frame_period():
    fit = fit_delay([_raised_cosine_series(0.0373, 1e-4, 0)], -0.1, 0.35)
    assert fit.delay_s == pytest.approx(0.0373, abs=0.001)
    assert fit.gain == pytest.approx(0.9, abs=0.01)


def test_fit_delay_refuses_a_delay_outside_the_searched_range():
    with pytest.raises(LatencyError, match="edge of the searched"):
        fit_delay([_raised_cosine_series(0.3, 1e-4, 1)], -0.1, 0.2)


def test_a_motion_faster_than_allowed_is_refused():
    with pytest.raises(ValueError, match="lengthen period_s"):
        LatencyMotion(amplitude_m=0.08, period_s=0.5)


def _calibration(cameras, source: str) -> CalibrationFile:
    records = {
        name: CameraCalibration(
            name, name, cam.K, np.zeros(5), cam.c2w, cam.width, cam.height, "2025-01-01", "true"
        )
        for name, cam in cameras.items()
    }
    return CalibrationFile(records, source=source)


def test_the_measurement_is_written_into_the_calibration_file(run_30_50, tmp_path):
    from aimg.calib.latency import write_latency

    run, _, cameras = run_30_50
    path = write_calibration(tmp_path / "cell.yaml", _calibration(cameras, "sim seed=7 cameras=2"))
    write_latency(path, run.result)
    latency = read_calibration(path).latency
    assert latency.arm_s == pytest.approx(run.result.arm.delay_s, abs=1e-6)
    assert latency.camera_s == pytest.approx({"cam0": 0.03, "cam1": 0.03}, abs=1e-6)
    assert latency.details["arm_state_s"] == pytest.approx(run.result.arm_state.delay_s, abs=1e-6)
    other = write_calibration(tmp_path / "other.yaml", _calibration({"x": cameras["cam0"]}, ""))
    with pytest.raises(CalibrationFileError, match="not \\['cam0', 'cam1'\\]"):
        write_latency(other, run.result)


def test_cli_sim_measures_scores_and_writes_the_calibration(tmp_path):
    from aimg.calib.sim import SimCalibrationCell

    with SimCalibrationCell(seed=SEED, num_cameras=1, supersample=1) as cell:
        cameras = cell.rig.cameras
    shifted = {}
    for name, cam in cameras.items():  # a calibration 2 mm off along each axis
        c2w = cam.c2w.copy()
        c2w[:3, 3] += 0.002
        shifted[name] = Camera(cam.K, c2w, cam.width, cam.height)
    path = write_calibration(tmp_path / "cal.yaml", _calibration(shifted, "sim seed=7 cameras=1"))
    args = ["latency", "--sim", "--calibration", str(path), "--fps", "15"]
    args += ["--period-s", "0.8", "--sim-camera-latency-ms", "40", "--sim-arm-latency-ms", "60"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["written"] == str(path)
    assert report["truth"]["arm_latency_s"] == 0.06
    assert abs(report["error_ms"]["arm"]) < TOLERANCE_MS
    assert report["error_ms"]["camera"] == {"cam0": 0.0}
    latency = read_calibration(path).latency
    assert latency.camera_s == {"cam0": pytest.approx(0.04)}
    assert latency.arm_s == pytest.approx(report["estimate"]["arm"]["delay_ms"] / 1e3, abs=1e-5)


def test_cli_needs_sim_or_a_cell_config():
    result = runner.invoke(app, ["latency"])
    assert result.exit_code != 0
    assert "either --sim or --config" in said(result)


def _real_cell(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "configs" / "cell-xarm-example.yaml").read_text())
    data["model"]["path"] = str(REPO / "assets" / "sim-tiny-16")  # any model: it is not used
    data["api"]["host"] = "127.0.0.1"
    for key, value in changes.items():
        section, leaf = key.split(".") if "." in key else (None, key)
        (data[section] if section else data)[leaf] = value
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_real_cell_refusals_name_the_problem(tmp_path):
    sim_cell = runner.invoke(app, ["latency", "--config", "configs/cell-sim.yaml"])
    assert sim_cell.exit_code != 0 and "use --sim" in said(sim_cell)
    recording = tmp_path / "recording"
    recording.mkdir()
    (recording / "manifest.json").write_text("{}")
    cam = Camera(np.diag([500.0, 500.0, 1.0]), np.eye(4), 640, 480)
    cal = write_calibration(tmp_path / "cal.yaml", _calibration({"front": cam}, "real"))
    replay = _real_cell(
        tmp_path, calibration=str(cal), **{"devices.camera_recording": str(recording)}
    )
    replayed = runner.invoke(app, ["latency", "--config", str(replay)])
    assert replayed.exit_code != 0 and "recorded, not live" in said(replayed)
    missing = _real_cell(tmp_path, calibration=str(tmp_path / "none.yaml"))
    no_file = runner.invoke(app, ["latency", "--config", str(missing)])
    assert no_file.exit_code != 0 and "does not exist" in said(no_file)


def test_cli_real_cell_needs_a_calibration_of_its_cameras(tmp_path):
    cam = Camera(np.diag([500.0, 500.0, 1.0]), np.eye(4), 640, 480)
    wrong = write_calibration(tmp_path / "wrong.yaml", _calibration({"left": cam}, "real"))
    cell = _real_cell(tmp_path, calibration=str(wrong))
    result = runner.invoke(app, ["latency", "--config", str(cell)])
    assert result.exit_code != 0
    assert "is for cameras ['left'], but this cell has ['front', 'side']" in said(result)

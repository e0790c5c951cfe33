"""`aimg calib intrinsics`: ChArUco calibration in the simulated cell scored against the true K,
its behaviour under pixel noise and on bad inputs, the intrinsics file, RealSense factory
intrinsics from a recording, and the command itself."""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from aimg.calib.board import BoardSpec, Detection
from aimg.calib.cli import app
from aimg.calib.handeye import CalibrationError
from aimg.calib.intrinsics import (
    IntrinsicsRecord,
    IntrinsicsSettings,
    SimIntrinsicsMotion,
    calibrate_from_detections,
    calibrate_intrinsics,
    capture_sim_images,
    draw_coverage_map,
    intrinsics_error,
    opencv_distortion,
    read_intrinsics,
    record_from_result,
    write_intrinsics,
)
from aimg.calib.intrinsics_cli import intrinsics as intrinsics_command

runner = CliRunner()


def said(result) -> str:
    """A command's output with rich's error box and line wrapping taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


#: a denser board than the hand-eye one: 48 corners pin the principal point down ~2x better
DENSE = BoardSpec(squares_x=9, squares_y=7, square_m=0.03, marker_m=0.022)
DENSE_ARGS = ["--squares-x", "9", "--squares-y", "7", "--square-m", "0.03", "--marker-m", "0.022"]
SIM_SEED = 0
W, H = 640, 480
TRUE_K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
TRUE_DIST = np.array([-0.05, 0.02, 0.0005, -0.0003, 0.0])


@pytest.fixture(scope="module")
def sim_views():
    """One simulated camera's board images (36 poses), its true K and the board."""
    from aimg.calib.sim import SimCalibrationCell

    with SimCalibrationCell(seed=SIM_SEED, num_cameras=1, board=DENSE) as cell:
        images = capture_sim_images(cell, "cam0", SimIntrinsicsMotion(views=36, seed=SIM_SEED))
        return images, cell.true_cameras["cam0"].K.copy()


@pytest.fixture(scope="module")
def sim_result(sim_views):
    images, _ = sim_views
    return calibrate_intrinsics(images, DENSE)


def _rotation(rotvec: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(rotvec, dtype=np.float64))[0]


def synthetic_detections(
    count: int,
    sigma_px: float = 0.0,
    tilt_deg: float = 35.0,
    spread: float = 1.0,
    seed: int = 0,
) -> list[Detection]:
    """DENSE board views through TRUE_K / TRUE_DIST: boards 0.45-0.7 m away, tilted `tilt_deg`
    about varied axes, centres spread over `spread` of the image; corners + N(0, sigma_px)."""
    import cv2

    rng = np.random.default_rng(seed)
    points = DENSE.corner_points()
    centre = np.array([*DENSE.size_m, 0.0]) / 2.0
    detections = []
    for k in range(count):
        depth = rng.uniform(0.45, 0.7)
        pixel = np.array([W / 2, H / 2]) + spread * rng.uniform(-1, 1, 2) * [200.0, 140.0]
        position = depth * np.linalg.inv(TRUE_K) @ np.array([*pixel, 1.0])
        phase = 2 * math.pi * k / count
        axis = np.array([math.cos(phase), math.sin(phase), 0.0])
        R = _rotation(axis * math.radians(tilt_deg) * rng.uniform(0.6, 1.0))
        t = position - R @ centre
        uv, _ = cv2.projectPoints(points, cv2.Rodrigues(R)[0], t, TRUE_K, TRUE_DIST)
        uv = uv.reshape(-1, 2) + rng.normal(0.0, sigma_px, (len(points), 2))
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
        detections.append(Detection(np.flatnonzero(inside), uv[inside]))
    return detections


# -- the simulated procedure ---------------------------------------------------------------------


def test_sim_charuco_recovers_the_true_focal_lengths_and_principal_point(sim_result, sim_views):
    _, truth = sim_views
    error = intrinsics_error(sim_result.K, truth)
    # measured over seeds 0-5 (36 poses): |fx|, |fy| <= 0.77 %, |cx| <= 5.3 px, |cy| <= 1.8 px;
    # seed 0: fx 0.06 %, fy 0.11 %, cx -0.25 px, cy 1.75 px
    assert abs(error["fx_percent"]) < 1.0 and abs(error["fy_percent"]) < 1.0, error
    assert abs(error["cx_px"]) < 6.0 and abs(error["cy_px"]) < 6.0, error
    for key, std in zip(("fx_px", "fy_px", "cx_px", "cy_px"), sim_result.std, strict=True):
        assert abs(error[key]) < 3.0 * std, (key, error, sim_result.std)
    assert sim_result.rms_px < 0.5
    assert np.all(np.abs(sim_result.distortion) < 0.1)  # the simulated lens has none
    assert len(sim_result.used) >= 20
    assert sim_result.coverage_fraction >= 0.6


def test_the_coverage_map_shows_empty_cells_red_and_corners_as_dots(sim_result):
    picture = draw_coverage_map(sim_result)
    assert picture.shape == (H, W, 3) and picture.dtype == np.uint8
    rows, cols = sim_result.coverage.shape
    coverage = sim_result.coverage
    well_covered = np.percentile(coverage[coverage > 0], 75)
    for (r, c), count in np.ndenumerate(coverage):
        if r == 0:
            continue  # the text row
        u, v = round((c + 0.5) * W / cols), round((r + 0.5) * H / rows)
        cell = picture[v - 10 : v + 10, u - 10 : u + 10].reshape(-1, 3).astype(int)
        background = np.median(cell, axis=0)
        if count == 0:
            assert background[0] > 2 * background[1], (r, c)  # red: nothing seen here
        elif count >= well_covered:
            assert background[1] > background[0], (r, c)  # green: well covered
    small = draw_coverage_map(sim_result, (320, 240))
    assert small.shape == (240, 320, 3)


def test_the_intrinsics_file_round_trips_and_updates_camera_by_camera(sim_result, tmp_path):
    path = tmp_path / "intr.yaml"
    record = record_from_result("front", "123", sim_result, "2026-01-01T00:00:00+00:00")
    write_intrinsics(path, {"front": record}, DENSE)
    other = IntrinsicsRecord("side", "456", TRUE_K, TRUE_DIST, W, H, "factory", "today")
    write_intrinsics(path, {"side": other})
    records = read_intrinsics(path)
    assert set(records) == {"front", "side"}
    np.testing.assert_allclose(records["front"].K, sim_result.K, atol=1e-6)
    np.testing.assert_allclose(records["front"].distortion, sim_result.distortion, atol=1e-8)
    assert records["front"].method == "charuco" and records["front"].views == len(sim_result.used)
    assert records["front"].rms_px == pytest.approx(sim_result.rms_px, abs=1e-4)
    assert records["side"].method == "factory" and records["side"].serial == "456"
    assert yaml.safe_load(path.read_text())["board"] == DENSE.to_dict()


def test_reading_something_else_says_what_it_is(tmp_path):
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text("format: aimg-calibration\nversion: 1\n")
    with pytest.raises(CalibrationError, match="not an aimg intrinsics file"):
        read_intrinsics(bogus)
    with pytest.raises(CalibrationError, match="does not exist"):
        read_intrinsics(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "format: aimg-intrinsics\nversion: 1\ncameras:\n  front: {serial: '1', K: [[1, 0], "
        "[0, 1]], distortion: [0, 0, 0, 0, 0], width: 640, height: 480, method: charuco}\n"
    )
    with pytest.raises(CalibrationError, match="camera 'front' K must be a finite 3x3"):
        read_intrinsics(bad)


# -- pixel noise and bad inputs ------------------------------------------------------------------


@pytest.mark.parametrize("sigma_px", [0.1, 0.5, 1.0])
def test_pixel_noise_degrades_the_estimate_gracefully(sigma_px):
    result = calibrate_from_detections(synthetic_detections(20, sigma_px, seed=3), DENSE, W, H)
    error = intrinsics_error(result.K, TRUE_K)
    assert result.rms_px == pytest.approx(math.sqrt(2.0) * sigma_px, rel=0.15)  # 2-D RMS
    # measured (seed 3): fx 0.07 / 0.33 / 0.68 %, cx 0.8 / 3.6 / 6.3 px; std of fx ~6 sigma
    assert abs(error["fx_percent"]) < sigma_px and abs(error["fy_percent"]) < sigma_px, error
    for key, std in zip(("fx_px", "fy_px", "cx_px", "cy_px"), result.std, strict=True):
        assert abs(error[key]) < 3.0 * std, (key, error, result.std)  # honest uncertainty
    assert 4.0 * sigma_px < result.std[0] < 8.0 * sigma_px


def test_a_misdetected_view_is_rejected_and_the_rest_resolved():
    detections = synthetic_detections(12, 0.2, seed=4)
    bad = detections[5]
    jitter = np.random.default_rng(0).normal(0.0, 3.0, bad.corners.shape)
    detections[5] = Detection(bad.ids, bad.corners + jitter)
    result = calibrate_from_detections(detections, DENSE, W, H)
    assert 5 in result.rejected and 5 not in result.used
    assert abs(intrinsics_error(result.K, TRUE_K)["fx_percent"]) < 1.0


def test_too_few_views_says_how_many_were_found_and_needed():
    with pytest.raises(CalibrationError, match=r"only 3 of 4 images .* need >= 6"):
        calibrate_from_detections(
            [*synthetic_detections(3), Detection(np.arange(4), np.zeros((4, 2)))], DENSE, W, H
        )


def test_images_without_a_board_say_the_board_was_never_found():
    blank = [np.full((H, W, 3), 200, np.uint8) for _ in range(3)]
    with pytest.raises(CalibrationError, match="not found in any of 3 images"):
        calibrate_intrinsics(blank, DENSE)


def test_fronto_parallel_views_are_refused_as_degenerate():
    with pytest.raises(CalibrationError, match="never tilted"):
        calibrate_from_detections(synthetic_detections(10, 0.1, tilt_deg=0.5), DENSE, W, H)


def test_boards_all_in_one_place_are_refused_for_coverage():
    settings = IntrinsicsSettings(grid=(16, 12), min_coverage=0.3)
    detections = synthetic_detections(10, 0.1, spread=0.0)
    with pytest.raises(CalibrationError, match="covered only"):
        calibrate_from_detections(detections, DENSE, W, H, settings)


# -- factory intrinsics --------------------------------------------------------------------------


def _inverse_brown_conrady(xd: np.ndarray, c: np.ndarray) -> np.ndarray:
    """librealsense's inverse Brown-Conrady: distorted -> undistorted normalised points."""
    x, y = xd[:, 0], xd[:, 1]
    r2 = x * x + y * y
    f = 1 + c[0] * r2 + c[1] * r2**2 + c[4] * r2**3
    return np.stack(
        [
            x * f + 2 * c[2] * x * y + c[3] * (r2 + 2 * x * x),
            y * f + 2 * c[3] * x * y + c[2] * (r2 + 2 * y * y),
        ],
        axis=-1,
    )


def test_inverse_brown_conrady_becomes_an_equivalent_opencv_distortion():
    import cv2

    from aimg.robot.realsense.rig import Intrinsics

    coeffs = (0.04, -0.03, 0.0008, -0.0005, 0.01)
    intr = Intrinsics(640, 480, 610.0, 612.0, 322.0, 241.0, "inverse_brown_conrady", coeffs)
    dist, fit_px = opencv_distortion(intr)
    assert fit_px < 0.05
    u, v = np.meshgrid(np.linspace(0, 639, 9), np.linspace(0, 479, 7))
    distorted = np.stack([(u.ravel() - 322.0) / 610.0, (v.ravel() - 241.0) / 612.0], axis=-1)
    undistorted = _inverse_brown_conrady(distorted, np.array(coeffs))
    points = np.concatenate([undistorted, np.ones((len(undistorted), 1))], axis=-1)
    uv, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), intr.K, dist)
    np.testing.assert_allclose(uv.reshape(-1, 2), np.stack([u.ravel(), v.ravel()], -1), atol=0.05)
    plain = Intrinsics(640, 480, 610.0, 612.0, 322.0, 241.0, "brown_conrady", coeffs)
    np.testing.assert_array_equal(opencv_distortion(plain)[0], coeffs)
    fisheye = Intrinsics(640, 480, 610.0, 612.0, 322.0, 241.0, "kannala_brandt4", coeffs)
    with pytest.raises(CalibrationError, match="--images"):
        opencv_distortion(fisheye)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A 0.5 s `aimg realsense record` directory of two software cameras."""
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb-1.0) not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "robot" / "realsense"))
    from rs_software import Feeder, SoftCamera, SoftwareSource

    from aimg.robot.realsense.recording import record
    from aimg.robot.realsense.rig import RealSenseCamera

    left = SoftCamera("111111111111", 1, 64, 48, fx=60.0)
    right = SoftCamera("222222222222", 2, 64, 48, fx=75.0)
    specs = [
        RealSenseCamera("left", left.serial, 64, 48),
        RealSenseCamera("right", right.serial, 64, 48),
    ]
    out = tmp_path_factory.mktemp("rec") / "cell"
    with Feeder(left), Feeder(right):
        record(specs, out, 0.5, SoftwareSource(left, right), stale_timeout_s=3.0)
    return out, {"left": left, "right": right}


def test_recording_mode_writes_every_cameras_factory_intrinsics(recording, tmp_path):
    directory, cams = recording
    out = tmp_path / "factory.yaml"
    result = runner.invoke(app, ["intrinsics", "--recording", str(directory), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["method"] == "factory" and set(report["cameras"]) == {"left", "right"}
    records = read_intrinsics(out)
    for name, cam in cams.items():
        intr = cam.intrinsics
        record = records[name]
        assert record.serial == cam.serial and record.method == "factory"
        assert (record.width, record.height) == (64, 48)
        np.testing.assert_allclose(
            record.K, [[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]], rtol=1e-6
        )
        np.testing.assert_allclose(record.distortion, intr.coeffs, atol=1e-7)  # brown_conrady


# -- the command ---------------------------------------------------------------------------------


def test_the_command_needs_exactly_one_source(tmp_path):
    none = runner.invoke(app, ["intrinsics", "--out", str(tmp_path / "x.yaml")])
    assert none.exit_code != 0 and "give exactly one of" in said(none)
    two = runner.invoke(app, ["intrinsics", "--sim", "--images", str(tmp_path)])
    assert two.exit_code != 0 and "--images, --sim" in said(two)


def test_images_mode_refuses_an_empty_folder_and_board_less_images(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    args = ["intrinsics", "--images", str(folder), "--camera", "front"]
    empty = runner.invoke(app, [*args, "--out", str(tmp_path / "i.yaml")])
    assert empty.exit_code != 0 and "holds no PNG or JPG images" in said(empty)
    for k in range(3):
        Image.fromarray(np.full((48, 64, 3), 90 + k, np.uint8)).save(folder / f"{k}.png")
    blank = runner.invoke(app, [*args, "--out", str(tmp_path / "i.yaml")])
    assert blank.exit_code == 1 and "not found in any of 3 images" in said(blank)
    assert not (tmp_path / "i.yaml").exists()


def test_the_board_options_default_to_the_board_spec():
    defaults = BoardSpec()
    parameters = inspect.signature(intrinsics_command).parameters
    for name in ("squares_x", "squares_y", "square_m", "marker_m", "dictionary"):
        assert parameters[name].default.default == getattr(defaults, name), name


def test_sim_mode_then_images_mode_on_its_saved_images(tmp_path):
    out, shots = tmp_path / "sim.yaml", tmp_path / "shots"
    args = ["intrinsics", "--sim", "--seed", "2", "--views", "12", *DENSE_ARGS]
    result = runner.invoke(app, [*args, "--save-images", str(shots), "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout.splitlines()[-1])["cameras"]["cam0"]
    assert abs(entry["error"]["fx_percent"]) < 2.0 and entry["views_used"] >= 8
    assert (tmp_path / "sim.cam0.coverage.png").is_file()
    again = tmp_path / "again.yaml"
    images = ["intrinsics", "--images", str(shots / "cam0"), "--camera", "cam0"]
    replay = runner.invoke(app, [*images, *DENSE_ARGS, "--serial", "S1", "--out", str(again)])
    assert replay.exit_code == 0, replay.output
    first, second = read_intrinsics(out)["cam0"], read_intrinsics(again)["cam0"]
    np.testing.assert_allclose(second.K, first.K, atol=1e-6)  # PNGs are lossless
    assert second.serial == "S1" and second.views == first.views

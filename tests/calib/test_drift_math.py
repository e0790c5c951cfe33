"""The drift verdict on exact synthetic detections (no simulator): what moves, by how much."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.board import BoardSpec, Detection
from aimg.calib.calibration_file import CalibrationFile, CameraCalibration, ReferenceFrame
from aimg.calib.drift import DriftThresholds, assess_camera
from aimg.calib.handeye import facing_pose, flag_mount
from aimg.geometry import Camera, intrinsics_matrix, look_at, rotvec_to_matrix

SPEC = BoardSpec()
MOUNT = flag_mount(SPEC)
CAMERA = Camera(
    intrinsics_matrix(520.0, 520.0, 319.5, 239.5),
    look_at((1.2, 0.3, 0.7), (0.45, 0.0, 0.25)),
    640,
    480,
)
POSES = [
    facing_pose(np.array(p), CAMERA.center - np.array(p), MOUNT, SPEC, roll)
    for p, roll in (((0.45, 0.0, 0.25), 0.0), ((0.4, 0.12, 0.3), 0.3), ((0.5, -0.1, 0.22), -0.3))
]


def detect(camera: Camera, pose: np.ndarray) -> Detection:
    board = pose @ MOUNT
    uv, _ = camera.project(SPEC.corner_points() @ board[:3, :3].T + board[:3, 3])
    return Detection(np.arange(len(uv)), uv)


def calibration() -> CalibrationFile:
    refs = tuple(
        ReferenceFrame(f"ref{k}.png", pose, detect(CAMERA, pose)) for k, pose in enumerate(POSES)
    )
    record = CameraCalibration(
        "cam",
        "SN",
        CAMERA.K,
        np.zeros(5),
        CAMERA.c2w,
        640,
        480,
        "2026-12-02",
        "park",
        references=refs,
    )
    return CalibrationFile({"cam": record}, SPEC, MOUNT, "test")


def knocked(translation: np.ndarray, rotvec: np.ndarray) -> Camera:
    c2w = CAMERA.c2w.copy()
    c2w[:3, :3] = c2w[:3, :3] @ rotvec_to_matrix(rotvec)
    c2w[:3, 3] += translation
    return Camera(CAMERA.K, c2w, 640, 480)


def test_an_unmoved_camera_reads_zero():
    verdict = assess_camera(calibration(), "cam", [(p, detect(CAMERA, p)) for p in POSES])
    assert verdict.ok and verdict.translation_mm < 1e-3 and verdict.rotation_deg < 1e-4


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_1cm_move_along_any_axis_is_measured(axis):
    moved = knocked(0.01 * np.eye(3)[axis], np.zeros(3))
    verdict = assess_camera(calibration(), "cam", [(p, detect(moved, p)) for p in POSES])
    assert not verdict.ok
    assert verdict.translation_mm == pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_1deg_turn_about_any_axis_is_measured(axis):
    turned = knocked(np.zeros(3), np.radians(1.0) * np.eye(3)[axis])
    verdict = assess_camera(calibration(), "cam", [(p, detect(turned, p)) for p in POSES])
    assert not verdict.ok
    assert verdict.rotation_deg == pytest.approx(1.0, abs=0.001)
    assert "camera 'cam' moved" in verdict.reason


def test_moves_inside_the_limits_pass():
    small = knocked(np.array([0.002, 0.0, 0.0]), np.radians([0.0, 0.2, 0.0]))
    verdict = assess_camera(
        calibration(), "cam", [(p, detect(small, p)) for p in POSES], DriftThresholds()
    )
    assert verdict.ok, verdict.reason

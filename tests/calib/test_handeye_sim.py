"""The whole hand-eye procedure in the simulated cell, scored against exact ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from aimg.calib.calibration_file import read_calibration
from aimg.geometry import matrix_to_rotvec

pytestmark = pytest.mark.slow


def test_every_camera_is_within_2mm_and_0_2deg_of_the_truth(calibrated):
    for name, error in calibrated.run.errors.items():
        assert error["translation_mm"] <= 2.0, name
        assert error["rotation_deg"] <= 0.2, name


def test_the_board_mount_is_recovered(calibrated):
    assert calibrated.run.mount_error["translation_mm"] <= 1.0
    assert calibrated.run.mount_error["rotation_deg"] <= 0.2


def test_held_out_poses_reproject_within_a_pixel(calibrated):
    for name, solution in calibrated.run.result.cameras.items():
        assert solution.validation.views >= 1, name
        assert solution.validation.rms_px < 1.0, name
        assert solution.validation.rms_mm < 2.0, name


def test_the_motion_rotates_about_all_three_axes_within_3_minutes(calibrated):
    poses = np.array([view.tool_pose for view in calibrated.run.result.views])
    relative = matrix_to_rotvec(np.swapaxes(poses[:1, :3, :3], -1, -2) @ poses[:, :3, :3])
    assert np.linalg.svd(relative, compute_uv=False)[2] > math.radians(10.0)
    assert calibrated.run.motion_sim_s < 180.0


def test_the_file_holds_every_camera_with_references_and_an_overlay(calibrated):
    calibration = read_calibration(calibrated.path)
    cameras = calibration.cameras()
    assert set(cameras) == set(calibrated.truth)
    for name, camera in cameras.items():
        solution = calibrated.run.result.cameras[name]
        np.testing.assert_allclose(camera.c2w, solution.camera.c2w, atol=1e-8)
        record = calibration.records[name]
        assert record.residuals["validation"]["rms_px"] == pytest.approx(
            solution.validation.rms_px, abs=1e-3
        )
        assert len(record.references) >= 2
        reference = np.asarray(Image.open(calibration.reference_image_paths(name)[0]))
        assert reference.shape == (480, 640, 3)
        overlay = np.asarray(Image.open(calibrated.path.parent / f"cell.{name}.overlay.png"))
        assert overlay.shape == reference.shape
        assert np.count_nonzero(np.any(overlay != reference, axis=-1)) > 500  # drawn on


def test_a_second_random_cell_with_three_cameras_calibrates_within_bounds(make_cell, quick_motion):
    from aimg.calib.session import calibrate_sim

    with make_cell(seed=23, num_cameras=3) as cell:
        run = calibrate_sim(cell, None, quick_motion(cell, 23))
    assert len(run.errors) == 3
    for name, error in run.errors.items():
        assert error["translation_mm"] <= 2.0, name
        assert error["rotation_deg"] <= 0.2, name

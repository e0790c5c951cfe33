"""Noise study: pixel noise on the detected corners and noise on the arm's pose readings
degrade the calibration gradually (roughly in proportion), never abruptly."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.handeye import solve
from aimg.calib.sim import pose_error, with_pixel_noise, with_pose_noise

pytestmark = pytest.mark.slow


def worst(calibrated, views) -> tuple[float, float]:
    result = solve(views, calibrated.intrinsics, calibrated.board)
    errors = [pose_error(s.camera.c2w, calibrated.truth[n]) for n, s in result.cameras.items()]
    return max(e.translation_mm for e in errors), max(e.rotation_deg for e in errors)


@pytest.mark.parametrize(("sigma_px", "max_mm", "max_deg"), [(0.25, 3.0, 0.2), (1.0, 8.0, 0.5)])
def test_pixel_noise_degrades_gracefully(calibrated, sigma_px, max_mm, max_deg):
    mm, deg = worst(calibrated, with_pixel_noise(calibrated.run.result.views, sigma_px, seed=1))
    assert mm <= max_mm and deg <= max_deg


def test_error_grows_with_pixel_noise(calibrated):
    views = calibrated.run.result.views
    low = worst(calibrated, with_pixel_noise(views, 0.2, seed=2))[0]
    high = worst(calibrated, with_pixel_noise(views, 2.0, seed=2))[0]
    assert high > low


@pytest.mark.parametrize(
    ("position_mm", "rotation_deg", "max_mm", "max_deg"),
    [(0.5, 0.05, 4.0, 0.3), (1.0, 0.1, 8.0, 0.5)],
)
def test_arm_pose_noise_degrades_gracefully(calibrated, position_mm, rotation_deg, max_mm, max_deg):
    noisy = with_pose_noise(
        calibrated.run.result.views, position_mm / 1000.0, np.radians(rotation_deg), seed=3
    )
    mm, deg = worst(calibrated, noisy)
    assert mm <= max_mm and deg <= max_deg

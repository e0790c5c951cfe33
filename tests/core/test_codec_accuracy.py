"""Round-trip accuracy of the codec (render -> uint8 -> decode) on random rigs and actions.

The fast tests use a few frames; the `slow` ones are the acceptance checks quoted in
docs/benchmarks.md (1000 frames; 300 for blur and noise, whose image degradation alone takes
minutes at 1000 frames on two cores; the 1000-frame figure is in the docs). Seeds are fixed.
"""

from __future__ import annotations

import numpy as np
import pytest

from aimg.codec.evaluate import degrade, round_trip_errors


def test_round_trip_errors_reports_every_frame():
    errors = round_trip_errors(num_frames=7, size=128, seed=5, frames_per_rig=3)
    summary = errors.summary()
    assert summary["frames"] == 7 and errors.position_mm.shape == (7,)
    assert summary["failed_frames"] == 0
    assert np.isfinite(errors.rotation_deg).all()
    assert 0.0 <= summary["confidence_median"] <= 1.0


def test_round_trip_errors_grow_with_noise():
    clean = round_trip_errors(num_frames=12, size=128, seed=6, frames_per_rig=6)
    noisy = round_trip_errors(num_frames=12, size=128, seed=6, frames_per_rig=6, noise_std=0.1)
    assert np.median(noisy.position_mm) > 3 * np.median(clean.position_mm)
    assert np.median(noisy.confidence) <= np.median(clean.confidence)


def test_degrade_blurs_and_adds_noise_within_range():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 32, 32, 3), dtype=np.float32)
    image[0, 16, 16] = 1.0
    blurred = degrade(image, rng, blur_sigma=2.0, noise_std=0.0)
    assert blurred[0, 16, 16, 0] < 0.1 and blurred[0, 16, 18, 0] > 0.0
    assert blurred[0, ..., 0].sum() == pytest.approx(1.0, abs=1e-3)
    noisy = degrade(image, rng, blur_sigma=0.0, noise_std=0.05)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0


@pytest.mark.slow
def test_acceptance_512_clean_1000_frames():
    summary = round_trip_errors(num_frames=1000, size=512, seed=512).summary()
    assert summary["failed_frames"] == 0
    assert summary["position_mm_median"] <= 0.5 and summary["position_mm_p99"] <= 2.0
    assert summary["rotation_deg_median"] <= 0.3 and summary["rotation_deg_p99"] <= 1.0
    assert summary["roll_deg_p99"] <= 1.0
    assert summary["gripper_accuracy"] == 1.0


@pytest.mark.slow
def test_acceptance_64_clean_1000_frames():
    summary = round_trip_errors(num_frames=1000, size=64, seed=64).summary()
    assert summary["failed_frames"] == 0
    assert summary["position_mm_p99"] <= 5.0
    assert summary["rotation_deg_p99"] <= 3.0
    assert summary["gripper_accuracy"] == 1.0


@pytest.mark.slow
def test_acceptance_512_blur_and_noise_300_frames():
    errors = round_trip_errors(num_frames=300, size=512, seed=2, blur_sigma=2.0, noise_std=0.05)
    summary = errors.summary()
    assert summary["failed_frames"] == 0
    assert summary["position_mm_p99"] <= 5.0
    assert summary["gripper_accuracy"] == 1.0

"""Specification of aimg.codec.render: the reference encoder, reproduced exactly.

The encoder is described in docs/reference.md §1.
"""

from __future__ import annotations

import numpy as np
import pytest

from aimg.codec import render, render_pixels, to_uint8
from aimg.codec.render import action_points, blob_sigma, project_actions
from aimg.geometry import Camera, intrinsics_matrix, look_at


def _views_first(array: np.ndarray) -> np.ndarray:
    """Fixture arrays are [V, T, ...]; ours are [T, V, ...]."""
    return np.swapaxes(array, 0, 1)


def test_render_matches_reference_float32_images_at_64(ref, ref_cameras):
    images = render(ref["actions_7d"], ref_cameras(64), 64, 64)
    assert images.dtype == np.float32 and images.shape == (6, 2, 64, 64, 3)
    np.testing.assert_allclose(images, _views_first(ref["images_64"]), atol=1e-5)


@pytest.mark.parametrize("size", [64, 512])
def test_render_matches_reference_uint8_images_within_one_count(ref, size, ref_cameras):
    images = to_uint8(render(ref["actions_7d"], ref_cameras(size), size, size))
    diff = np.abs(images.astype(int) - _views_first(ref[f"images_{size}_uint8"]).astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-4  # only truncation boundaries differ


@pytest.mark.parametrize("size", [64, 512])
def test_projection_matches_reference_action_5d(ref, size, ref_cameras):
    a5 = project_actions(ref["actions_7d"], ref_cameras(size))
    np.testing.assert_allclose(a5, _views_first(ref[f"action_5d_{size}_np"]), atol=1e-9)
    np.testing.assert_allclose(a5, _views_first(ref[f"action_5d_{size}"]), atol=1e-4)


def test_render_pixels_is_the_reference_rasteriser(ref):
    images = render_pixels(_views_first(ref["action_5d_64"]), 64, 64)
    np.testing.assert_allclose(images, _views_first(ref["images_64"]), atol=1e-6)


def test_action_points_match_the_reference_points(ref):
    np.testing.assert_allclose(action_points(ref["actions_7d"]), ref["points3d"], atol=1e-12)


def test_blob_is_an_unnormalised_gaussian_with_sigma_five_percent():
    assert blob_sigma(512, 512) == pytest.approx(25.6)
    assert blob_sigma(64, 128) == pytest.approx(3.2)
    a5 = np.array([[[20.0, 30.0, 100.0, 100.0, 100.0, 100.0, 1.0]]])
    image = render_pixels(a5, 64, 64)[0, 0, :, :, 0]
    assert image[30, 20] == pytest.approx(1.0)
    sigma = 3.2
    assert image[30, 23] == pytest.approx(np.exp(-9 / (2 * sigma**2)), rel=1e-6)
    assert image[26, 20] == pytest.approx(np.exp(-16 / (2 * sigma**2)), rel=1e-6)


def test_wider_blobs_follow_the_requested_fraction():
    assert blob_sigma(64, 64, 0.125) == pytest.approx(8.0)
    a5 = np.array([[[20.0, 30.0, 100.0, 100.0, 100.0, 100.0, 1.0]]])
    image = render_pixels(a5, 64, 64, 0.125)[0, 0, :, :, 0]
    assert image[30, 20] == pytest.approx(1.0)
    assert image[30, 28] == pytest.approx(np.exp(-64 / (2 * 8.0**2)), rel=1e-6)
    with pytest.raises(ValueError, match="fraction"):
        blob_sigma(64, 64, 0.0)


@pytest.mark.parametrize(("openness", "level"), [(1.0, 0.25), (0.6, 0.25), (0.5, 0.0), (0.0, 0.0)])
def test_blue_background_encodes_the_gripper(openness, level):
    a5 = np.array([[[10.0, 10.0, 10.0, 10.0, 32.0, 32.0, openness]]])
    blue = render_pixels(a5, 64, 64)[0, 0, :, :, 2]
    assert blue[0, 63] == level
    assert blue[32, 32] == pytest.approx(1.0)


def test_closed_blue_is_a_gaussian_truncated_at_a_quarter():
    a5 = np.array([[[0.0, 0.0, 0.0, 0.0, 32.0, 32.0, 0.0]]])
    blue = render_pixels(a5, 64, 64)[0, 0, :, :, 2]
    kept = blue[blue > 0]
    assert kept.min() > 0.25
    assert (blue <= 0.25).sum() == (blue == 0).sum()


def test_open_background_is_63_after_uint8_conversion():
    a5 = np.array([[[0.0, 0.0, 0.0, 0.0, 32.0, 32.0, 1.0]]])
    assert to_uint8(render_pixels(a5, 64, 64))[0, 0, 0, 63, 2] == 63


def test_points_behind_a_camera_are_not_drawn():
    cam = Camera(
        intrinsics_matrix(60, 60, 31.5, 31.5),
        look_at([0.4, 0, 1.0], [0.4, 0, 2.0], up=(1.0, 0.0, 0.0)),
        64,
        64,
    )
    action = np.array([[0.4, 0.0, 0.15, np.pi, 0.0, 0.0, 1.0]])  # below the camera, behind it
    image = render(action, [cam], 64, 64)[0, 0]
    assert np.isnan(project_actions(action, [cam])[0, 0, :6]).all()
    assert image[..., :2].max() == 0.0
    assert (image[..., 2] == 0.25).all()


def test_render_rejects_cameras_of_another_size(ref, ref_cameras):
    with pytest.raises(ValueError, match="Camera.scaled"):
        render(ref["actions_7d"], ref_cameras(512), 64, 64)


@pytest.mark.parametrize(
    "actions",
    [np.zeros((4, 6)), np.zeros(7), np.full((2, 7), np.nan)],
    ids=["six-columns", "one-dimensional", "nan"],
)
def test_render_rejects_bad_actions(ref, actions, ref_cameras):
    with pytest.raises(ValueError, match="actions"):
        render(actions, ref_cameras(64), 64, 64)


def test_render_rejects_no_cameras(ref):
    with pytest.raises(ValueError, match="camera"):
        render(ref["actions_7d"], [], 64, 64)


def test_render_pixels_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[T, V, 7\]"):
        render_pixels(np.zeros((3, 7)), 64, 64)

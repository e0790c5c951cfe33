"""Specification of aimg.codec.decode: our multi-view action-image decoder."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.codec import DecodedActions, decode, render, to_uint8
from aimg.codec.evaluate import random_actions, random_rig, round_trip_errors
from aimg.codec.render import action_points, project_actions
from aimg.geometry import Camera, euler_xyz_to_matrix, look_at, rotation_angle_between

SIZE = 256


def _errors(decoded: DecodedActions, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position error (mm) and geodesic rotation error (deg) per frame."""
    position = np.linalg.norm(decoded.actions[:, :3] - actions[:, :3], axis=1) * 1e3
    rotation = rotation_angle_between(
        euler_xyz_to_matrix(decoded.actions[:, 3:6]), euler_xyz_to_matrix(actions[:, 3:6])
    )
    return position, np.degrees(rotation)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[Camera], np.ndarray]:
    rng = np.random.default_rng(11)
    cameras = random_rig(rng, 2, SIZE)
    actions = random_actions(rng, 6)
    return actions, cameras, to_uint8(render(actions, cameras, SIZE, SIZE))


@pytest.mark.parametrize(
    ("size", "max_mm", "max_deg"),
    [(64, 5.0, 3.0), (128, 3.0, 2.0), (256, 2.0, 1.0), (512, 2.0, 1.0)],
)
def test_round_trip_on_random_rigs_is_accurate(size, max_mm, max_deg):
    errors = round_trip_errors(num_frames=24, size=size, seed=size, frames_per_rig=4)
    assert not errors.failed.any()
    assert errors.position_mm.max() < max_mm
    assert errors.rotation_deg.max() < max_deg
    assert errors.roll_deg.max() < max_deg
    assert errors.gripper_ok.all()


@pytest.mark.parametrize("fraction", [0.125, 0.2])
def test_wide_blobs_decode_when_told_their_width(fraction):
    rng = np.random.default_rng(5)
    cameras = random_rig(rng, 2, 64)
    actions = random_actions(rng, 8)
    images = render(actions, cameras, 64, 64, fraction)
    position, rotation = _errors(decode(images, cameras, sigma_fraction=fraction), actions)
    assert position.max() < 1.0 and rotation.max() < 1.0


def test_blur_and_noise_degrade_gracefully():
    errors = round_trip_errors(
        num_frames=12, size=512, seed=3, frames_per_rig=4, blur_sigma=2.0, noise_std=0.05
    )
    assert not errors.failed.any()
    assert errors.position_mm.max() < 5.0
    assert errors.rotation_deg.max() < 3.0
    assert errors.gripper_ok.all()


def test_decoded_actions_have_the_documented_shapes(scene):
    actions, cameras, images = scene
    decoded = decode(images, cameras)
    assert decoded.actions.shape == (6, 7) and decoded.actions.dtype == np.float64
    assert decoded.points.shape == (6, 3, 3)
    assert decoded.confidence.shape == (6,)
    assert ((decoded.confidence >= 0) & (decoded.confidence <= 1)).all()
    np.testing.assert_allclose(decoded.points, action_points(decoded.actions), atol=1e-12)


def test_clean_frames_get_high_confidence(scene):
    actions, cameras, images = scene
    assert decode(images, cameras).confidence.min() > 0.9


def test_float_and_uint8_images_decode_alike(scene):
    actions, cameras, images = scene
    as_float = decode(render(actions, cameras, SIZE, SIZE), cameras)
    as_uint8 = decode(images, cameras)
    np.testing.assert_allclose(as_float.actions[:, :3], as_uint8.actions[:, :3], atol=1e-4)
    position, rotation = _errors(as_float, actions)
    assert position.max() < 1e-3 and rotation.max() < 1e-3


def test_gripper_is_read_from_the_blue_background(scene):
    actions, cameras, _ = scene
    for openness in (0.0, 1.0):
        flipped = actions.copy()
        flipped[:, 6] = openness
        decoded = decode(to_uint8(render(flipped, cameras, SIZE, SIZE)), cameras)
        assert (decoded.actions[:, 6] == openness).all()


def test_views_that_disagree_get_low_confidence(scene):
    actions, cameras, images = scene
    other = random_actions(np.random.default_rng(99), len(actions))
    other[:, 6] = actions[:, 6]
    mixed = images.copy()
    mixed[:, 1] = to_uint8(render(other, cameras[1:], SIZE, SIZE))[:, 0]
    decoded = decode(mixed, cameras)
    assert decoded.confidence.max() < 0.1
    assert (decoded.reprojection_error > 1.0).all()


def test_a_third_view_exposes_a_small_disagreement():
    """Two views can explain a shifted second view by a slightly wrong pose; three cannot."""
    rng = np.random.default_rng(12)
    cameras = random_rig(rng, 3, SIZE)
    actions = random_actions(rng, 4)
    images = to_uint8(render(actions, cameras, SIZE, SIZE))
    moved = actions.copy()
    moved[:, :3] += 0.02
    images[:, 2] = to_uint8(render(moved, cameras[2:], SIZE, SIZE))[:, 0]
    assert decode(images, cameras).confidence.max() < 0.1


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_blob_missing_from_one_view_is_recovered_from_the_others(scene, channel):
    actions, cameras, images = scene
    damaged = images.copy()
    damaged[:, 1, :, :, channel] = 0
    if channel == 2:
        damaged[:, 1, :, :, 2] = np.where(actions[:, 6] > 0.5, 63, 0)[:, None, None]
    decoded = decode(damaged, cameras)
    position, rotation = _errors(decoded, actions)
    assert position.max() < 2.0 and rotation.max() < 1.0
    assert (decoded.actions[:, 6] == actions[:, 6]).all()
    assert (decoded.confidence < 0.9).all() and (decoded.confidence > 0.5).all()


def test_a_point_leaving_one_view_is_still_located():
    rng = np.random.default_rng(4)
    cameras = random_rig(rng, 2, 512)
    candidates = random_actions(rng, 200)
    uv = project_actions(candidates, cameras)[:, 1, :6].reshape(-1, 3, 2)
    spread = np.minimum(uv[:, 1, 0], uv[:, 2, 0]) - uv[:, 0, 0]
    action = candidates[np.argmax(spread)][None]
    shift = -15.0 - uv[np.argmax(spread), 0, 0]  # the position blob centre 15 px left of view 1
    K = cameras[1].K.copy()
    K[0, 2] += shift
    cameras = [cameras[0], Camera(K, cameras[1].c2w, 512, 512)]
    uv = project_actions(action, cameras)[0, 1, :6].reshape(3, 2)
    assert uv[0, 0] < 0 and (uv[1:, 0] > 0).all()
    decoded = decode(to_uint8(render(action, cameras, 512, 512)), cameras)
    position, rotation = _errors(decoded, action)
    assert position[0] < 2.0 and rotation[0] < 1.0


def test_a_camera_facing_away_is_ignored():
    rng = np.random.default_rng(8)
    cameras = random_rig(rng, 2, SIZE)
    away = Camera(cameras[0].K, look_at([0.4, 0.0, 1.0], [0.4, 1.0, 1.2]), SIZE, SIZE)
    actions = random_actions(rng, 4)
    images = to_uint8(render(actions, [*cameras, away], SIZE, SIZE))
    assert images[:, 2, :, :, :2].max() == 0
    decoded = decode(images, [*cameras, away])
    position, rotation = _errors(decoded, actions)
    assert position.max() < 2.0 and rotation.max() < 1.0


def test_blank_frames_give_nan_poses_and_zero_confidence(scene):
    _, cameras, images = scene
    blank = np.zeros_like(images[:2])
    blank[1, ..., 2] = 63
    decoded = decode(blank, cameras)
    assert np.isnan(decoded.actions[:, :6]).all()
    assert (decoded.confidence == 0).all()
    assert decoded.actions[:, 6].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda im: im[0], r"\[T, V, H, W, 3\]"),
        (lambda im: np.concatenate([im, im[..., :1]], axis=-1), r"\[T, V, H, W, 3\]"),
        (lambda im: im.astype(np.int16), "uint8 or float"),
        (lambda im: np.where(im > 200, np.nan, im / 255.0), "NaN"),
        (lambda im: im[:, :1], "2 cameras for 1 views"),
        (lambda im: im[:, :, :128, :128], "Camera.scaled"),
    ],
    ids=["no-view-axis", "four-channels", "int16", "nan", "camera-count", "camera-size"],
)
def test_bad_input_raises_a_clear_value_error(scene, transform, message):
    _, cameras, images = scene
    with pytest.raises(ValueError, match=message):
        decode(transform(images), cameras)


def test_non_camera_objects_are_rejected(scene):
    _, cameras, images = scene
    with pytest.raises(ValueError, match="expected aimg.geometry.Camera"):
        decode(images, [cameras[0], cameras[1].K])


def test_located_blobs_sit_where_the_points_project(scene):
    """`locate_blobs` gives each view's own placement of each point, before the 3D fit."""
    from aimg.codec.decode import locate_blobs

    actions, cameras, images = scene
    uv, weight = locate_blobs(images)
    assert uv.shape == (len(actions), len(cameras), 3, 2) and weight.shape == uv.shape[:3]
    expected = project_actions(actions, cameras)[..., :6].reshape(len(actions), len(cameras), 3, 2)
    seen = weight > 0.5
    assert seen.mean() > 0.9
    error = np.linalg.norm(uv[seen] - expected[seen], axis=-1)
    assert np.median(error) < 0.3 and error.max() < 1.5
    assert np.isnan(uv[weight == 0]).all()
    with pytest.raises(ValueError, match=r"\[T, V, H, W, 3\]"):
        locate_blobs(images[0])

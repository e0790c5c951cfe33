"""Specification of aimg.geometry: rotations, cameras, reference conventions, Plücker rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aimg import geometry as g

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "codec.npz"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _camera(rng: np.random.Generator, width: int = 320, height: int = 240) -> g.Camera:
    eye = np.array([0.4, 0.0, 0.15]) + rng.normal(size=3) * 0.2 + np.array([0.0, -0.9, 0.5])
    K = g.intrinsics_matrix(300.0, 310.0, width / 2 - 3.0, height / 2 + 2.0)
    return g.Camera(K, g.look_at(eye, [0.4, 0.0, 0.15]), width, height)


def test_euler_xyz_matches_scipy_extrinsic_xyz(rng):
    euler = rng.uniform(-np.pi, np.pi, (50, 3))
    expected = Rotation.from_euler("xyz", euler).as_matrix()
    np.testing.assert_allclose(g.euler_xyz_to_matrix(euler), expected, atol=1e-12)


def test_euler_xyz_is_rz_ry_rx(rng):
    ex, ey, ez = rng.uniform(-1, 1, 3)
    rx = Rotation.from_rotvec([ex, 0, 0]).as_matrix()
    ry = Rotation.from_rotvec([0, ey, 0]).as_matrix()
    rz = Rotation.from_rotvec([0, 0, ez]).as_matrix()
    np.testing.assert_allclose(g.euler_xyz_to_matrix([ex, ey, ez]), rz @ ry @ rx, atol=1e-12)


@pytest.mark.parametrize(
    ("forward", "backward"),
    [
        (g.matrix_to_euler_xyz, g.euler_xyz_to_matrix),
        (g.matrix_to_quat, g.quat_to_matrix),
        (g.matrix_to_rotvec, g.rotvec_to_matrix),
    ],
)
def test_rotation_converters_round_trip(rng, forward, backward):
    matrices = Rotation.random(40, random_state=1).as_matrix().reshape(4, 10, 3, 3)
    np.testing.assert_allclose(backward(forward(matrices)), matrices, atol=1e-10)


def test_quaternions_are_scalar_last_with_non_negative_w(rng):
    rot = Rotation.random(30, random_state=2)
    quat = g.matrix_to_quat(rot.as_matrix())
    assert (quat[:, 3] >= 0).all()
    np.testing.assert_allclose(np.abs(quat), np.abs(rot.as_quat()), atol=1e-12)


def test_orthonormalize_returns_nearest_proper_rotation(rng):
    rot = Rotation.random(10, random_state=3).as_matrix()
    noisy = rot + rng.normal(scale=1e-3, size=rot.shape)
    fixed = g.orthonormalize(noisy)
    np.testing.assert_allclose(
        fixed @ np.swapaxes(fixed, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(fixed), 1.0, atol=1e-12)
    assert g.rotation_angle_between(fixed, rot).max() < 2e-3


def test_action_matrix_round_trip(rng):
    action = np.concatenate(
        [rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (5, 3)), np.ones((5, 1))], 1
    )
    back = g.matrix_to_action(g.action_to_matrix(action), action[:, 6])
    np.testing.assert_allclose(back, action, atol=1e-12)


def test_invert_pose_is_exact_inverse(rng):
    pose = g.pose_to_matrix(rng.normal(size=3), Rotation.random(random_state=4).as_matrix())
    np.testing.assert_allclose(g.invert_pose(pose) @ pose, np.eye(4), atol=1e-12)


def test_look_at_points_the_optical_axis_at_the_target():
    c2w = g.look_at([1.0, -1.0, 1.0], [0.4, 0.0, 0.15])
    forward = c2w[:3, 2]
    expected = np.array([0.4, 0.0, 0.15]) - np.array([1.0, -1.0, 1.0])
    np.testing.assert_allclose(forward, expected / np.linalg.norm(expected), atol=1e-12)
    assert c2w[2, 1] < 0  # image down (camera +y) points down in the world


def test_look_at_rejects_viewing_along_up():
    with pytest.raises(ValueError, match="parallel"):
        g.look_at([0.0, 0.0, 1.0], [0.0, 0.0, 0.0])


def test_project_unproject_round_trip(rng):
    cam = _camera(rng)
    points = np.array([0.4, 0.0, 0.15]) + rng.uniform(-0.2, 0.2, (100, 3))
    uv, depth = cam.project(points)
    np.testing.assert_allclose(cam.unproject(uv, depth), points, atol=1e-12)


def test_projection_uses_pixel_index_convention():
    K = g.intrinsics_matrix(100.0, 100.0, 10.0, 20.0)
    cam = g.Camera(K, np.eye(4), 64, 64)
    uv, depth = cam.project([0.0, 0.0, 2.0])
    np.testing.assert_allclose(uv, [10.0, 20.0])
    assert depth == 2.0


def test_points_behind_the_camera_project_to_nan(rng):
    cam = g.Camera(g.intrinsics_matrix(100, 100, 32, 32), np.eye(4), 64, 64)
    uv, depth = cam.project(np.array([[0.1, 0.0, -1.0], [0.1, 0.0, 0.0], [0.1, 0.0, 1.0]]))
    assert np.isnan(uv[:2]).all()
    assert np.isfinite(uv[2]).all()
    assert depth[0] < 0


def test_pixel_rays_pass_through_projected_points(rng):
    cam = _camera(rng)
    point = np.array([0.45, 0.05, 0.1])
    uv, _ = cam.project(point)
    origin, direction = cam.pixel_rays(uv)
    offset = point - origin
    np.testing.assert_allclose(np.cross(offset, direction), 0.0, atol=1e-12)
    assert cam.pixel_rays()[1].shape == (cam.height, cam.width, 3)


def test_camera_rejects_flipped_focal_lengths():
    K, c2w = g.flip_reference_convention(g.intrinsics_matrix(100, 100, 32, 32), np.eye(4))
    with pytest.raises(ValueError, match="from_reference_flipped"):
        g.Camera(K, c2w, 64, 64)


def test_camera_rejects_bad_matrices():
    with pytest.raises(ValueError, match="shape|K \\[3, 3\\]"):
        g.Camera(np.eye(2), np.eye(4), 64, 64)
    with pytest.raises(ValueError, match="NaN"):
        g.Camera(np.full((3, 3), np.nan), np.eye(4), 64, 64)
    with pytest.raises(ValueError, match="rotation"):
        g.Camera(g.intrinsics_matrix(1, 1, 0, 0), np.diag([1.0, 1.0, -1.0, 1.0]), 64, 64)


def test_flipped_convention_is_an_involution(rng):
    cam = _camera(rng)
    K2, c2w2 = g.flip_reference_convention(*g.flip_reference_convention(cam.K, cam.c2w))
    np.testing.assert_array_equal(K2, cam.K)
    np.testing.assert_array_equal(c2w2, cam.c2w)


def test_flipped_convention_leaves_projection_unchanged(rng):
    cam = _camera(rng)
    K_f, c2w_f = cam.to_reference_flipped()
    assert K_f[0, 0] < 0 and K_f[1, 1] < 0
    points = np.array([0.4, 0.0, 0.15]) + rng.uniform(-0.2, 0.2, (20, 3))
    cam_pts = (points - c2w_f[:3, 3]) @ c2w_f[:3, :3]
    uv_f = cam_pts[:, :2] / cam_pts[:, 2:] * np.diag(K_f)[:2] + K_f[:2, 2]
    np.testing.assert_allclose(uv_f, cam.project(points)[0], atol=1e-10)
    back = g.Camera.from_reference_flipped(K_f, c2w_f, cam.width, cam.height)
    np.testing.assert_allclose(back.c2w, cam.c2w, atol=1e-15)


def test_relative_c2w_is_relative_to_the_reference_camera(rng):
    a = g.pose_to_matrix(rng.normal(size=3), Rotation.random(random_state=5).as_matrix())
    b = g.pose_to_matrix(rng.normal(size=3), Rotation.random(random_state=6).as_matrix())
    np.testing.assert_allclose(g.relative_c2w(a, a), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(a @ g.relative_c2w(b, a), b, atol=1e-12)
    batch = g.relative_c2w(np.stack([a, b]), a)
    np.testing.assert_allclose(batch[1], g.relative_c2w(b, a), atol=1e-15)


def _plucker_by_hand(K, c2w, i, j):
    u, v = j + 0.5, i + 0.5
    d_cam = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    d = c2w[:3, :3] @ d_cam
    d = d / (np.sqrt((d**2).sum()) + 1e-8)
    o = c2w[:3, 3]
    m = np.array([o[1] * d[2] - o[2] * d[1], o[2] * d[0] - o[0] * d[2], o[0] * d[1] - o[1] * d[0]])
    return np.concatenate([d, m / 3.0])


def test_plucker_rays_follow_spec_3_3(rng):
    cam = _camera(rng, width=48, height=40)
    field = g.plucker_rays(cam.K, cam.c2w, 40, 48, dtype=np.float64)
    assert field.shape == (40, 48, 6)
    for i, j in [(0, 0), (39, 47), (17, 5), (3, 30)]:
        np.testing.assert_allclose(field[i, j], _plucker_by_hand(cam.K, cam.c2w, i, j), atol=1e-12)
    assert g.plucker_rays(cam.K, cam.c2w, 40, 48).dtype == np.float32


def test_plucker_rays_are_invariant_to_the_flipped_convention(rng):
    cam = _camera(rng, width=32, height=32)
    K_f, c2w_f = cam.to_reference_flipped()
    plain = g.plucker_rays(cam.K, cam.c2w, 32, 32, dtype=np.float64)
    flipped = g.plucker_rays(K_f, c2w_f[:3], 32, 32, dtype=np.float64)
    np.testing.assert_allclose(flipped, plain, atol=1e-12)


def test_center_crop_resize_intrinsics_crops_the_wider_side():
    K = g.intrinsics_matrix(600.0, 600.0, 320.0, 240.0)
    out = g.center_crop_resize_intrinsics(K, (480, 640), (512, 512))
    s = 512 / 480
    np.testing.assert_allclose(out, g.intrinsics_matrix(600 * s, 600 * s, (320 - 80) * s, 240 * s))
    tall = g.center_crop_resize_intrinsics(K, (640, 480), (256, 256))
    s = 256 / 480
    np.testing.assert_allclose(tall, g.intrinsics_matrix(600 * s, 600 * s, 320 * s, (240 - 80) * s))


def test_resized_camera_keeps_points_at_the_cropped_pixel(rng):
    cam = g.Camera(
        g.intrinsics_matrix(600.0, 610.0, 330.0, 235.0),
        g.look_at([1, -1, 1], [0.4, 0, 0.1]),
        640,
        480,
    )
    small = cam.resized(256, 256)
    point = np.array([0.42, 0.03, 0.12])
    uv, _ = cam.project(point)
    uv_small, _ = small.project(point)
    s = 256 / 480
    np.testing.assert_allclose(uv_small, [(uv[0] - 80) * s, uv[1] * s], atol=1e-9)


def test_scale_intrinsics_reproduces_the_fixture_K_64():
    data = np.load(FIXTURE)
    np.testing.assert_allclose(
        g.scale_intrinsics(data["K_512"], (512, 512), (64, 64)), data["K_64"], atol=1e-12
    )
    cam = g.Camera(data["K_512"][1], data["c2w"][1], 512, 512).scaled(64, 64)
    np.testing.assert_allclose(cam.K, data["K_64"][1], atol=1e-12)


def test_stack_cameras_requires_one_image_size(rng):
    a, b = _camera(rng), _camera(rng, width=64, height=64)
    K, c2w = g.stack_cameras([a, a])
    assert K.shape == (2, 3, 3) and c2w.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="different image sizes"):
        g.stack_cameras([a, b])


def test_camera_dict_round_trip(rng):
    cam = _camera(rng)
    back = g.Camera.from_dict(cam.to_dict())
    np.testing.assert_array_equal(back.K, cam.K)
    np.testing.assert_array_equal(back.c2w, cam.c2w)
    with pytest.raises(ValueError, match="lacks"):
        g.Camera.from_dict({"K": cam.K.tolist()})


def test_cropped_camera_projects_points_to_the_same_pixels_shifted_by_the_crop():
    from aimg.geometry import Camera, intrinsics_matrix, look_at

    camera = Camera(
        intrinsics_matrix(100.0, 110.0, 63.5, 47.5), look_at([1, 0, 1], [0, 0, 0]), 128, 96
    )
    crop = camera.cropped(16, 8, 96, 80)
    point = np.array([0.05, -0.02, 0.03])
    uv, _ = camera.project(point)
    uv_crop, _ = crop.project(point)
    np.testing.assert_allclose(uv_crop, uv - [16, 8])
    assert (crop.width, crop.height) == (96, 80)

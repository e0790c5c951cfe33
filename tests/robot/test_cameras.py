"""Simulated cameras: exact Camera <-> PyBullet matrices, checked against rendered pixels."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from aimg.geometry import Camera
from aimg.robot.sim.cameras import (
    CameraSpec,
    c2w_from_gl_view,
    default_camera_specs,
    gl_projection_matrix,
    gl_view_matrix,
    intrinsics_from_gl,
)
from aimg.robot.sim.verify import mask_centroid


def _off_centre(camera: Camera, du: float, dv: float) -> Camera:
    K = camera.K.copy()
    K[0, 2] += du
    K[1, 2] += dv
    return Camera(K, camera.c2w, camera.width, camera.height)


def test_projection_matrix_round_trips_intrinsics_exactly():
    camera = _off_centre(default_camera_specs(1)[0].camera(96, 160), 3.25, -2.5)
    K = intrinsics_from_gl(gl_projection_matrix(camera, 0.05, 4.0), 160, 96)
    np.testing.assert_allclose(K, camera.K, atol=1e-9)


def test_view_matrix_round_trips_extrinsics_exactly():
    camera = default_camera_specs(3)[2].camera(128, 128)
    np.testing.assert_allclose(c2w_from_gl_view(gl_view_matrix(camera)), camera.c2w, atol=1e-12)


def test_view_matrix_matches_pybullet_look_at():
    spec = default_camera_specs(1)[0]
    ours = np.array(gl_view_matrix(spec.camera(128, 128)))
    theirs = np.array(p.computeViewMatrix(spec.eye, spec.target, spec.up))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_pybullet_fov_projection_gives_spec_focal_length_and_tiny_renderer_centre():
    spec = CameraSpec("probe", eye=(1.0, 0.0, 0.5), target=(0.0, 0.0, 0.0), fov_y_deg=50.0)
    K = intrinsics_from_gl(p.computeProjectionMatrixFOV(50.0, 1.0, 0.05, 4.0), 128, 128)
    expected = spec.camera(128, 128).K
    assert K[0, 0] == pytest.approx(expected[0, 0], rel=1e-6)
    assert K[1, 1] == pytest.approx(expected[1, 1], rel=1e-6)
    # A symmetric OpenGL frustum, sampled as ER_TINY_RENDERER samples, is centred at (W/2, H/2 - 1).
    assert (K[0, 2], K[1, 2]) == pytest.approx((64.0, 63.0), abs=1e-5)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (120, 200)])
def test_rendered_sphere_lands_where_camera_projects_its_centre(fresh_world, height, width):
    """A sphere rendered alone: its mask centroid is its projected centre (pixel index = coord)."""
    marker = fresh_world.add_marker(np.zeros(3), radius=0.03)
    client = fresh_world.client
    for body in (fresh_world.robot, fresh_world.table):
        for shape in client.getVisualShapeData(body):
            client.changeVisualShape(body, shape[1], rgbaColor=[1, 1, 1, 0])
    errors = []
    for spec in default_camera_specs(4):
        camera = _off_centre(spec.camera(height, width), 5.5, -3.25)
        for point in ([0.35, 0.1, 0.05], [0.5, -0.2, 0.2], [0.25, 0.15, 0.3]):
            fresh_world.move_marker(marker, np.array(point))
            _, seg = fresh_world.render(camera, segmentation=True)
            centroid, count = mask_centroid(seg == marker)
            assert count > 25
            projected, _ = camera.project(np.array(point))
            errors.append(centroid - projected)
    errors = np.array(errors)
    # Rasterisation quantises a ~30-pixel disc's centroid by ~0.1 px; a half-pixel convention
    # error would shift every sample by 0.5 px in one direction.
    assert np.abs(errors).max() < 0.35
    assert np.abs(errors.mean(axis=0)).max() < 0.1

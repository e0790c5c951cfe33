"""Static simulated cameras: exact `Camera` calibration <-> PyBullet's OpenGL matrices.

The OpenGL camera looks along -z with y up; OpenCV looks along +z with y down. Pixels: aimg's
pixel (u, v) = (column, row) index is the coordinate of the pixel's centre. Where a renderer
samples each pixel differs: hardware OpenGL samples pixel centres at window coordinate
(i + 0.5, j + 0.5), but PyBullet's CPU `ER_TINY_RENDERER` samples column i at x = i and, after
flipping rows to top-down order, row j at y = j + 1 from the top (measured with segmentation
masks, see tests/robot/test_cameras.py). `TINY_RENDERER_SAMPLE_OFFSET` = (0, 1) is that shift;
with it, the projection matrix makes the rendered image obey `Camera.project` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aimg.geometry import Camera, intrinsics_matrix, invert_pose, look_at, rotvec_to_matrix

_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

#: Window coordinates (x from the left, y from the top) at which ER_TINY_RENDERER samples
#: pixel (0, 0); hardware OpenGL would be (0.5, 0.5).
TINY_RENDERER_SAMPLE_OFFSET = (0.0, 1.0)


@dataclass(frozen=True)
class CameraSpec:
    """Where a simulated camera sits: eye and target in the base frame (m), vertical FOV (deg)."""

    name: str
    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_y_deg: float = 50.0
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def camera(self, height: int, width: int) -> Camera:
        """The exact pinhole camera of this spec at `height` x `width` (square pixels)."""
        fy = (height / 2.0) / math.tan(math.radians(self.fov_y_deg) / 2.0)
        K = intrinsics_matrix(fy, fy, width / 2.0 - 0.5, height / 2.0 - 0.5)
        return Camera(K, look_at(self.eye, self.target, self.up), width, height)


DEFAULT_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec("left", eye=(0.95, 0.62, 0.62), target=(0.36, 0.0, 0.12)),
    CameraSpec("right", eye=(0.95, -0.62, 0.62), target=(0.36, 0.0, 0.12)),
    CameraSpec("front", eye=(1.25, 0.0, 0.45), target=(0.36, 0.0, 0.12)),
    CameraSpec("top", eye=(0.42, 0.0, 1.15), target=(0.40, 0.0, 0.0), up=(1.0, 0.0, 0.0)),
)


def default_camera_specs(num_views: int) -> tuple[CameraSpec, ...]:
    """The first `num_views` (1-4) of the standard placements: left, right, front, top."""
    if not 1 <= num_views <= len(DEFAULT_CAMERAS):
        raise ValueError(f"the sim cell has 1 to {len(DEFAULT_CAMERAS)} views, got {num_views}")
    return DEFAULT_CAMERAS[:num_views]


def gl_view_matrix(camera: Camera) -> list[float]:
    """PyBullet view matrix (16 floats, column-major) of an OpenCV camera."""
    w2c_gl = _CV_TO_GL @ invert_pose(camera.c2w)
    return w2c_gl.T.reshape(-1).tolist()


def gl_projection_matrix(
    camera: Camera,
    near: float,
    far: float,
    sample_offset: tuple[float, float] = TINY_RENDERER_SAMPLE_OFFSET,
) -> list[float]:
    """PyBullet projection matrix (16 floats, column-major) reproducing `camera.K` exactly.

    `sample_offset`: window coordinates where the renderer samples pixel (0, 0) (see module doc).
    """
    K, w, h = camera.K, camera.width, camera.height
    ox, oy = sample_offset
    if abs(K[0, 1]) > 1e-12:
        raise ValueError("OpenGL projection cannot express a skewed K (K[0, 1] != 0)")
    proj = np.zeros((4, 4))
    proj[0, 0] = 2.0 * K[0, 0] / w
    proj[0, 2] = 1.0 - 2.0 * (K[0, 2] + ox) / w
    proj[1, 1] = 2.0 * K[1, 1] / h
    proj[1, 2] = 2.0 * (K[1, 2] + oy) / h - 1.0
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -2.0 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj.T.reshape(-1).tolist()


def intrinsics_from_gl(
    projection: Sequence[float],
    width: int,
    height: int,
    sample_offset: tuple[float, float] = TINY_RENDERER_SAMPLE_OFFSET,
) -> np.ndarray:
    """K [3, 3] in aimg's pixel convention from a PyBullet projection matrix (column-major).

    The inverse of `gl_projection_matrix`: e.g. `computeProjectionMatrixFOV` rendered by
    ER_TINY_RENDERER has cx = W / 2 and cy = H / 2 - 1, not the centre (W - 1) / 2.
    """
    proj = np.asarray(projection, dtype=np.float64).reshape(4, 4).T
    ox, oy = sample_offset
    fx = proj[0, 0] * width / 2.0
    fy = proj[1, 1] * height / 2.0
    cx = (1.0 - proj[0, 2]) * width / 2.0 - ox
    cy = (1.0 + proj[1, 2]) * height / 2.0 - oy
    return intrinsics_matrix(fx, fy, cx, cy)


def c2w_from_gl_view(view: Sequence[float]) -> np.ndarray:
    """OpenCV camera-to-base [4, 4] from a PyBullet view matrix (column-major)."""
    w2c_gl = np.asarray(view, dtype=np.float64).reshape(4, 4).T
    return invert_pose(_CV_TO_GL @ w2c_gl)


def knocked_camera(camera: Camera, knock: tuple[Sequence[float], Sequence[float]] | None) -> Camera:
    """`camera` bumped by `knock` = (translation [3] in the base frame (m), rotation vector [3]
    in the camera's frame (rad), about its centre); None: unchanged."""
    if knock is None:
        return camera
    translation, rotation = (np.asarray(v, dtype=np.float64) for v in knock)
    c2w = camera.c2w.copy()
    c2w[:3, :3] = c2w[:3, :3] @ rotvec_to_matrix(rotation)
    c2w[:3, 3] += translation
    return Camera(camera.K, c2w, camera.width, camera.height)


def random_knock(
    rng: np.random.Generator, move_m: float, turn_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """A knock (see `knocked_camera`) of exactly `move_m` metres and `turn_deg` degrees, in
    random directions: a rig moved "by a few centimetres and degrees" for robustness studies."""
    direction = rng.normal(size=3)
    axis = rng.normal(size=3)
    translation = move_m * direction / np.linalg.norm(direction)
    rotation = math.radians(turn_deg) * axis / np.linalg.norm(axis)
    return translation, rotation


def moved_rig(
    num_views: int, size: int, move_m: float, turn_deg: float, seed: int
) -> dict[str, Camera]:
    """The standard placements at `size` x `size`, each camera knocked by `random_knock`."""
    rng = np.random.default_rng(seed)
    return {
        spec.name: knocked_camera(spec.camera(size, size), random_knock(rng, move_m, turn_deg))
        for spec in default_camera_specs(num_views)
    }

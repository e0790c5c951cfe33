"""Action-image rendering: 7-DoF actions -> per-view images of three Gaussian blobs.

The reference encoder is described in docs/reference.md §1.

Reference-exact in float32: R = tool position, G = p + 0.1·R·e_x, B = p - 0.1·R·e_z; each an
unnormalised Gaussian (peak 1) with sigma = 0.05·min(H, W) pixels, centred at pixel-index
coordinates (u, v) = (column, row); the blue channel keeps the up-Gaussian only where it exceeds
0.25 and elsewhere holds the gripper level 0.25·[g > 0.5].

Two deliberate differences from the reference code:
- Precision: we compute the projection in float64 and the Gaussians in float64 before storing
  float32, so images agree with the reference's float32 path to ~1e-6. The reference casts
  actions and cameras to bf16 in training and inference, which moves blob centres by up to
  ~3 px at 512x512 (docs/reference.md §1.5); we do not replicate that quantisation.
- Points behind a camera (z <= 0) are not drawn. The reference divides by the negative depth and
  draws a mirrored blob, a picture of a point that the camera cannot see; we leave that channel
  blank (blue: background level only), which a decoder reads as "not visible in this view".
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from aimg.codec.validate import check_cameras_fit
from aimg.geometry import Camera, euler_xyz_to_matrix

AXIS_LENGTH = 0.1
"""Distance (m) from the tool position to the G and B points (the reference's `length`)."""

SIGMA_FRACTION = 0.05
"""Blob sigma as a fraction of min(H, W) (docs/reference.md §1.4). Other values are an aimg
extension for small models (see `ModelConfig.blob_sigma`); decode with the fraction the images
were drawn at."""

BLUE_FLOOR = 0.25
"""Blue keeps the up-Gaussian only above this level; below it holds 0.25·[open]."""


def blob_sigma(height: int, width: int, fraction: float = SIGMA_FRACTION) -> float:
    """Gaussian sigma in pixels for an image of this size (25.6 px at 512x512)."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"blob sigma fraction must be in (0, 0.5], got {fraction}")
    return fraction * min(height, width)


def action_points(actions: np.ndarray) -> np.ndarray:
    """Actions [T, 7] -> the three drawn points [T, 3, 3]: position, +x point, -z point (m)."""
    actions = np.asarray(actions, dtype=np.float64)
    rot = euler_xyz_to_matrix(actions[:, 3:6])
    pos = actions[:, :3]
    normal = pos + AXIS_LENGTH * rot[:, :, 0]
    up = pos - AXIS_LENGTH * rot[:, :, 2]
    return np.stack([pos, normal, up], axis=1)


def project_actions(actions: np.ndarray, cameras: Sequence[Camera]) -> np.ndarray:
    """Actions [T, 7] -> reference `action_5d` [T, V, 7] float64 (docs/reference.md §1.3).

    Columns: [pos_u, pos_v, normal_u, normal_v, up_u, up_v, openness] in pixels of each camera's
    image. Unlike the reference, a point behind a camera gets NaN coordinates (not drawn).
    """
    actions = _check_actions(actions)
    points = action_points(actions)
    out = np.empty((actions.shape[0], len(cameras), 7))
    for v, cam in enumerate(cameras):
        uv, _ = cam.project(points)
        out[:, v, :6] = uv.reshape(actions.shape[0], 6)
        out[:, v, 6] = actions[:, 6]
    return out


def render(
    actions: np.ndarray,
    cameras: Sequence[Camera],
    height: int,
    width: int,
    sigma_fraction: float = SIGMA_FRACTION,
) -> np.ndarray:
    """Render actions [T, 7] (m, rad, g in [0, 1]) into float32 images [T, V, H, W, 3] in [0, 1].

    Cameras must already describe `height` x `width` images (use `Camera.scaled` or
    `Camera.resized` first), because K is in pixels of the rendered image. Equal to the
    reference's float32 path; unlike the reference, points behind a camera are not drawn
    (it draws them mirrored) and nothing is rounded to bf16 (see the module docstring).
    """
    cameras = list(cameras)
    if not cameras:
        raise ValueError("render needs at least one camera")
    check_cameras_fit(cameras, height, width, "the requested images")
    return render_pixels(project_actions(actions, cameras), height, width, sigma_fraction)


def render_pixels(
    action_5d: np.ndarray, height: int, width: int, sigma_fraction: float = SIGMA_FRACTION
) -> np.ndarray:
    """The reference rasteriser: pixel coordinates [T, V, 7] -> float32 images [T, V, H, W, 3].

    `action_5d` columns are [pos_u, pos_v, normal_u, normal_v, up_u, up_v, openness]; a NaN
    coordinate pair draws nothing in that channel (a point behind the camera).
    """
    action_5d = np.asarray(action_5d, dtype=np.float64)
    if action_5d.ndim != 3 or action_5d.shape[-1] != 7:
        raise ValueError(f"action_5d must be [T, V, 7], got shape {action_5d.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if np.isnan(action_5d[..., 6]).any():
        raise ValueError("action_5d openness (column 6) contains NaN")
    out = np.empty((*action_5d.shape[:2], height, width, 3), dtype=np.float32)
    _rasterise(
        np.ascontiguousarray(action_5d.reshape(-1, 7)),
        out.reshape(-1, height, width, 3),
        blob_sigma(height, width, sigma_fraction),
    )
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """The reference pipeline's float -> uint8 conversion (VAE left out), truncating.

    images: [..., 3] float in [0, 1] -> x·2-1 -> ((x+1)·127.5).clip(0, 255).astype(uint8), in
    float32 like the reference; the open-gripper blue background becomes 63.
    """
    x = np.asarray(images, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)
    return ((x + np.float32(1.0)) * np.float32(127.5)).clip(0, 255).astype(np.uint8)


def _check_actions(actions: np.ndarray) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise ValueError(f"actions must be [T, 7] (x, y, z, rx, ry, rz, g), got {actions.shape}")
    if not np.isfinite(actions).all():
        raise ValueError("actions contain NaN or inf")
    return actions


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _rasterise(a5: np.ndarray, out: np.ndarray, sigma: float) -> None:
    """Fill out [N, H, W, 3] from a5 [N, 7]; separable float64 Gaussians, stored float32."""
    n, height, width = out.shape[0], out.shape[1], out.shape[2]
    inv = 1.0 / (2.0 * sigma * sigma)
    for k in numba.prange(n):
        gx = np.zeros((3, width))
        gy = np.zeros((3, height))
        for c in range(3):
            u, v = a5[k, 2 * c], a5[k, 2 * c + 1]
            if np.isnan(u) or np.isnan(v):
                continue
            for j in range(width):
                gx[c, j] = np.exp(-((j - u) ** 2) * inv)
            for i in range(height):
                gy[c, i] = np.exp(-((i - v) ** 2) * inv)
        floor = BLUE_FLOOR if a5[k, 6] > 0.5 else 0.0
        for i in range(height):
            for j in range(width):
                out[k, i, j, 0] = gx[0, j] * gy[0, i]
                out[k, i, j, 1] = gx[1, j] * gy[1, i]
                b = gx[2, j] * gy[2, i]
                out[k, i, j, 2] = b if b > BLUE_FLOOR else floor

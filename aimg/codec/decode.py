"""Our action-image decoder: multi-view, sub-pixel, all three blobs, gripper from the background.

Per frame and view, each channel's blob is found on a strided coarse grid and fitted at full
resolution by weighted least squares on log intensities (a Gaussian with free width, or with
the measured width when the border cuts the blob). Blue is fitted only above the 0.25
truncation step, so it works for open and closed grippers alike; the gripper itself is read
from the blue background level (0.25 open, 0 closed). The three points are then explained by
one rigid tool pose fitted to every observation in every view (Kabsch start, Gauss-Newton on
the reprojection error), so roll is recovered, a point missing from one view costs nothing, and
the rotation is orthonormal by construction. Confidence falls with the reprojection error (views
that disagree), with points seen by a single view, and with an ambiguous background level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aimg.codec import kernels
from aimg.codec.render import AXIS_LENGTH, BLUE_FLOOR, SIGMA_FRACTION, blob_sigma
from aimg.codec.validate import check_images_and_cameras
from aimg.geometry import Camera, matrix_to_euler_xyz

TOOL_POINTS = np.array([[0.0, 0.0, 0.0], [AXIS_LENGTH, 0.0, 0.0], [0.0, 0.0, -AXIS_LENGTH]])
"""The drawn points in the tool frame: position, +x point (G), -z point (B); metres."""


@dataclass(frozen=True)
class DecodedActions:
    """Decoder output for T frames.

    actions: [T, 7] float64 (x, y, z m; extrinsic-xyz Euler rad; gripper 1 open / 0 closed),
    NaN pose where a frame could not be solved. points: [T, 3, 3] base-frame points (position,
    +x point, -z point) of the fitted rigid pose. confidence: [T] in [0, 1].
    reprojection_error: [T] weighted RMS pixel residual. gripper_level: [T] blue background
    level (about 0.25 open, 0 closed). multi_view: [T] bool, every point seen by at least two
    views (callers that weigh agreement their own way, e.g. in metres, need it apart).
    """

    actions: np.ndarray
    points: np.ndarray
    confidence: np.ndarray
    reprojection_error: np.ndarray
    gripper_level: np.ndarray
    multi_view: np.ndarray | None = None


def decode(
    images: np.ndarray,
    cameras: Sequence[Camera],
    *,
    detect_level: float = 0.2,
    gripper_threshold: float = 0.125,
    iterations: int = 20,
    sigma_fraction: float = SIGMA_FRACTION,
) -> DecodedActions:
    """Decode action images [T, V, H, W, 3] (uint8, or float in [0, 1]) seen by V cameras.

    Cameras: one static `Camera` per view, at the images' size. Frames that cannot be solved
    (a point seen by no view, or no point seen by two) get NaN poses and confidence 0.

    detect_level: a blob counts as present in a view when its smoothed peak rises this far
    above the background (blue: above the 0.25 step). gripper_threshold: blue background level
    above which the gripper is open (half of the rendered 0.25). sigma_fraction: the blob
    width the images were drawn at (`render`'s; the reference's 0.05 unless a model says so).
    """
    images, cameras = check_images_and_cameras(images, cameras)
    num_frames = images.shape[0]
    height, width = images.shape[2:4]
    sigma = blob_sigma(height, width, sigma_fraction)
    blobs, background, offset = _localise(images, detect_level, sigma)
    uv = np.ascontiguousarray(blobs[..., :2])
    weight = np.where(blobs[..., 4] == 1, 1.0, np.where(blobs[..., 4] == 2, 0.25, 0.0))
    weight = weight * np.clip(blobs[..., 3], 0.0, 1.0)
    K = np.stack([cam.K for cam in cameras])
    c2w = np.stack([cam.c2w for cam in cameras])
    pose = np.empty((num_frames, 4, 4))
    stats = np.empty((num_frames, 3))
    kernels.fit_poses(
        uv, np.ascontiguousarray(weight), K, c2w, TOOL_POINTS, iterations, pose, stats
    )

    level = background[..., 2].mean(axis=1) - offset
    gripper = (level > gripper_threshold).astype(np.float64)
    solved = np.isfinite(pose[:, 0, 0])
    euler = np.full((num_frames, 3), np.nan)
    if solved.any():
        euler[solved] = matrix_to_euler_xyz(pose[solved, :3, :3])
    actions = np.concatenate([pose[:, :3, 3], euler, gripper[:, None]], axis=1)
    points = pose[:, None, :3, 3] + np.einsum("tij,kj->tki", pose[:, :3, :3], TOOL_POINTS)
    confidence = _pose_confidence(stats, sigma) * _gripper_margin(level, gripper_threshold)
    multi_view = stats[:, 2] > 0
    return DecodedActions(actions, points, confidence, stats[:, 0], level, multi_view)


def locate_blobs(
    images: np.ndarray,
    *,
    detect_level: float = 0.2,
    sigma_fraction: float = SIGMA_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each view draws each blob, before any 3D fit: pixel centres [T, V, 3, 2] (x, y
    per channel: position, +x point, -z point; NaN where absent) and weights [T, V, 3] (1 fitted
    freely, 0.25 cut by the border, 0 absent). For diagnosis: how well a generated image places
    a point in one view, apart from how two views' placements combine."""
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"action images must be [T, V, H, W, 3], got {list(images.shape)}")
    dtype = np.uint8 if images.dtype == np.uint8 else np.float32
    images = np.ascontiguousarray(images, dtype=dtype)
    sigma = blob_sigma(images.shape[2], images.shape[3], sigma_fraction)
    blobs, _, _ = _localise(images, detect_level, sigma)
    weight = np.where(blobs[..., 4] == 1, 1.0, np.where(blobs[..., 4] == 2, 0.25, 0.0))
    uv = np.where(weight[..., None] > 0, blobs[..., :2], np.nan)
    return uv, weight * np.clip(blobs[..., 3], 0.0, 1.0)


def _localise(
    images: np.ndarray, detect_level: float, sigma: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Blobs [T, V, 3, 5] (x, y, width, amplitude, state), background levels [T, V, 3] and the
    uint8 offset, found on a coarse grid and fitted at full resolution."""
    num_frames, num_views, height, width = images.shape[:4]
    flat = images.reshape(num_frames * num_views, height, width, 3)
    if images.dtype == np.uint8:
        scale, offset = 1.0 / 255.0, 0.5 / 255.0  # undo the pipeline's truncation on average
    else:
        scale, offset = 1.0, 0.0
    stride = max(1, int(sigma / 3))
    fit_stride = max(1, int(sigma / 6))
    radius = int(np.ceil(2.2 * sigma))
    blue_floor = BLUE_FLOOR + 0.15
    detect = np.array([detect_level, detect_level, blue_floor + detect_level / 2])
    fit_floor = np.array([0.15, 0.15, blue_floor])
    moments = np.empty((flat.shape[0], 3, kernels.NUM_MOMENTS))
    info = np.empty((flat.shape[0], 3, kernels.NUM_INFO))
    background = np.empty((flat.shape[0], 3))
    kernels.localise(
        flat,
        scale,
        offset,
        sigma,
        stride,
        fit_stride,
        radius,
        detect,
        fit_floor,
        moments,
        info,
        background,
    )
    blobs = np.empty((flat.shape[0], 3, 5))
    kernels.solve_blobs(moments, info, sigma, sigma, blobs)
    free = blobs[..., 4] == 1
    if free.any():  # blur (e.g. from a VAE) widens every blob alike: refit cut ones at that width
        measured = float(np.median(blobs[..., 2][free]))
        if abs(measured - sigma) > 0.01 * sigma:
            kernels.solve_blobs(moments, info, sigma, measured, blobs)
    return (
        blobs.reshape(num_frames, num_views, 3, 5),
        background.reshape(num_frames, num_views, 3),
        offset,
    )


def _pose_confidence(stats: np.ndarray, sigma: float) -> np.ndarray:
    """[T] in [0, 1]: reprojection agreement x multi-view coverage."""
    tolerance = max(0.25, 0.03 * sigma)
    rms = np.nan_to_num(stats[:, 0], nan=np.inf)
    agreement = np.exp(-0.5 * (rms / tolerance) ** 2)
    coverage = np.where(stats[:, 2] > 0, 1.0, 0.7)
    return agreement * coverage


def _gripper_margin(level: np.ndarray, gripper_threshold: float) -> np.ndarray:
    """[T] in [0, 1]: how far the blue background level is from the open/closed threshold."""
    return np.clip(np.abs(level - gripper_threshold) / (0.5 * gripper_threshold), 0.0, 1.0)

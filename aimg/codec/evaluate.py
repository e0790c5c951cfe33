"""Round-trip accuracy of the codec on random camera rigs and random actions.

Used by the tests and quoted in docs/benchmarks.md, so the numbers are reproducible from a seed:
render random actions into random 2-4 view rigs around the workspace, optionally degrade the
images (Gaussian blur and noise, a stand-in for VAE artefacts), convert to uint8 like the
pipeline, decode, and compare with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from aimg.codec.decode import decode
from aimg.codec.render import render, to_uint8
from aimg.geometry import (
    Camera,
    euler_xyz_to_matrix,
    intrinsics_matrix,
    look_at,
    rotation_angle_between,
)

WORKSPACE_CENTRE = np.array([0.4, 0.0, 0.15])
"""Centre (m, base frame) the random cameras look at."""

WORKSPACE_LOW = np.array([0.25, -0.2, 0.02])
WORKSPACE_HIGH = np.array([0.55, 0.2, 0.3])


def random_rig(rng: np.random.Generator, num_views: int, size: int) -> list[Camera]:
    """num_views cameras 0.7-1.3 m from the workspace, looking at it from above and around.

    Focal length 0.9-1.2 x image size, principal point within 3 % of the image centre.
    """
    cameras = []
    for _ in range(num_views):
        azimuth = rng.uniform(-np.pi, np.pi)
        elevation = rng.uniform(np.radians(20), np.radians(70))
        distance = rng.uniform(0.7, 1.3)
        target = WORKSPACE_CENTRE + rng.uniform(-0.05, 0.05, 3)
        direction = np.array(
            [
                np.cos(elevation) * np.cos(azimuth),
                np.cos(elevation) * np.sin(azimuth),
                np.sin(elevation),
            ]
        )
        c2w = look_at(target + distance * direction, target)
        focal = rng.uniform(0.9, 1.2) * size
        centre = (size - 1) / 2 + rng.uniform(-0.03, 0.03, 2) * size
        K = intrinsics_matrix(focal, focal * rng.uniform(0.98, 1.02), centre[0], centre[1])
        cameras.append(Camera(K, c2w, size, size))
    return cameras


def random_actions(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Actions [T, 7] in the workspace box; tool roughly pointing down, any yaw, random gripper."""
    position = rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH, (num_frames, 3))
    euler = np.stack(
        [
            np.pi + rng.uniform(-0.6, 0.6, num_frames),
            rng.uniform(-0.6, 0.6, num_frames),
            rng.uniform(-np.pi, np.pi, num_frames),
        ],
        axis=1,
    )
    euler[:, 0] = (euler[:, 0] + np.pi) % (2 * np.pi) - np.pi
    gripper = (rng.uniform(size=num_frames) > 0.5).astype(np.float64)
    return np.concatenate([position, euler, gripper[:, None]], axis=1)


def degrade(
    images: np.ndarray, rng: np.random.Generator, blur_sigma: float, noise_std: float
) -> np.ndarray:
    """Blur (sigma px, per channel) and add Gaussian noise to float images [..., H, W, 3]."""
    out = np.asarray(images, dtype=np.float32)
    if blur_sigma > 0:
        sigmas = (0,) * (out.ndim - 3) + (blur_sigma, blur_sigma, 0)
        out = gaussian_filter(out, sigma=sigmas, mode="nearest", truncate=3.0)
    if noise_std > 0:
        out = out + np.float32(noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class RoundTripErrors:
    """Per-frame errors: position_mm [N], rotation_deg [N] (geodesic, so roll included),
    roll_deg [N] (about the tool x axis), gripper_ok [N] bool, confidence [N]; failed [N] marks
    frames the decoder could not solve (their errors are inf)."""

    position_mm: np.ndarray
    rotation_deg: np.ndarray
    roll_deg: np.ndarray
    gripper_ok: np.ndarray
    confidence: np.ndarray
    failed: np.ndarray

    def summary(self) -> dict:
        """Median and 99th percentile of each error, gripper accuracy, failure count."""
        return {
            "frames": int(self.position_mm.size),
            "position_mm_median": float(np.median(self.position_mm)),
            "position_mm_p99": float(np.percentile(self.position_mm, 99)),
            "rotation_deg_median": float(np.median(self.rotation_deg)),
            "rotation_deg_p99": float(np.percentile(self.rotation_deg, 99)),
            "roll_deg_p99": float(np.percentile(self.roll_deg, 99)),
            "gripper_accuracy": float(self.gripper_ok.mean()),
            "failed_frames": int(self.failed.sum()),
            "confidence_median": float(np.median(self.confidence)),
        }


def round_trip_errors(
    num_frames: int,
    size: int,
    seed: int = 0,
    frames_per_rig: int = 10,
    views: tuple[int, int] = (2, 4),
    blur_sigma: float = 0.0,
    noise_std: float = 0.0,
) -> RoundTripErrors:
    """Render, (degrade,) convert to uint8 and decode `num_frames` random frames at size x size.

    A new random rig of views[0]..views[1] cameras is drawn every `frames_per_rig` frames.
    """
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, ...]] = []
    remaining = num_frames
    while remaining > 0:
        count = min(frames_per_rig, remaining)
        remaining -= count
        cameras = random_rig(rng, int(rng.integers(views[0], views[1] + 1)), size)
        actions = random_actions(rng, count)
        images = render(actions, cameras, size, size)
        if blur_sigma > 0 or noise_std > 0:
            images = degrade(images, rng, blur_sigma, noise_std)
        decoded = decode(to_uint8(images), cameras)
        parts.append(_frame_errors(actions, decoded.actions) + (decoded.confidence,))
    position, rotation, roll, gripper_ok, failed, confidence = (
        np.concatenate(p) for p in zip(*parts, strict=True)
    )
    return RoundTripErrors(position, rotation, roll, gripper_ok, confidence, failed)


def _frame_errors(truth: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, ...]:
    failed = ~np.isfinite(decoded[:, :6]).all(axis=1)
    safe = np.where(failed[:, None], truth, decoded)
    position = np.linalg.norm(safe[:, :3] - truth[:, :3], axis=1) * 1e3
    rot_true = euler_xyz_to_matrix(truth[:, 3:6])
    rot_dec = euler_xyz_to_matrix(safe[:, 3:6])
    rotation = np.degrees(rotation_angle_between(rot_true, rot_dec))
    rel = np.swapaxes(rot_true, -1, -2) @ rot_dec
    roll = np.degrees(np.abs(np.arctan2(rel[:, 2, 1], rel[:, 2, 2])))
    position[failed] = np.inf
    rotation[failed] = np.inf
    roll[failed] = np.inf
    gripper_ok = decoded[:, 6] == truth[:, 6]
    return position, rotation, roll, gripper_ok, failed

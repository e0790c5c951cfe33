"""A NumPy replica of the reference decoder (spec §2.2-2.4), kept for comparisons only.

It reproduces the reference's behaviour including its known bugs (spec §2.5): roll is lost
(only the R and G blobs are used and a direction is returned, not a rotation), the gripper is
"any blue pixel > 128" (true whenever the up-blob is visible, open or closed), the centroid uses
index + 0.5 while sampling uses index coordinates, and the ray comes from view 0 only. Use
`aimg.codec.decode` for real decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aimg.codec.validate import check_images_and_cameras
from aimg.geometry import Camera


def decode_reference(
    images: np.ndarray,
    cameras: Sequence[Camera],
    near: float = 0.5,
    far: float = 1.0,
    num_samples: int = 512,
    apply_edge_smoothing: bool = False,
    edge_threshold: float = 0.01,
) -> np.ndarray:
    """Decode like `fuse_multiview_heatmaps_to_7d_point_torch` (inference.py settings by default).

    images: [T, V, H, W, 3] uint8 (0..255) or float in [0, 1]; the heat (channel / 255) is held
    in float32 as in the reference, ray and score arithmetic is float64. Returns [T, 7] float64
    = [x, y, z, dir_x, dir_y, dir_z, gripper]: dir is the unit tool +x axis and gripper follows
    the reference rule (1 if any blue value > 128). near/far: metres along the view-0 ray.
    """
    images, cameras = check_images_and_cameras(images, cameras)
    heat = images.astype(np.float32) / np.float32(255.0) if images.dtype == np.uint8 else images
    K = np.stack([cam.K for cam in cameras])
    c2w = np.stack([cam.c2w for cam in cameras])
    depths = np.linspace(near, far, num_samples)
    start = _fuse_channel(heat[..., 0], K, c2w, depths)
    end = _fuse_channel(heat[..., 1], K, c2w, depths)
    if apply_edge_smoothing:
        start = _edge_smooth(start, heat[..., 0], edge_threshold)
        end = _edge_smooth(end, heat[..., 1], edge_threshold)
    direction = end - start
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-8
    gripper = (heat[..., 2] * 255.0 > 128.0).any(axis=(1, 2, 3)).astype(np.float64)
    return np.concatenate([start, direction, gripper[:, None]], axis=-1)


def _fuse_channel(
    heat: np.ndarray, K: np.ndarray, c2w: np.ndarray, depths: np.ndarray
) -> np.ndarray:
    """heat [T, V, H, W] -> 3D points [T, 3]: the first best-scoring candidate on the ray."""
    candidates, score = reference_ray_scores(heat, K, c2w, depths)
    best = np.argmax(score, axis=1)
    return candidates[np.arange(len(best)), best]


def reference_ray_scores(
    heat: np.ndarray, K: np.ndarray, c2w: np.ndarray, depths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's candidates on the view-0 centroid ray and their scores (spec §2.2).

    heat: [T, V, H, W] in [0, 1]; K [V, 3, 3]; c2w [V, 4, 4]; depths [D] (m along the ray).
    Returns candidates [T, D, 3] and score [T, D] = product over views of the bilinearly sampled
    heat. On uint8 frames the score often has exact plateaus (several candidates reading the
    same saturated pixels); the reference's float32 rounding noise then decides which one wins,
    so a float64 replica can differ by one or two samples there.
    """
    num_frames, num_views, height, width = heat.shape
    h0 = heat[:, 0]
    p = h0 / (h0.sum(axis=(1, 2), keepdims=True) + 1e-8)
    cx_bar = (p.sum(axis=1) * (np.arange(width) + 0.5)).sum(axis=1)
    cy_bar = (p.sum(axis=2) * (np.arange(height) + 0.5)).sum(axis=1)
    d_cam = np.stack(
        [
            (cx_bar - K[0, 0, 2]) / K[0, 0, 0],
            (cy_bar - K[0, 1, 2]) / K[0, 1, 1],
            np.ones(num_frames),
        ],
        axis=-1,
    )
    direction = d_cam @ c2w[0, :3, :3].T
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    candidates = c2w[0, :3, 3] + depths[None, :, None] * direction[:, None, :]  # [T, D, 3]
    score = np.ones(candidates.shape[:2])
    frames = np.arange(num_frames)[:, None]
    for v in range(num_views):
        cam = (candidates - c2w[v, :3, 3]) @ c2w[v, :3, :3]
        z = cam[..., 2] + 1e-8
        u = np.clip(K[v, 0, 0] * cam[..., 0] / z + K[v, 0, 2], 0.0, width - 1)
        w = np.clip(K[v, 1, 1] * cam[..., 1] / z + K[v, 1, 2], 0.0, height - 1)
        score = score * _bilinear(heat[:, v], frames, u, w)
    return candidates, score


def _bilinear(img: np.ndarray, frames: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """grid_sample(bilinear, align_corners=True, zero padding) at in-range pixel coords."""
    height, width = img.shape[1:]
    x0 = np.floor(u).astype(np.int64)
    y0 = np.floor(v).astype(np.int64)
    fx, fy = u - x0, v - y0
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    top = img[frames, y0, x0] * (1 - fx) + img[frames, y0, x1] * fx
    bottom = img[frames, y1, x0] * (1 - fx) + img[frames, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _edge_smooth(points: np.ndarray, heat: np.ndarray, edge_threshold: float) -> np.ndarray:
    """Replace frames whose argmax pixel is within the border band in any view (spec §2.2.8)."""
    num_frames, num_views, height, width = heat.shape
    margin = int(height * edge_threshold)
    flat = heat.reshape(num_frames, num_views, -1).argmax(axis=-1)
    y, x = flat // width, flat % width
    on_edge = (y < margin) | (y >= height - margin) | (x < margin) | (x >= width - margin)
    valid = ~on_edge.any(axis=1)
    if valid.all() or not valid.any():
        return points
    out = points.copy()
    valid_idx = np.flatnonzero(valid)
    for t in np.flatnonzero(~valid):
        prev = valid_idx[valid_idx < t]
        nxt = valid_idx[valid_idx > t]
        if prev.size and nxt.size:
            a, b = prev[-1], nxt[0]
            alpha = (t - a) / (b - a)
            out[t] = (1 - alpha) * points[a] + alpha * points[b]
        else:
            out[t] = points[prev[-1] if prev.size else nxt[0]]
    return out

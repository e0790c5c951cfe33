"""A bit-exact replica of the reference decoder, kept for comparisons only.

It follows docs/reference.md §2.2-2.4 and reproduces the reference's behaviour including its
known bugs (docs/reference.md §2.5): roll is lost (only the R and G blobs are used and a
direction is returned, not a rotation), the gripper is "any blue pixel > 128" (true whenever
the up-blob is visible, open or closed), the centroid uses index + 0.5 while sampling uses
index coordinates, and the ray comes from view 0 only. Use `aimg.codec.decode` for real
decoding.

Why torch float32 and not NumPy: on uint8 frames the product score along the ray is exactly
flat over 2-4 samples wherever both views read saturated (255) pixels, so the winner is decided
by float32 rounding of the bilinear weights, i.e. by the last bit of every intermediate. A
float64 replica picks up to 2 samples (~4 mm at 512 samples over 1 m) away from the reference.
Matching the fixture's picks took the reference's exact arithmetic, found by checking the
candidate points bit for bit against `codec.npz`: the heat is `channel / 255` in its own
contiguous tensor, the whole-image sums are torch's float32 reductions (pairwise/vectorised, not
sequential), the rotations are einsums (an FMA chain on CPU, which plain float32 NumPy does not
do), camera coordinates are R^T (X - t) rather than R^T X - R^T t, u is fx * (x / z) + cx, and
sampling is torch's own `grid_sample`. Running the same ops in torch is the only faithful way
to reproduce those roundings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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

    images: [T, V, H, W, 3] uint8 (0..255) or float in [0, 1]; the heat (channel / 255) and all
    arithmetic are float32 on CPU, op for op as the reference does it, so ties on the score
    plateau break the same way. Returns [T, 7] float64 (float32 values) = [x, y, z, dir_x,
    dir_y, dir_z, gripper]: dir is the unit tool +x axis and gripper follows the reference rule
    (1 if any blue value > 128). near/far: metres along the view-0 ray.
    """
    images, cameras = check_images_and_cameras(images, cameras)
    K = torch.from_numpy(np.stack([cam.K for cam in cameras]).astype(np.float32))
    c2w = torch.from_numpy(np.stack([cam.c2w[:3, :] for cam in cameras]).astype(np.float32))
    frames = torch.from_numpy(images)
    with torch.inference_mode():
        start = _fuse_channel(_heat(frames, 0), K, c2w, near, far, num_samples)
        end = _fuse_channel(_heat(frames, 1), K, c2w, near, far, num_samples)
        if apply_edge_smoothing:
            start = _edge_smooth(start, images[..., 0], edge_threshold)
            end = _edge_smooth(end, images[..., 1], edge_threshold)
        direction = end - start
        direction = direction / (direction.norm(dim=-1, keepdim=True) + 1e-8)
    blue = images[..., 2] if images.dtype == np.uint8 else images[..., 2] * np.float32(255.0)
    gripper = (blue > 128).any(axis=(1, 2, 3)).astype(np.float64)
    return np.concatenate([start.numpy(), direction.numpy(), gripper[:, None]], axis=-1).astype(
        np.float64
    )


def _heat(frames: torch.Tensor, channel: int) -> torch.Tensor:
    """[T, V, H, W, 3] uint8 or float -> contiguous float32 heat [T, V, H, W] in [0, 1]."""
    if frames.dtype == torch.uint8:
        return frames[..., channel].contiguous().to(torch.float32).div_(255.0)
    return frames[..., channel].contiguous()


def _fuse_channel(
    heat: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, near: float, far: float, samples: int
) -> torch.Tensor:
    """heat [T, V, H, W] -> 3D points [T, 3] float32: the first best-scoring candidate."""
    candidates, score = reference_ray_scores(heat, K, c2w, near, far, samples)
    best = score.argmax(dim=1)
    return candidates[torch.arange(len(best)), best]


def reference_ray_scores(
    heat: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, near: float, far: float, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's candidates on the view-0 centroid ray and their scores.

    See docs/reference.md §2.2.

    heat: [T, V, H, W] float32 in [0, 1], contiguous; K [V, 3, 3] and c2w [V, 3, 4] float32.
    Returns candidates [T, samples, 3] (metres) and score [T, samples] = product over views of
    the bilinearly sampled heat, both float32 and bitwise equal to the reference's.
    """
    num_frames, num_views, height, width = heat.shape
    K = K.expand(num_frames, num_views, 3, 3)
    c2w = c2w.expand(num_frames, num_views, 3, 4)
    rot, trans = c2w[..., :3], c2w[..., 3]

    h0 = heat[:, 0]
    p = h0 / (_image_sum(h0)[..., None, None] + 1e-8)
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    cx_bar = _image_sum(p * grid_x)
    cy_bar = _image_sum(p * grid_y)
    K0 = K[:, 0]
    d_cam = torch.stack(
        [
            (cx_bar - K0[:, 0, 2]) / K0[:, 0, 0],
            (cy_bar - K0[:, 1, 2]) / K0[:, 1, 1],
            torch.ones_like(cx_bar),
        ],
        dim=-1,
    )
    direction = torch.einsum("tij,tj->ti", rot[:, 0], d_cam)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    depths = torch.linspace(near, far, samples)
    candidates = trans[:, 0, None, :] + depths[None, :, None] * direction[:, None, :]

    offsets = candidates[:, None] - trans[:, :, None, :]
    cam = torch.einsum("tvij,tvdj->tvdi", rot.transpose(-1, -2), offsets)
    z = cam[..., 2] + 1e-8
    u = K[..., 0, 0, None] * (cam[..., 0] / z) + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * (cam[..., 1] / z) + K[..., 1, 2, None]
    u = u.clamp(0, width - 1)
    v = v.clamp(0, height - 1)
    grid = torch.stack([2 * u / (width - 1) - 1, 2 * v / (height - 1) - 1], dim=-1)
    sampled = F.grid_sample(
        heat.reshape(num_frames * num_views, 1, height, width),
        grid.reshape(num_frames * num_views, 1, samples, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    ).reshape(num_frames, num_views, samples)
    return candidates, sampled.prod(dim=1)


def _image_sum(images: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [...]: torch's float32 whole-image sum in its serial order.

    With few images and many threads torch splits one image's sum across threads, which changes
    its rounding (and so the centroid) with the machine's thread count; the serial order is the
    one the fixture's sums reproduce. torch's thread count is process-wide, hence the restore.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return images.sum(dim=(-2, -1))
    finally:
        torch.set_num_threads(threads)


def _edge_smooth(points: torch.Tensor, heat: np.ndarray, edge_threshold: float) -> torch.Tensor:
    """Replace frames whose argmax pixel is within the border band in any view.

    The reference's optional edge smoothing, docs/reference.md §2.2.8.

    points [T, 3] float32; heat [T, V, H, W] (any dtype; only its first argmax is used).
    """
    num_frames, num_views, height, width = heat.shape
    margin = int(height * edge_threshold)
    flat = heat.reshape(num_frames, num_views, -1).argmax(axis=-1)
    y, x = flat // width, flat % width
    on_edge = (y < margin) | (y >= height - margin) | (x < margin) | (x >= width - margin)
    valid = ~on_edge.any(axis=1)
    if valid.all() or not valid.any():
        return points
    out = points.clone()
    valid_idx = np.flatnonzero(valid)
    for t in np.flatnonzero(~valid):
        prev = valid_idx[valid_idx < t]
        nxt = valid_idx[valid_idx > t]
        if prev.size and nxt.size:
            a, b = int(prev[-1]), int(nxt[0])
            alpha = (t - a) / (b - a)
            out[t] = (1 - alpha) * points[a] + alpha * points[b]
        else:
            out[t] = points[int(prev[-1] if prev.size else nxt[0])]
    return out

"""Camera latents: Plücker ray fields encoded by the latent codec, with a cache.

The ray fields are the reference's (docs/reference.md §3.3).

Per view the direction field and the moment field (already /3) are each treated as a 3-channel
video in roughly [-1, 1], encoded like RGB, and concatenated along channels:
[T_l, 2*C, h, w] per view. Cameras are static on a robot, so the result is cached by camera
parameters, size and frame count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from aimg.geometry import Camera, plucker_rays, relative_c2w
from aimg.model.codecs import LatentCodec


def plucker_video(
    cameras: Camera | Sequence[Camera], num_frames: int, relative_to: np.ndarray | None = None
) -> torch.Tensor:
    """Plücker fields of one view as a video [6, T, H, W] float32 (direction, moment/3).

    `cameras`: one static camera, or one per frame. `relative_to`: a c2w [4, 4] to express
    poses relative to (the reference trains relative to the condition view's first frame).
    """
    per_frame = [cameras] * num_frames if isinstance(cameras, Camera) else list(cameras)
    if len(per_frame) != num_frames:
        raise ValueError(f"got {len(per_frame)} cameras for {num_frames} frames")
    fields = {}
    frames = []
    for cam in per_frame:
        c2w = cam.c2w if relative_to is None else relative_c2w(cam.c2w, relative_to)
        key = (cam.K.tobytes(), np.asarray(c2w).tobytes(), cam.height, cam.width)
        if key not in fields:
            rays = plucker_rays(cam.K, c2w, cam.height, cam.width)
            fields[key] = torch.from_numpy(rays).permute(2, 0, 1)
        frames.append(fields[key])
    return torch.stack(frames, dim=1)


def encode_cameras(
    cameras: Sequence[Camera | Sequence[Camera]],
    codec: LatentCodec,
    num_frames: int,
    height: int,
    width: int,
    relative_to: np.ndarray | None = None,
) -> torch.Tensor:
    """Camera latents [V, T_l, 2*C, h, w] float32 for V views at height x width.

    Each view's cameras must already describe `height` x `width` images (use `Camera.scaled`).
    """
    out = []
    for view, cams in enumerate(cameras):
        for cam in [cams] if isinstance(cams, Camera) else cams:
            if (cam.height, cam.width) != (height, width):
                raise ValueError(
                    f"view {view}: camera is {cam.height}x{cam.width} but the model works at "
                    f"{height}x{width}; pass camera.scaled({height}, {width})"
                )
        video = plucker_video(cams, num_frames, relative_to)
        direction = codec.encode(video[None, :3])
        moment = codec.encode(video[None, 3:])
        latents = torch.cat([direction, moment], dim=1)[0]
        out.append(latents.permute(1, 0, 2, 3).float().cpu())
    return torch.stack(out)


class CameraLatentCache:
    """LRU cache of `encode_cameras` keyed by camera parameters, size and frame count."""

    def __init__(self, codec: LatentCodec, max_entries: int = 16) -> None:
        self.codec = codec
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @staticmethod
    def _key(cameras, num_frames, height, width, relative_to) -> tuple:
        parts = []
        for cams in cameras:
            for cam in [cams] if isinstance(cams, Camera) else cams:
                parts.append((cam.K.tobytes(), cam.c2w.tobytes(), cam.height, cam.width))
            parts.append("|")
        rel = None if relative_to is None else np.asarray(relative_to, np.float64).tobytes()
        return (tuple(parts), num_frames, height, width, rel)

    def get(
        self,
        cameras: Sequence[Camera | Sequence[Camera]],
        num_frames: int,
        height: int,
        width: int,
        relative_to: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Camera latents [V, T_l, 2*C, h, w], computed once per distinct set-up."""
        key = self._key(cameras, num_frames, height, width, relative_to)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        latents = encode_cameras(cameras, self.codec, num_frames, height, width, relative_to)
        self._entries[key] = latents
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return latents

    def __len__(self) -> int:
        return len(self._entries)

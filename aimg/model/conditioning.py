"""Clean conditioning latents for sampling: what each task is given, packed with its mask.

At inference the current RGB frame and the current-pose action image of each view are the
first pixel frame of otherwise empty segments (docs/reference.md §6). Latent frame 0 holds
pixel frame 0 alone (causal Wan VAE, and the pixel codec by construction), so encoding that one
frame gives exactly the conditioning latent. Whole segments (v2a: videos; a2v: action videos)
are encoded in full.
"""

from __future__ import annotations

import torch

from aimg.model.codecs import LatentCodec
from aimg.model.packing import Task, conditioning_mask, pack_latents


def encode_views(codec: LatentCodec, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, V, 3, T, H, W] in [-1, 1] -> latents [B, V, C, T_l, h, w] (float32)."""
    if pixels.ndim != 6:
        raise ValueError(f"pixels must be [B, V, 3, T, H, W], got {tuple(pixels.shape)}")
    b, v = pixels.shape[:2]
    return codec.encode(pixels.flatten(0, 1)).unflatten(0, (b, v)).float()


def conditioning_latents(
    codec: LatentCodec,
    task: Task | str,
    latent_frames: int,
    first_frames: torch.Tensor,
    first_actions: torch.Tensor | None = None,
    video: torch.Tensor | None = None,
    action: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed clean latents [B, C, F, h, w] (zeros where generated) and the mask [F].

    first_frames / first_actions: [B, V, 3, H, W] in [-1, 1], the current image and the
    current-pose action image of each view. video / action: [B, V, 3, T, H, W], the whole
    segments a task is given (v2a needs `video`, a2v needs `action`, first_view_video needs
    `video` with at least view 0).
    """
    task = Task(task)
    if task.with_actions and first_actions is None:
        raise ValueError(f"task {task.value} needs first_actions (the current action images)")
    first = encode_views(codec, first_frames[:, :, :, None])
    batch, views = first.shape[:2]
    shape = (batch, views, first.shape[2], latent_frames, *first.shape[-2:])
    video_lat = first.new_zeros(shape)
    video_lat[:, :, :, :1] = first
    action_lat = None
    if task.with_actions:
        action_lat = first.new_zeros(shape)
        action_lat[:, :, :, :1] = encode_views(codec, first_actions[:, :, :, None])
    whole_video = task in (Task.VIDEO_TO_ACTION, Task.FIRST_VIEW_VIDEO_GIVEN)
    if whole_video:
        if video is None:
            raise ValueError(f"task {task.value} needs the whole `video` segments")
        encoded = encode_views(codec, video)
        if task is Task.VIDEO_TO_ACTION:
            video_lat = encoded
        else:
            video_lat[:, 0] = encoded[:, 0]
    if task is Task.ACTION_TO_VIDEO:
        if action is None:
            raise ValueError("task a2v needs the whole `action` segments")
        action_lat = encode_views(codec, action)
    for name, lat in (("video", video_lat), ("action", action_lat)):
        if lat is not None and lat.shape[3] != latent_frames:
            raise ValueError(
                f"{name} segments encode to {lat.shape[3]} latent frames, expected {latent_frames}"
            )
    packed = pack_latents(video_lat, action_lat)
    return packed, conditioning_mask(task, views, latent_frames)


def joint_conditioning(
    frame_latents: torch.Tensor, action_latents: torch.Tensor, latent_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed clean latents [B, C, F, h, w] and mask [F] of the joint task (i2va) from the
    already encoded current frames and current action images, each [B, V, C, h, w].

    The same layout `conditioning_latents` builds for Task.JOINT, for callers that encode with
    a compiled graph rather than a `LatentCodec`.
    """
    if frame_latents.shape != action_latents.shape or frame_latents.ndim != 5:
        raise ValueError(
            f"frame and action latents must both be [B, V, C, h, w], got "
            f"{tuple(frame_latents.shape)} and {tuple(action_latents.shape)}"
        )
    batch, views, channels, h, w = frame_latents.shape
    shape = (batch, views, channels, latent_frames, h, w)
    video = frame_latents.new_zeros(shape)
    action = frame_latents.new_zeros(shape)
    video[:, :, :, 0] = frame_latents
    action[:, :, :, 0] = action_latents
    return pack_latents(video, action), conditioning_mask(Task.JOINT, views, latent_frames)

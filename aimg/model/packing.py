"""Packing of views and modalities along latent frames, and the conditioning masks.

The reference's layout and masks are described in docs/reference.md §4.3-4.4.

Joint layout (view-major, video before action): [v0 video, v0 action, v1 video, v1 action, ...],
each segment T_l latent frames. Video-only layout: [v0 video, v1 video, ...]. No view or
modality embedding exists: only camera latents tell views apart.
"""

from __future__ import annotations

from enum import Enum

import torch


class Task(str, Enum):
    """What is generated from what; decides the layout and which latent frames are clean."""

    JOINT = "i2va"  # current images + current actions -> future video and actions
    VIDEO_TO_ACTION = "v2a"  # whole videos given -> action labels
    ACTION_TO_VIDEO = "a2v"  # whole action videos given -> video
    VIDEO_ONLY = "i2v"  # current images -> future video, no action segments
    FIRST_VIEW_VIDEO_GIVEN = "first_view_video"  # view-0 video given -> the rest (training only)

    @property
    def with_actions(self) -> bool:
        """Whether the layout holds action segments."""
        return self is not Task.VIDEO_ONLY


def num_segments(num_views: int, with_actions: bool) -> int:
    return num_views * (2 if with_actions else 1)


def segment_slice(view: int, modality: str, latent_frames: int, with_actions: bool) -> slice:
    """Latent-frame range of one segment; modality is "video" or "action"."""
    if modality not in ("video", "action"):
        raise ValueError(f"modality must be 'video' or 'action', got {modality!r}")
    if modality == "action" and not with_actions:
        raise ValueError("the video-only layout has no action segments")
    index = view * 2 + (modality == "action") if with_actions else view
    return slice(index * latent_frames, (index + 1) * latent_frames)


def pack_latents(video: torch.Tensor, action: torch.Tensor | None) -> torch.Tensor:
    """video, action [B, V, C, T_l, h, w] -> packed [B, C, F, h, w] (F = V*T_l or 2*V*T_l)."""
    if video.ndim != 6:
        raise ValueError(f"video latents must be [B, V, C, T_l, h, w], got {tuple(video.shape)}")
    segments = []
    for v in range(video.shape[1]):
        segments.append(video[:, v])
        if action is not None:
            segments.append(action[:, v])
    if action is not None and action.shape != video.shape:
        raise ValueError(
            f"action latents {tuple(action.shape)} must match video latents {tuple(video.shape)}"
        )
    return torch.cat(segments, dim=2)


def unpack_latents(
    packed: torch.Tensor, num_views: int, with_actions: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """packed [B, C, F, h, w] -> (video [B, V, C, T_l, h, w], action or None)."""
    segments = num_segments(num_views, with_actions)
    if packed.shape[2] % segments:
        raise ValueError(f"{packed.shape[2]} latent frames do not split into {segments} segments")
    parts = packed.chunk(segments, dim=2)
    if not with_actions:
        return torch.stack(parts, dim=1), None
    return torch.stack(parts[0::2], dim=1), torch.stack(parts[1::2], dim=1)


def conditioning_mask(task: Task | str, num_views: int, latent_frames: int) -> torch.Tensor:
    """bool [F]: True for clean conditioning latent frames (loss excluded).

    Per task as in docs/reference.md §4.4.
    """
    task = Task(task)
    with_actions = task.with_actions
    mask = torch.zeros(num_segments(num_views, with_actions) * latent_frames, dtype=torch.bool)
    for view in range(num_views):
        modalities = ("video", "action") if with_actions else ("video",)
        for modality in modalities:
            seg = segment_slice(view, modality, latent_frames, with_actions)
            whole = (
                (task is Task.VIDEO_TO_ACTION and modality == "video")
                or (task is Task.ACTION_TO_VIDEO and modality == "action")
                or (task is Task.FIRST_VIEW_VIDEO_GIVEN and modality == "video" and view == 0)
            )
            if whole:
                mask[seg] = True
            else:
                mask[seg.start] = True
    return mask


def pack_camera_latents(cam: torch.Tensor, with_actions: bool) -> torch.Tensor:
    """cam [B, V, T_l, C_cam, h, w] -> [B, F, C_cam, h, w] matching the packed layout.

    An action segment reuses its view's camera latents ([cam_v0, cam_v0, cam_v1, cam_v1]).
    """
    if cam.ndim != 6:
        raise ValueError(f"camera latents must be [B, V, T_l, C_cam, h, w], got {tuple(cam.shape)}")
    repeats = 2 if with_actions else 1
    return cam.repeat_interleave(repeats, dim=1).flatten(1, 2)

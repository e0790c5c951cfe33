"""Conditioning latents for sampling: first frames, whole given segments, masks."""

from __future__ import annotations

import pytest
import torch

from aimg.model.codecs import PixelCodec
from aimg.model.conditioning import conditioning_latents, encode_views
from aimg.model.packing import Task, conditioning_mask, unpack_latents

CODEC = PixelCodec(4, 4)
B, V, T, S = 2, 2, 9, 8


def pixels(seed: int) -> torch.Tensor:
    return torch.rand(B, V, 3, T, S, S, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_first_frame_latent_equals_latent_frame_zero_of_the_whole_video():
    video = pixels(0)
    whole = encode_views(CODEC, video)
    first = encode_views(CODEC, video[:, :, :, :1])
    assert torch.equal(first[:, :, :, 0], whole[:, :, :, 0])


def test_joint_task_holds_first_frames_and_zeros_elsewhere():
    video, action = pixels(0), pixels(1)
    packed, mask = conditioning_latents(
        CODEC, Task.JOINT, 3, video[:, :, :, 0], first_actions=action[:, :, :, 0]
    )
    assert torch.equal(mask, conditioning_mask(Task.JOINT, V, 3))
    v_lat, a_lat = unpack_latents(packed, V, True)
    assert torch.equal(v_lat[:, :, :, 0], encode_views(CODEC, video)[:, :, :, 0])
    assert torch.equal(a_lat[:, :, :, 0], encode_views(CODEC, action)[:, :, :, 0])
    assert torch.count_nonzero(packed[:, :, ~mask]) == 0


def test_video_to_action_holds_the_whole_videos():
    video, action = pixels(0), pixels(1)
    packed, mask = conditioning_latents(
        CODEC, "v2a", 3, video[:, :, :, 0], action[:, :, :, 0], video=video
    )
    v_lat, _ = unpack_latents(packed, V, True)
    assert torch.equal(v_lat, encode_views(CODEC, video))
    assert int(mask.sum()) == 2 * 3 + 2


def test_action_to_video_holds_the_whole_action_videos():
    video, action = pixels(0), pixels(1)
    packed, _ = conditioning_latents(
        CODEC, "a2v", 3, video[:, :, :, 0], action[:, :, :, 0], action=action
    )
    assert torch.equal(unpack_latents(packed, V, True)[1], encode_views(CODEC, action))


def test_video_only_task_needs_no_action_images():
    packed, mask = conditioning_latents(CODEC, "i2v", 3, pixels(0)[:, :, :, 0])
    assert packed.shape[2] == V * 3 and mask.shape == (V * 3,)


def test_missing_inputs_are_reported():
    first = pixels(0)[:, :, :, 0]
    with pytest.raises(ValueError, match="first_actions"):
        conditioning_latents(CODEC, "i2va", 3, first)
    with pytest.raises(ValueError, match="whole `video`"):
        conditioning_latents(CODEC, "v2a", 3, first, first)
    with pytest.raises(ValueError, match="expected 2"):
        conditioning_latents(CODEC, "v2a", 2, first, first, video=pixels(0))

"""Packing of views and modalities along latent frames, and the task masks.

The reference's layout and masks are described in docs/reference.md §4.3-4.4.
"""

from __future__ import annotations

import pytest
import torch

from aimg.model.packing import (
    Task,
    conditioning_mask,
    pack_camera_latents,
    pack_latents,
    segment_slice,
    unpack_latents,
)

B, V, C, T_L, H, W = 2, 2, 3, 4, 2, 2


def latents(offset: float) -> torch.Tensor:
    """[B, V, C, T_l, h, w] whose values encode (view, frame) for easy checks."""
    x = torch.zeros(B, V, C, T_L, H, W)
    for v in range(V):
        for f in range(T_L):
            x[:, v, :, f] = offset + 10 * v + f
    return x


def test_joint_layout_is_view_major_video_before_action():
    packed = pack_latents(latents(0.0), latents(100.0))
    assert packed.shape == (B, C, 2 * V * T_L, H, W)
    firsts = packed[0, 0, ::T_L, 0, 0].tolist()
    assert firsts == [0.0, 100.0, 10.0, 110.0]  # v0 video, v0 action, v1 video, v1 action


def test_video_only_layout_concatenates_views():
    packed = pack_latents(latents(0.0), None)
    assert packed.shape == (B, C, V * T_L, H, W)
    assert packed[0, 0, ::T_L, 0, 0].tolist() == [0.0, 10.0]


@pytest.mark.parametrize("with_actions", [True, False])
def test_unpack_inverts_pack(with_actions):
    video, action = latents(0.0), latents(100.0) if with_actions else None
    out_video, out_action = unpack_latents(pack_latents(video, action), V, with_actions)
    assert torch.equal(out_video, video)
    assert (out_action is None) if action is None else torch.equal(out_action, action)


def test_segment_slices_match_packing():
    packed = pack_latents(latents(0.0), latents(100.0))
    seg = segment_slice(1, "action", T_L, True)
    assert torch.equal(packed[:, :, seg], latents(100.0)[:, 1])


def _frames(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def test_joint_mask_keeps_first_frame_of_every_segment():
    assert _frames(conditioning_mask(Task.JOINT, 2, 11)) == [0, 11, 22, 33]


def test_video_to_action_mask_keeps_whole_video_segments():
    expected = list(range(0, 11)) + [11, *range(22, 33), 33]
    assert _frames(conditioning_mask("v2a", 2, 11)) == expected


def test_action_to_video_mask_keeps_whole_action_segments():
    expected = [0, *range(11, 22), 22, *range(33, 44)]
    assert _frames(conditioning_mask(Task.ACTION_TO_VIDEO, 2, 11)) == expected


def test_first_view_video_given_mask_keeps_view0_video():
    expected = [*range(0, 11), 11, 22, 33]
    assert _frames(conditioning_mask(Task.FIRST_VIEW_VIDEO_GIVEN, 2, 11)) == expected


def test_video_only_mask_keeps_frame0_of_each_view():
    mask = conditioning_mask(Task.VIDEO_ONLY, 2, 11)
    assert mask.shape == (22,)
    assert _frames(mask) == [0, 11]


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="i2a"):
        conditioning_mask("i2a", 2, 11)


def test_camera_latents_repeat_for_action_segments():
    cam = torch.arange(B * V * T_L, dtype=torch.float32).view(B, V, T_L, 1, 1, 1)
    cam = cam.expand(B, V, T_L, 5, 2, 2)
    packed = pack_camera_latents(cam, with_actions=True)
    assert packed.shape == (B, 2 * V * T_L, 5, 2, 2)
    for seg, view in enumerate([0, 0, 1, 1]):
        assert torch.equal(packed[:, seg * T_L : (seg + 1) * T_L], cam[:, view])
    assert torch.equal(pack_camera_latents(cam, with_actions=False), cam.flatten(1, 2))


def test_mismatched_action_latents_are_rejected():
    with pytest.raises(ValueError, match="must match"):
        pack_latents(latents(0.0), latents(0.0)[:, :, :, :2])

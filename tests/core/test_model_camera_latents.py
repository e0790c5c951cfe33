"""Camera latents: Plücker fields through the codec, per view, cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimg.geometry import Camera, intrinsics_matrix, look_at, plucker_rays, relative_c2w
from aimg.model.camera_latents import CameraLatentCache, encode_cameras, plucker_video
from aimg.model.codecs import PixelCodec

TARGET = np.array([0.4, 0.0, 0.1])


def camera(eye, size: int = 16) -> Camera:
    f = 0.9 * size
    K = intrinsics_matrix(f, f, (size - 1) / 2, (size - 1) / 2)
    return Camera(K, look_at(np.asarray(eye, dtype=np.float64), TARGET), size, size)


CAMS = [camera([1.0, 0.0, 0.8]), camera([0.4, 1.0, 0.7])]


def test_camera_latents_are_the_encoded_direction_and_moment_videos():
    codec = PixelCodec(4, 4)
    latents = encode_cameras(CAMS, codec, num_frames=5, height=16, width=16)
    assert latents.shape == (2, 2, 2 * codec.latent_channels, 4, 4)
    rays = torch.from_numpy(plucker_rays(CAMS[1].K, CAMS[1].c2w, 16, 16)).permute(2, 0, 1)
    video = rays[:, None].expand(6, 5, 16, 16)
    direction = codec.encode(video[None, :3])[0].permute(1, 0, 2, 3)
    moment = codec.encode(video[None, 3:])[0].permute(1, 0, 2, 3)
    assert torch.equal(latents[1], torch.cat([direction, moment], dim=1))


def test_per_frame_cameras_are_supported():
    moving = [camera([1.0, 0.1 * t, 0.8]) for t in range(5)]
    video = plucker_video(moving, 5)
    assert video.shape == (6, 5, 16, 16)
    assert not torch.equal(video[:, 0], video[:, 4])
    with pytest.raises(ValueError, match="4 cameras for 5 frames"):
        plucker_video(moving[:4], 5)


def test_relative_poses_use_the_given_reference_camera():
    video = plucker_video(CAMS[1], 1, relative_to=CAMS[0].c2w)
    c2w = relative_c2w(CAMS[1].c2w, CAMS[0].c2w)
    expected = torch.from_numpy(plucker_rays(CAMS[1].K, c2w, 16, 16)).permute(2, 0, 1)
    assert torch.equal(video[:, 0], expected)


def test_cameras_at_another_resolution_are_rejected():
    with pytest.raises(ValueError, match="scaled"):
        encode_cameras([camera([1, 0, 1], size=32)], PixelCodec(4, 4), 5, 16, 16)


def test_cache_computes_each_setup_once():
    cache = CameraLatentCache(PixelCodec(4, 4), max_entries=2)
    first = cache.get(CAMS, 5, 16, 16)
    assert cache.get(CAMS, 5, 16, 16) is first
    assert len(cache) == 1
    other = cache.get(CAMS[::-1], 5, 16, 16)
    assert torch.equal(other[0], first[1])
    cache.get(CAMS, 9, 16, 16)
    cache.get(CAMS[:1], 5, 16, 16)
    assert len(cache) == 2

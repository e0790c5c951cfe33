"""The world-action objective: layouts, masks, timesteps, latent cache, batch-split invariance."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from training_fixtures import synthetic_episode, write_synthetic_episodes, write_tiny_preset

from aimg.episodes import write_episode
from aimg.geometry import Camera
from aimg.model.build import build_latent_codec, build_text_encoder
from aimg.model.packing import Task, conditioning_mask
from aimg.training.config import load_training_preset
from aimg.training.dataset import EpisodeClipDataset, find_episodes
from aimg.training.latent_cache import LatentCache
from aimg.training.objective import WorldActionObjective, batch_cameras, codec_signature


class Spy(nn.Module):
    """Records what the objective feeds the model and predicts zeros (with a gradient path)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def forward(self, x, timestep, text, cameras):
        self.calls.append((x, timestep, text, cameras))
        return x * self.scale


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objective")
    write_synthetic_episodes(tmp / "data", 2, frames=12)
    preset = load_training_preset(write_tiny_preset(tmp / "p.yaml", tmp / "data", tmp / "run"))
    dataset = EpisodeClipDataset(find_episodes(preset.data.roots), preset.data, 5, 32, 32)
    batch = torch.utils.data.default_collate([dataset[(0, 11)], dataset[(1, 12)], dataset[(0, 13)]])
    return preset, batch, tmp


def _objective(preset, cache=None, **train) -> WorldActionObjective:
    m = preset.model
    tcfg = dataclasses.replace(preset.train, **train)
    return WorldActionObjective(
        m,
        preset.data,
        tcfg,
        build_latent_codec(m),
        build_text_encoder(m),
        torch.device("cpu"),
        cache,
    )


def _step_with_task(objective: WorldActionObjective, task: Task) -> int:
    return next(s for s in range(1000) if objective.task(s) is task)


def test_joint_task_packs_four_segments_with_per_token_timesteps_zero_on_clean_frames(setup):
    preset, batch, _ = setup
    objective, spy = _objective(preset), Spy()
    objective(spy, batch, _step_with_task(objective, Task.JOINT))
    x, t, text, cams = spy.calls[0]
    t_l = preset.model.latent_frames
    clean = conditioning_mask(Task.JOINT, 2, t_l)
    assert x.shape == (3, preset.model.latent_channels, 4 * t_l, 8, 8)
    assert t.shape == (3, 4 * t_l)
    assert torch.all(t[:, clean] == 0) and torch.all(t[:, ~clean] > 0)
    assert cams.shape[:3] == (3, 4 * t_l, preset.model.cam_channels)
    assert text.shape == (3, preset.model.text.max_length, preset.model.transformer.text_dim)


def test_video_only_task_drops_the_action_segments(setup):
    preset, batch, _ = setup
    objective, spy = _objective(preset), Spy()
    objective(spy, batch, _step_with_task(objective, Task.VIDEO_ONLY))
    x, _, _, cams = spy.calls[0]
    assert x.shape[2] == 2 * preset.model.latent_frames
    assert cams.shape[1] == x.shape[2]


def test_clean_frames_reach_the_model_unnoised(setup):
    preset, batch, _ = setup
    objective, spy = _objective(preset), Spy()
    objective(spy, batch, 0)
    inputs = objective.inputs(batch, objective.task(0))
    x = spy.calls[0][0]
    assert torch.equal(x[:, :, inputs["clean"]], inputs["x0"][:, :, inputs["clean"]])
    assert not torch.equal(x[:, :, ~inputs["clean"]], inputs["x0"][:, :, ~inputs["clean"]])


def test_loss_of_a_batch_is_the_mean_of_the_losses_of_its_parts(setup):
    preset, batch, _ = setup
    objective = _objective(preset)
    model = Spy()
    model.scale.data.fill_(0.5)

    def part(lo, hi):
        sub = {k: v[lo:hi] for k, v in batch.items()}
        return objective(model, sub, 5)[0]

    whole = objective(model, batch, 5)[0]
    torch.testing.assert_close(whole, (part(0, 1) + part(1, 3) * 2) / 3)


def test_action_loss_weight_marks_exactly_the_action_segments(setup):
    preset, _, _ = setup
    objective = _objective(preset, action_loss_weight=4.0)
    t_l = preset.model.latent_frames
    weights = objective.frame_weights(Task.JOINT)
    # layout [v0 video, v0 action, v1 video, v1 action]
    expected = torch.tensor([1.0] * t_l + [4.0] * t_l + [1.0] * t_l + [4.0] * t_l)
    assert torch.equal(weights, expected)
    assert objective.frame_weights(Task.VIDEO_ONLY) is None
    assert _objective(preset).frame_weights(Task.JOINT) is None


def test_action_loss_weight_changes_the_joint_loss(setup):
    preset, batch, _ = setup
    model = Spy()
    model.scale.data.fill_(0.5)
    step = _step_with_task(_objective(preset), Task.JOINT)
    plain = _objective(preset)(model, batch, step)[0]
    stressed = _objective(preset, action_loss_weight=4.0)(model, batch, step)[0]
    assert not torch.isclose(plain, stressed)


def test_latent_cache_gives_the_same_latents_and_is_reused(setup):
    preset, batch, tmp = setup
    cache = LatentCache(tmp / "cache", codec_signature(preset.model))
    plain, cached = _objective(preset), _objective(preset, cache)
    expected = plain.inputs(batch, Task.JOINT)["x0"]
    torch.testing.assert_close(cached.inputs(batch, Task.JOINT)["x0"], expected)
    assert (cache.misses, cache.hits) == (3 * 2 * 2, 0)  # samples x views x modalities
    torch.testing.assert_close(cached.inputs(batch, Task.JOINT)["x0"], expected)
    assert (cache.misses, cache.hits) == (12, 12)


def test_moving_cameras_give_per_frame_camera_latents(setup):
    preset, _, tmp = setup
    root = tmp / "moving"
    write_episode(root, synthetic_episode(3, frames=12, moving=("side",)))
    dataset = EpisodeClipDataset(find_episodes([root]), preset.data, 5, 32, 32)
    batch = torch.utils.data.default_collate([dataset[(0, 21)]])
    views = batch["views"][0].split("|")
    cams = batch_cameras(batch, 0)
    side = views.index("side")
    assert isinstance(cams[side], list) and isinstance(cams[1 - side], Camera)
    latents = _objective(preset).camera_latents(batch)[0]  # [V, T_l, C_cam, h, w]
    assert not torch.equal(latents[side, 0], latents[side, -1])
    assert torch.equal(latents[1 - side, 0], latents[1 - side, -1])


def test_scalar_timestep_models_get_one_timestep_per_sample_shared_per_batch(tmp_path):
    write_synthetic_episodes(tmp_path / "data", 2, frames=12)
    path = write_tiny_preset(tmp_path / "p.yaml", tmp_path / "data", tmp_path / "run", "scalar")
    preset = load_training_preset(path)
    dataset = EpisodeClipDataset(find_episodes(preset.data.roots), preset.data, 5, 32, 32)
    batch = torch.utils.data.default_collate([dataset[(0, 1)], dataset[(1, 2)]])
    objective, spy = _objective(preset, timesteps="per_batch"), Spy()
    objective(spy, batch, 3)
    t = spy.calls[0][1]
    assert t.shape == (2,) and t[0] == t[1] and t[0] > 0

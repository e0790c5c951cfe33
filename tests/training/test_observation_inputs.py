"""The runtime's observation mapping and the training dataset give the model identical inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from training_fixtures import write_synthetic_episodes

from aimg.episodes import read_episode
from aimg.observation import InputSpec, prepare_observation
from aimg.training.config import DataConfig
from aimg.training.dataset import EpisodeClipDataset


@pytest.fixture(scope="module")
def episode_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    return write_synthetic_episodes(root, count=1, height=96, width=128)[0]


@pytest.mark.parametrize("crop", [None, [0.1, 0.05, 0.8, 0.85]])
def test_dataset_and_runtime_map_frame_zero_to_identical_tensors(episode_path, crop):
    cfg = DataConfig(
        roots=[episode_path.parent], views=["front", "side"], start_at_zero=1.0, crop=crop
    )
    dataset = EpisodeClipDataset([episode_path], cfg, frames=5, height=32, width=32, blob_sigma=0.1)
    item = dataset[(0, 0)]
    views = item["views"].split("|")  # the dataset draws the order of the pair
    episode = read_episode(episode_path)
    spec = InputSpec(views=2, height=32, width=32, blob_sigma=0.1, crop=crop)
    obs = prepare_observation(
        [episode.frames(v)[0] for v in views],
        [episode.camera(v, 0) for v in views],
        np.asarray(episode.poses)[0],
        spec,
    )
    assert torch.equal(obs.frames, item["video"][:, :, 0])
    assert torch.equal(obs.action_images, item["action_images"][:, :, 0])
    for view, camera in enumerate(obs.cameras):
        np.testing.assert_array_equal(camera.K, item["K"][view, 0].numpy())
        np.testing.assert_array_equal(camera.c2w, item["c2w"][view, 0].numpy())


def test_input_spec_reads_crop_width_and_camera_mode_from_a_checkpoint_config():
    config = {
        "model": {"views": 2, "height": 64, "width": 48, "blob_sigma": 0.125},
        "extra": {"data": {"crop": [0.1, 0.2, 0.5, 0.6], "relative_cameras": True}},
    }
    spec = InputSpec.from_checkpoint_config(config)
    assert spec == InputSpec(2, 64, 48, 0.125, (0.1, 0.2, 0.5, 0.6), True)
    plain = InputSpec.from_checkpoint_config({"model": config["model"]})
    assert plain == dataclasses.replace(spec, crop=None, relative_cameras=False)


def test_a_frame_that_does_not_match_its_calibration_is_refused(episode_path):
    episode = read_episode(episode_path)
    spec = InputSpec(views=2, height=32, width=32, blob_sigma=0.1)
    small = episode.frames("front")[0][:48]
    with pytest.raises(ValueError, match="recalibrate or resize"):
        prepare_observation(
            [small, episode.frames("side")[0]],
            [episode.camera("front"), episode.camera("side")],
            np.asarray(episode.poses)[0],
            spec,
        )

"""Checkpoint directories: model.safetensors + config.json, strict and atomic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aimg.model.build import build_model
from aimg.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aimg.model.config import SamplingConfig, load_preset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def preset():
    cfg, sampling, _ = load_preset(CONFIGS / "sim-tiny.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.cam_encoder[2].weight.normal_(std=0.01)
    return cfg, sampling, model


def test_round_trip_restores_weights_configs_and_extra(preset, tmp_path):
    cfg, sampling, model = preset
    student = SamplingConfig(num_steps=4, cfg_scale=1.0, sigmas=[1.0, 0.75, 0.5, 0.25])
    save_checkpoint(tmp_path / "ck", model, cfg, student, {"step": 120})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model_config == cfg
    assert loaded.sampling == student
    assert loaded.extra == {"step": 120}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(1, cfg.latent_channels, 3, 8, 8)
    cams = torch.randn(1, 3, cfg.cam_channels, 8, 8)
    text = torch.randn(1, 16, 64)
    t = torch.tensor([[0.0, 500.0, 500.0]])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, text, cams), model.eval()(x, t, text, cams))


def test_directory_holds_safetensors_and_a_readable_config(preset, tmp_path):
    cfg, sampling, model = preset
    save_checkpoint(tmp_path / "ck", model, cfg, sampling)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["preset"] == "sim-tiny"
    assert config["shapes"]["tokens_joint"] == cfg.num_tokens() == 320
    assert config["shapes"]["latent_channels"] == cfg.latent_channels == 192
    assert config["sampling"]["num_steps"] == sampling.num_steps
    assert config["transformer"]["num_layers"] == cfg.transformer.num_layers


def test_saving_again_overwrites_the_files_and_keeps_others(preset, tmp_path):
    cfg, sampling, model = preset
    save_checkpoint(tmp_path / "ck", model, cfg, sampling, {"step": 1})
    (tmp_path / "ck" / "trainer_state.pt").write_text("kept")
    save_checkpoint(tmp_path / "ck", model, cfg, sampling, {"step": 2})
    assert load_checkpoint(tmp_path / "ck").extra == {"step": 2}
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["config.json", "model.safetensors", "trainer_state.pt"]


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="model.safetensors and config.json"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_fit_the_config_are_reported(preset, tmp_path):
    cfg, sampling, model = preset
    save_checkpoint(tmp_path / "ck", model, cfg, sampling)
    path = tmp_path / "ck" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["proj_out.bias"] = torch.zeros(7)
    del tensors["blocks.0.projector.bias"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="blocks.0.projector.bias.*proj_out.bias"):
        load_checkpoint(tmp_path / "ck")


def test_model_that_does_not_match_its_config_is_refused(preset, tmp_path):
    cfg, sampling, _ = preset
    one_layer = replace(cfg, transformer=replace(cfg.transformer, num_layers=1))
    with pytest.raises(CheckpointError, match="does not match"):
        save_checkpoint(tmp_path / "ck", build_model(one_layer), cfg, sampling)
    assert not (tmp_path / "ck").exists()

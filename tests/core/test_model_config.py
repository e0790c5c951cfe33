"""Model presets: the shipped YAML files load, derived sizes, and bad configs fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aimg.config import ConfigError
from aimg.model.config import load_preset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_official_preset_has_the_reference_shapes():
    cfg, sampling, _ = load_preset(CONFIGS / "official-5b.yaml")
    t = cfg.transformer
    assert (t.dim, t.num_heads, t.num_layers, t.ffn_dim, t.text_dim) == (3072, 24, 30, 14336, 4096)
    assert (cfg.latent_channels, cfg.cam_channels, cfg.latent_frames) == (48, 96, 11)
    assert (cfg.latent_height, cfg.latent_width, cfg.cam_features) == (32, 32, 12288)
    assert cfg.num_tokens() == 11264 and cfg.num_tokens(with_actions=False) == 5632
    assert (sampling.num_steps, sampling.shift, sampling.cfg_scale) == (50, 5.0, 7.5)


def test_sim_tiny_preset_packs_320_tokens_of_768_values():
    cfg, _, raw = load_preset(CONFIGS / "sim-tiny.yaml")
    assert cfg.num_tokens() == 320  # 4 segments x 5 latent frames x 4 x 4 tokens
    assert cfg.latent_frames == 5 and cfg.latent_height == 8
    patch = cfg.transformer.patch_size
    assert cfg.latent_channels * patch[0] * patch[1] * patch[2] == 768
    assert "model" in raw
    assert cfg.blob_sigma == 0.125  # 8 px blobs at 64 px: half a token (see the preset)
    official, _, _ = load_preset(CONFIGS / "official-5b.yaml")
    assert official.blob_sigma == 0.05  # the reference's


def write(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((CONFIGS / "sim-tiny.yaml").read_text())
    edit(raw["model"])
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["transformer"].update(head_dim=31), "head_dim 31 must be even"),
        (
            lambda m: (m["codec"].update(temporal_factor=4), m.update(frames=10)),
            "frames 10 does not fit",
        ),
        (lambda m: m.update(height=60), "multiple of codec spatial factor"),
        (lambda m: m["transformer"].update(cam_pool=[48, 16, 16]), "cam_pool .* exceeds"),
        (lambda m: m["transformer"].update(patch_size=[2, 2, 2]), "temporal patch must be 1"),
        (lambda m: m["transformer"].update(timestep_mode="per_pixel"), "per_pixel"),
        (lambda m: m["transformer"].update(num_heads=0), "num_heads must be positive"),
        (lambda m: m["codec"].update(kind="wan_vae"), "needs `path`"),
        (lambda m: m["text"].update(kind="umt5"), "needs `path`"),
        (lambda m: m.update(colour="red"), "unknown key.*colour"),
        (lambda m: m.update(blob_sigma=0.0), "blob_sigma is a fraction"),
        (lambda m: m["transformer"].pop("num_layers"), "missing required key 'num_layers'"),
    ],
)
def test_bad_model_configs_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_preset(write(tmp_path, edit))


def test_bad_sampling_grid_is_rejected(tmp_path):
    raw = yaml.safe_load((CONFIGS / "sim-tiny.yaml").read_text())
    raw["sampling"]["sigmas"] = [0.5, 0.8]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        load_preset(path)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"num_steps": 3, "sigmas": [1.0, 0.5]}, "2 entries but num_steps is 3"),
        (
            {
                "num_steps": 2,
                "distilled": {
                    "teacher_sha256": "ab",
                    "teacher_steps": 50,
                    "teacher_cfg_scale": 2.0,
                    "guidance_scale": 2.0,
                },
            },
            "own grid",
        ),
        (
            {
                "num_steps": 2,
                "sigmas": [1.0, 0.5],
                "distilled": {"teacher_sha256": "ab", "teacher_steps": 50},
            },
            "missing required key 'teacher_cfg_scale'",
        ),
    ],
)
def test_a_students_sampling_block_is_validated(tmp_path, sampling, message):
    raw = yaml.safe_load((CONFIGS / "sim-tiny.yaml").read_text())
    raw["sampling"] = sampling
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_preset(path)


def test_preset_without_model_section_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train: {}\n")
    with pytest.raises(ConfigError, match="no `model:` section"):
        load_preset(path)

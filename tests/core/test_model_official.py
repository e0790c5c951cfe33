"""Converter of reference (Wan-named) checkpoints: the full key set, both directions.

The key set and its mapping are the table of docs/reference.md §7.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from aimg.model.build import build_model
from aimg.model.config import CodecConfig, ModelConfig, TextConfig, TransformerConfig, load_preset
from aimg.model.official import (
    CheckpointKeyError,
    convert_checkpoint_file,
    convert_reference_state_dict,
    load_reference_checkpoint,
    reference_key_map,
    to_reference_state_dict,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIM, HEADS, LAYERS, C, TEXT, FREQ, FFN = 24, 2, 2, 4, 10, 8, 40
POOL = (4, 2, 2)
PATCH = (1, 2, 2)


def reference_shapes(
    dim: int, layers: int, channels: int, text: int, freq: int, ffn: int, pool: tuple[int, int, int]
) -> dict[str, tuple[int, ...]]:
    """The docs/reference.md §7 table, written out independently of the converter's own table."""
    shapes = {
        "patch_embedding.weight": (dim, channels, *PATCH),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (channels * math.prod(PATCH), dim),
        "head.head.bias": (channels * math.prod(PATCH),),
        "head.modulation": (1, 2, dim),
    }
    for n in range(layers):
        b = f"blocks.{n}."
        for attn in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                shapes[f"{b}{attn}.{p}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{p}.bias"] = (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[f"{b}norm3.weight"] = (dim,)
        shapes[f"{b}norm3.bias"] = (dim,)
        shapes[f"{b}ffn.0.weight"] = (ffn, dim)
        shapes[f"{b}ffn.0.bias"] = (ffn,)
        shapes[f"{b}ffn.2.weight"] = (dim, ffn)
        shapes[f"{b}ffn.2.bias"] = (dim,)
        shapes[f"{b}modulation"] = (1, 6, dim)
        shapes[f"{b}cam_encoder.2.weight"] = (dim, math.prod(pool))
        shapes[f"{b}cam_encoder.2.bias"] = (dim,)
        shapes[f"{b}projector.weight"] = (dim, dim)
        shapes[f"{b}projector.bias"] = (dim,)
    return shapes


def tiny_config() -> ModelConfig:
    return ModelConfig(
        transformer=TransformerConfig(
            num_layers=LAYERS,
            num_heads=HEADS,
            head_dim=DIM // HEADS,
            ffn_dim=FFN,
            text_dim=TEXT,
            freq_dim=FREQ,
            cam_pool=POOL,
        ),
        codec=CodecConfig(kind="wan_vae", path="unused", latent_channels=C, spatial_factor=8),
        text=TextConfig(kind="builtin", max_length=4),
        views=2,
        frames=5,
        height=32,
        width=32,
    )


@pytest.fixture()
def reference_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = reference_shapes(DIM, LAYERS, C, TEXT, FREQ, FFN, POOL)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_key_table_covers_every_reference_key(reference_state):
    assert set(reference_key_map(LAYERS)) == set(reference_state)


def test_converted_state_dict_loads_strictly_and_round_trips(reference_state):
    converted = convert_reference_state_dict(reference_state)
    model = build_model(tiny_config(), init=False)
    model.load_state_dict(converted, strict=True)
    back = to_reference_state_dict(model.state_dict())
    assert set(back) == set(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(back[key], value), key


def test_unexpected_key_is_reported(reference_state):
    reference_state["blocks.0.extra_adapter.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointKeyError, match="unexpected 1 key.*extra_adapter"):
        convert_reference_state_dict(reference_state)


def test_missing_key_is_reported(reference_state):
    del reference_state["blocks.1.projector.bias"]
    with pytest.raises(CheckpointKeyError, match="missing 1 key.*blocks.1.projector.bias"):
        convert_reference_state_dict(reference_state)


def test_checkpoint_without_camera_branch_is_rejected(reference_state):
    base = {k: v for k, v in reference_state.items() if "cam_encoder" not in k}
    with pytest.raises(CheckpointKeyError, match="missing 4 key"):
        convert_reference_state_dict(base)


def test_reference_ckpt_file_converts_into_a_checkpoint_directory(reference_state, tmp_path):
    path = tmp_path / "checkpoint.ckpt"
    torch.save(reference_state, path)
    model = load_reference_checkpoint(path, tiny_config())
    for ours, value in convert_reference_state_dict(reference_state).items():
        assert torch.equal(model.state_dict()[ours], value)
    assert torch.isfinite(model.rope.freqs_cos).all()


def test_shape_mismatch_with_preset_is_reported(reference_state, tmp_path):
    path = tmp_path / "checkpoint.ckpt"
    torch.save(reference_state, path)
    cfg = tiny_config()
    wrong = ModelConfig(
        transformer=TransformerConfig(
            num_layers=LAYERS,
            num_heads=HEADS,
            head_dim=DIM // HEADS,
            ffn_dim=FFN + 2,
            text_dim=TEXT,
            freq_dim=FREQ,
            cam_pool=POOL,
        ),
        codec=cfg.codec,
        text=cfg.text,
        views=2,
        frames=5,
        height=32,
        width=32,
    )
    with pytest.raises(CheckpointKeyError, match="ffn"):
        load_reference_checkpoint(path, wrong)


def test_convert_checkpoint_file_writes_safetensors_and_config(tmp_path):
    cfg, _, _ = load_preset(CONFIGS / "sim-tiny.yaml")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(cfg, init=False).state_dict().items()}
    ours = {k: torch.randn(s) for k, s in shapes.items()}
    torch.save(to_reference_state_dict(ours), tmp_path / "ref.ckpt")
    out = convert_checkpoint_file(tmp_path / "ref.ckpt", tmp_path / "ck", CONFIGS / "sim-tiny.yaml")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_every_official_5b_reference_key_maps_to_a_parameter_of_its_shape():
    cfg, _, _ = load_preset(CONFIGS / "official-5b.yaml")
    with torch.device("meta"):
        model = build_model(cfg, init=False)
    params = dict(model.named_parameters())
    shapes = reference_shapes(3072, 30, 48, 4096, 256, 14336, (48, 16, 16))
    assert shapes["blocks.0.cam_encoder.2.weight"] == (3072, 12288)
    mapping = reference_key_map(30)
    assert set(mapping) == set(shapes)
    assert set(mapping.values()) == set(params)
    for ref_key, shape in shapes.items():
        assert tuple(params[mapping[ref_key]].shape) == shape, ref_key

"""The converted reference weights reproduce the reference forward (dit_tiny fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aimg.model.official import convert_reference_state_dict
from aimg.model.transformer import WorldActionModel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "dit_tiny.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fixture: dict) -> WorldActionModel:
    cfg, cam = fixture["config"], fixture["cam_config"]
    model = WorldActionModel(
        patch_size=tuple(cfg["patch_size"]),
        num_attention_heads=cfg["num_heads"],
        attention_head_dim=cfg["dim"] // cfg["num_heads"],
        in_channels=cfg["in_dim"],
        out_channels=cfg["out_dim"],
        text_dim=cfg["text_dim"],
        freq_dim=cfg["freq_dim"],
        ffn_dim=cfg["ffn_dim"],
        num_layers=cfg["num_layers"],
        eps=cfg["eps"],
        cam_channels=cam["cam_latent_channels"],
        cam_pool=tuple(cam["pool_output_size"]),
    )
    model.load_state_dict(convert_reference_state_dict(fixture["state_dict"]), strict=True)
    return model.eval()


def _run(model: WorldActionModel, fx: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(fx["x"], fx["timestep"], fx["context"], fx["cam"])


def max_relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def test_converted_model_reproduces_reference_output(model, fixture):
    out = _run(model, fixture)
    assert out.shape == fixture["output"].shape
    assert max_relative_error(out, fixture["output"]) < 1e-4
    torch.testing.assert_close(out, fixture["output"], atol=1e-5, rtol=0)


def test_camera_encoder_gives_reference_vector_per_latent_frame(model, fixture):
    features = model.camera_pool(fixture["cam"])
    for n, block in enumerate(model.blocks):
        expected = fixture["intermediates"][f"cam_enc_out_{n}"]
        torch.testing.assert_close(block.cam_encoder[2](features), expected, atol=1e-6, rtol=0)


def test_reset_camera_branch_reproduces_reference_base_output(model, fixture):
    reset = WorldActionModel.from_config(model.config)
    reset.load_state_dict(model.state_dict())
    reset.reset_camera_branch()
    out = _run(reset.eval(), fixture)
    assert max_relative_error(out, fixture["output_cam_init"]) < 1e-4
    torch.testing.assert_close(out, fixture["output_cam_init"], atol=1e-5, rtol=0)

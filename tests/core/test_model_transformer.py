"""WorldActionModel: the camera branch is a no-op at init, timestep modes, shapes and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from aimg.model.build import build_model
from aimg.model.config import load_preset
from aimg.model.transformer import WorldActionModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# The Wan base dimensions, shared by our model and its plain diffusers twin.
TINY_BASE = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=10,
    freq_dim=8,
    ffn_dim=32,
    num_layers=2,
)
TINY = dict(**TINY_BASE, cam_channels=6, cam_pool=(3, 2, 2))


def inputs(batch: int = 2, frames: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, 4, 4, generator=gen)
    t = torch.tensor([700.0, 250.0][:batch])
    text = torch.randn(batch, 5, 10, generator=gen)
    cam = torch.randn(batch, frames, 6, 4, 4, generator=gen)
    return x, t, text, cam


@pytest.fixture()
def model() -> WorldActionModel:
    torch.manual_seed(0)
    model = WorldActionModel(**TINY)
    model.init_weights()
    with torch.no_grad():  # a non-zero head, so outputs depend on every block
        model.proj_out.weight.normal_(std=0.1)
    return model.eval()


def diffusers_twin(model: WorldActionModel) -> WanTransformer3DModel:
    """The plain diffusers Wan transformer holding `model`'s base weights."""
    base = WanTransformer3DModel(
        **TINY_BASE,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    ).eval()
    own = {
        k: v
        for k, v in model.state_dict().items()
        if "cam_encoder" not in k and "projector" not in k
    }
    base.load_state_dict(own, strict=True)
    return base


def test_camera_branch_is_an_exact_no_op_at_init(model):
    base = diffusers_twin(model)
    x, t, text, cam = inputs()
    with torch.no_grad():
        ours = model(x, t, text, cam)
        theirs = base(x, t, text, return_dict=False)[0]
        other_cams = model(x, t, text, torch.randn_like(cam))
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, other_cams)


def test_per_frame_timesteps_match_diffusers_per_token_timesteps(model):
    base = diffusers_twin(model)
    x, _, text, cam = inputs()
    per_frame = torch.tensor([[0.0, 900.0, 500.0, 0.0], [0.0, 10.0, 20.0, 999.0]])
    per_token = per_frame.repeat_interleave(4, dim=1)  # 2x2 tokens per latent frame
    with torch.no_grad():
        ours = model(x, per_frame, text, cam)
        theirs = base(x, per_token, text, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_trained_camera_branch_makes_output_depend_on_cameras(model):
    with torch.no_grad():
        for block in model.blocks:
            block.cam_encoder[2].weight.normal_(std=0.1)
    x, t, text, cam = inputs()
    with torch.no_grad():
        a = model(x, t, text, cam)
        b = model(x, t, text, cam.flip(1))
    assert (a - b).abs().max() > 1e-4


def test_output_has_input_shape_and_samples_are_independent(model):
    x, t, text, cam = inputs()
    with torch.no_grad():
        both = model(x, t, text, cam)
        first = model(x[:1], t[:1], text[:1], cam[:1])
    assert both.shape == x.shape
    torch.testing.assert_close(both[:1], first, atol=1e-6, rtol=0)


def test_per_token_timesteps_equal_scalar_when_all_frames_share_t(model):
    x, t, text, cam = inputs()
    with torch.no_grad():
        scalar = model(x, t, text, cam)
        per_token = model(x, t[:, None].expand(-1, x.shape[2]), text, cam)
    torch.testing.assert_close(per_token, scalar, atol=1e-6, rtol=0)


def test_per_token_timesteps_change_only_through_their_frames(model):
    x, t, text, cam = inputs()
    per_frame = t[:, None].expand(-1, x.shape[2]).clone()
    per_frame[:, 0] = 0.0
    with torch.no_grad():
        scalar = model(x, t, text, cam)
        mixed = model(x, per_frame, text, cam)
    assert (scalar - mixed).abs().max() > 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(model):
    x, t, text, cam = inputs()
    model.train()
    model(x, t, text, cam).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, t, text, cam).square().mean().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_wrong_camera_latent_shape_is_rejected(model):
    x, t, text, cam = inputs()
    with pytest.raises(ValueError, match="camera_latents must be"):
        model(x, t, text, cam[:, :3])


def test_wrong_per_token_timestep_shape_is_rejected(model):
    x, t, text, cam = inputs()
    with pytest.raises(ValueError, match="per-token timestep"):
        model(x, torch.zeros(2, 3), text, cam)


def test_unknown_timestep_mode_is_rejected():
    with pytest.raises(ValueError, match="timestep_mode"):
        WorldActionModel(**{**TINY, "timestep_mode": "per_pixel"})


def test_official_5b_has_the_reference_parameter_count_on_meta():
    cfg, _, _ = load_preset(CONFIGS / "official-5b.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 6_415_549_632
    cam = sum(
        p.numel() for n, p in model.named_parameters() if "cam_encoder" in n or "projector" in n
    )
    assert cam == 1_415_761_920


def test_save_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = WorldActionModel.from_pretrained(tmp_path).eval()
    x, t, text, cam = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text, cam), model(x, t, text, cam))


def _raw_and_derived(t: torch.Tensor | None = None, mode: str = "scalar", **derived_kwargs):
    """(raw network output, velocity of a `derived_kwargs` model with the same weights) at t."""
    torch.manual_seed(0)
    velocity_model = WorldActionModel(**TINY, timestep_mode=mode)
    derived_model = WorldActionModel(**TINY, timestep_mode=mode, **derived_kwargs)
    derived_model.load_state_dict(velocity_model.state_dict())
    x, t_default, text, cam = inputs()
    t = t_default if t is None else t
    with torch.no_grad():
        return x, t, velocity_model(x, t, text, cam), derived_model(x, t, text, cam)


def test_sample_prediction_returns_the_velocity_of_the_predicted_clean_latents():
    """With prediction='sample' the network outputs x̂0 and forward returns (x_t - x̂0) / σ."""
    x, t, raw, velocity = _raw_and_derived(prediction="sample", min_sigma=0.05)
    sigma = (t / 1000.0).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(velocity, (x - raw) / sigma)


def test_sample_prediction_clamps_sigma_for_clean_frames():
    t = torch.tensor([[0.0, 500.0, 500.0, 20.0], [0.0, 900.0, 300.0, 300.0]])
    x, t, raw, velocity = _raw_and_derived(t, "per_token", prediction="sample", min_sigma=0.1)
    sigma = (t / 1000.0).clamp(min=0.1).view(2, 1, 4, 1, 1)
    torch.testing.assert_close(velocity, (x - raw) / sigma)


def test_skip_preconditioning_mixes_noisy_input_and_network_output():
    """sigma_data > 0: x̂0 = c_skip x_t + c_out F; the velocity is derived from that x̂0."""
    x, t, raw, velocity = _raw_and_derived(prediction="sample", sigma_data=0.5)
    sigma = (t / 1000.0).view(-1, 1, 1, 1, 1)
    norm = (1 - sigma) ** 2 * 0.25 + sigma**2
    x0 = (1 - sigma) * 0.25 / norm * x + sigma * 0.5 / norm.sqrt() * raw
    torch.testing.assert_close(velocity, (x - x0) / sigma)


def test_skip_with_a_zero_network_is_the_best_linear_denoiser():
    """A zero output head (Wan's init) leaves x̂0 = c_skip x_t: at σ -> 0 that is x_t itself."""
    model = WorldActionModel(**TINY, prediction="sample", sigma_data=0.5, min_sigma=0.001)
    torch.nn.init.zeros_(model.proj_out.weight)
    torch.nn.init.zeros_(model.proj_out.bias)
    x, _, text, cam = inputs()
    t = torch.full((x.shape[0],), 1.0)  # σ = 0.001
    with torch.no_grad():
        velocity = model(x, t, text, cam)
    x0 = x - 0.001 * velocity
    c_skip = 0.999 * 0.25 / (0.999**2 * 0.25 + 0.001**2)
    torch.testing.assert_close(x0, c_skip * x, atol=1e-4, rtol=1e-4)
    assert abs(c_skip - 1.0) < 2e-3


def test_skip_needs_sample_prediction():
    with pytest.raises(ValueError, match="sigma_data must be 0"):
        WorldActionModel(**TINY, sigma_data=0.5)


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="prediction must be 'velocity' or 'sample'"):
        WorldActionModel(**TINY, prediction="epsilon")

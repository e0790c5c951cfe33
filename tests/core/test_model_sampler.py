"""Flow-matching Euler sampler: exactness on a known velocity, masks, seeds, CFG, step cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from aimg.model.codecs import PixelCodec
from aimg.model.config import SamplingConfig
from aimg.model.packing import pack_latents
from aimg.model.sampler import StepCache, decode_segments, sample
from aimg.model.schedule import sampler_sigmas, shift_sigmas
from aimg.model.transformer import WorldActionModel

SHAPE = (2, 3, 6, 4, 4)


class PointMassVelocity(nn.Module):
    """The exact flow velocity towards a single data point x*: v = (x_t - x*) / σ.

    Records the timesteps and text it was called with.
    """

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = nn.Parameter(target, requires_grad=False)
        self.config = SimpleNamespace(timestep_mode="scalar")
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, timestep, text, cams):
        self.calls.append((timestep.clone(), text.clone()))
        sigma = (timestep.float() / 1000.0).view(-1, 1, 1, 1, 1)
        return (x - self.target) / sigma


class TextShift(nn.Module):
    """Velocity = mean of the text embedding (so CFG arithmetic can be checked)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(timestep_mode="scalar")
        self.calls = 0

    def forward(self, x, timestep, text, cams):
        self.calls += 1
        return torch.ones_like(x) * text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


def data(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


MASK = torch.tensor([True, False, False, True, False, False])
TEXT = torch.ones(2, 3, 5)
CAMS = torch.zeros(2, 6, 1, 2, 2)


def test_euler_reaches_the_data_point_of_an_exact_velocity():
    target = data(1)
    clean = data(2)
    cfg = SamplingConfig(num_steps=8, shift=5.0, cfg_scale=1.0)
    out = sample(PointMassVelocity(target), clean, MASK, TEXT, CAMS, sampling=cfg, seed=3)
    torch.testing.assert_close(out.latents[:, :, ~MASK], target[:, :, ~MASK], atol=1e-5, rtol=0)


def test_masked_frames_stay_exactly_clean():
    clean = data(2)
    cfg = SamplingConfig(num_steps=5, cfg_scale=1.0)
    seen = []
    sample(
        PointMassVelocity(data(1)),
        clean,
        MASK,
        TEXT,
        CAMS,
        sampling=cfg,
        callback=lambda k, s, x: seen.append(x[:, :, MASK].clone()),
    )
    assert len(seen) == 5
    for x in seen:
        assert torch.equal(x, clean[:, :, MASK])


def test_scalar_timesteps_follow_the_shifted_grid():
    model = PointMassVelocity(data(1))
    sample(model, data(2), MASK, TEXT, CAMS, sampling=SamplingConfig(num_steps=4, cfg_scale=1.0))
    grid = shift_sigmas(torch.linspace(1, 0, 5, dtype=torch.float64)[:-1], 5.0) * 1000
    assert [float(t[0]) for t, _ in model.calls] == pytest.approx(grid.tolist(), rel=1e-6)
    assert all(t.shape == (2,) for t, _ in model.calls)


def test_per_token_timesteps_are_zero_on_clean_frames():
    model = PointMassVelocity(data(1))
    calls = []
    model.forward = lambda x, t, text, cams: calls.append(t) or torch.zeros_like(x)
    sample(
        model,
        data(2),
        MASK,
        TEXT,
        CAMS,
        sampling=SamplingConfig(num_steps=2, cfg_scale=1.0),
        per_token_timesteps=True,
    )
    assert calls[0].shape == (2, 6)
    assert (calls[0][:, MASK] == 0).all() and (calls[0][:, ~MASK] == 1000).all()


def test_explicit_sigma_grid_is_used_as_given():
    assert sampler_sigmas(50, 5.0, [1.0, 0.6, 0.2]).tolist() == [1.0, 0.6, 0.2, 0.0]


@pytest.fixture(scope="module")
def tiny_model() -> WorldActionModel:
    torch.manual_seed(0)
    model = WorldActionModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=3,
        out_channels=3,
        text_dim=5,
        freq_dim=8,
        ffn_dim=16,
        num_layers=1,
        cam_channels=1,
        cam_pool=(1, 2, 2),
    )
    model.init_weights()
    with torch.no_grad():
        model.proj_out.weight.normal_(std=0.2)
    return model.eval()


def test_same_seed_gives_identical_samples_and_another_seed_does_not(tiny_model):
    cfg = SamplingConfig(num_steps=3, cfg_scale=1.0)
    a = sample(tiny_model, data(2), MASK, TEXT, CAMS, sampling=cfg, seed=7).latents
    b = sample(tiny_model, data(2), MASK, TEXT, CAMS, sampling=cfg, seed=7).latents
    c = sample(tiny_model, data(2), MASK, TEXT, CAMS, sampling=cfg, seed=8).latents
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cfg_scale_one_skips_the_negative_branch():
    model = TextShift()
    out = sample(
        model, data(2), MASK, TEXT, CAMS, sampling=SamplingConfig(num_steps=4, cfg_scale=1.0)
    )
    assert model.calls == 4 and out.model_calls == 4


def test_cfg_combines_negative_and_positive_predictions():
    model = TextShift()
    clean = torch.zeros(SHAPE)
    cfg = SamplingConfig(num_steps=1, shift=1.0, cfg_scale=3.0)
    out = sample(model, clean, MASK, TEXT * 2.0, CAMS, negative_embeds=TEXT * 0.5, sampling=cfg)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(cfg.seed))
    v = 0.5 + 3.0 * (2.0 - 0.5)
    expected = noise - v  # one Euler step from σ = 1 to 0
    torch.testing.assert_close(out.latents[:, :, ~MASK], expected[:, :, ~MASK])
    assert model.calls == 2


def test_cfg_without_negative_embeddings_is_an_error():
    with pytest.raises(ValueError, match="negative_embeds"):
        sample(TextShift(), data(2), MASK, TEXT, CAMS, sampling=SamplingConfig(cfg_scale=5.0))


def test_step_cache_skips_four_steps_when_predictions_agree():
    model = TextShift()  # constant velocity: cosine similarity 1
    cfg = SamplingConfig(num_steps=12, cfg_scale=1.0, step_cache=True)
    out = sample(model, data(2), MASK, TEXT, CAMS, sampling=cfg)
    R, S = True, False
    assert out.computed_steps == [R, R, S, S, S, S, R, S, S, S, S, R]
    assert model.calls == 4


def test_step_cache_thresholds_follow_the_reference_rule():
    def cache_with(sim: float) -> StepCache:
        cache = StepCache()
        a = torch.tensor([[1.0, 0.0]])
        b = torch.tensor([[sim, (1 - sim**2) ** 0.5]])
        cache.update(a)
        cache.update(b)
        return cache

    high = cache_with(0.96)
    assert [high.should_run() for _ in range(5)] == [False, False, False, False, True]
    mid = cache_with(0.94)
    assert [mid.should_run() for _ in range(3)] == [False, False, True]
    assert cache_with(0.92).should_run()
    assert StepCache().should_run()


def test_decode_segments_returns_only_the_requested_modality():
    codec = PixelCodec(2, 4)
    video = torch.rand(1, 2, 3, 5, 4, 4) * 2 - 1
    action = torch.rand(1, 2, 3, 5, 4, 4) * 2 - 1
    enc = lambda x: torch.stack([codec.encode(x[:, v]) for v in range(2)], dim=1)  # noqa: E731
    packed = pack_latents(enc(video), enc(action))
    assert torch.equal(decode_segments(codec, packed, 2, True, "action"), action)
    assert torch.equal(decode_segments(codec, packed, 2, True, "video"), video)
    with pytest.raises(ValueError, match="no action segments"):
        decode_segments(codec, pack_latents(enc(video), None), 2, False, "action")


def test_inpainted_frames_are_fed_at_the_current_noise_level_and_end_known():
    """Known generated frames enter each step as known noised to σ (the model sees them as any
    frame at that σ) and the sample ends with them exactly."""
    from aimg.model.sampler import flow_sample

    known = data(5)
    frames = torch.tensor([False, True, False, False, False, True])
    clean = data(2)
    seen = []

    def denoise(x, t, text, cams):
        seen.append((x.clone(), float(t[0]) / 1000.0))
        return torch.zeros_like(x)

    cfg = SamplingConfig(num_steps=3, shift=1.0, cfg_scale=1.0)
    out = flow_sample(
        denoise, clean, MASK, TEXT, CAMS, sampling=cfg, seed=4, inpaint=(known, frames)
    )
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))
    for x, sigma in seen:
        expected = (1 - sigma) * known + sigma * noise
        torch.testing.assert_close(x[:, :, frames], expected[:, :, frames])
        assert torch.equal(x[:, :, MASK], clean[:, :, MASK])  # conditioning stays clean
    assert torch.equal(out.latents[:, :, frames], known[:, :, frames])

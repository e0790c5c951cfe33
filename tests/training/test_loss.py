"""The flow-matching objective: timesteps, weights, noising and the masked loss.

The reference's objective is described in docs/reference.md §5.
"""

from __future__ import annotations

import pytest
import torch

from aimg.training.loss import TimestepSampler, masked_flow_loss, noised_latents, seeded_noise


def test_training_grid_is_the_shifted_1000_step_grid():
    sampler = TimestepSampler(shift=5.0)
    sigma = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    torch.testing.assert_close(sampler.sigmas, 5 * sigma / (1 + 4 * sigma))
    torch.testing.assert_close(sampler.timesteps, 1000 * sampler.sigmas)


def test_reference_weights_have_mean_one_vanish_at_t1000_and_peak_near_500():
    w = TimestepSampler(shift=5.0).weights
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0].item() == 0.0  # t = 1000
    peak = TimestepSampler(shift=5.0).timesteps[w.argmax()].item()
    assert abs(peak - 500) < 5
    assert w.max().item() == pytest.approx(2.08, abs=0.02)


def test_uniform_weighting_gives_weight_one():
    draw = TimestepSampler(5.0, weighting="uniform").draw(torch.arange(4), batch_seed=1)
    assert torch.equal(draw["weight"], torch.ones(4))


def test_sample_weighting_turns_the_velocity_loss_into_a_clean_sample_loss():
    """v - v̂ = (x̂0 - x0) / σ, so weights ∝ σ² weigh clean-sample errors alike at every σ."""
    sampler = TimestepSampler(shift=3.0, weighting="sample")
    ratio = sampler.weights / sampler.sigmas.double() ** 2
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    assert sampler.weights.mean().item() == pytest.approx(1.0)
    assert sampler.weights[0] > 1.0  # σ = 1 counts (the reference weight there is 0)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="'reference', 'sample' or 'uniform'"):
        TimestepSampler(shift=3.0, weighting="snr")


def test_per_batch_mode_draws_one_timestep_for_all_samples():
    draw = TimestepSampler(5.0, mode="per_batch").draw(torch.arange(6), batch_seed=11)
    assert torch.all(draw["timestep"] == draw["timestep"][0])


def test_per_sample_draws_depend_only_on_each_sample_seed():
    sampler = TimestepSampler(5.0, mode="per_sample")
    whole = sampler.draw(torch.tensor([3, 4, 5, 6]), batch_seed=0)
    half = sampler.draw(torch.tensor([5, 6]), batch_seed=99)
    torch.testing.assert_close(whole["sigma"][2:], half["sigma"])
    assert len(set(whole["timestep"].tolist())) > 1


def test_noise_of_a_sample_does_not_depend_on_its_batch():
    a = seeded_noise((2, 3), torch.tensor([10, 20]))
    b = seeded_noise((2, 3), torch.tensor([20]))
    assert torch.equal(a[1], b[0])


def test_noised_latents_keep_conditioning_frames_clean():
    x0, noise = torch.randn(2, 4, 6, 2, 2), torch.randn(2, 4, 6, 2, 2)
    clean = torch.tensor([True, False, False, True, False, False])
    sigma = torch.tensor([0.3, 0.8])
    xt, target = noised_latents(x0, noise, sigma, clean)
    assert torch.equal(xt[:, :, clean], x0[:, :, clean])
    expected = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(xt[:, :, ~clean], expected[:, :, ~clean])
    torch.testing.assert_close(target, noise - x0)


def test_loss_ignores_conditioning_frames_and_averages_over_valid_ones():
    target = torch.zeros(2, 3, 4, 2, 2)
    pred = torch.ones(2, 3, 4, 2, 2)
    clean = torch.tensor([True, False, False, False])
    pred[:, :, 0] = 100.0  # errors on clean frames must not count
    loss = masked_flow_loss(pred, target, clean, torch.ones(2))
    assert loss.item() == pytest.approx(1.0)


def test_loss_weights_each_sample_by_its_timestep_weight():
    target = torch.zeros(2, 1, 2, 1, 1)
    pred = torch.stack([torch.full((1, 2, 1, 1), 1.0), torch.full((1, 2, 1, 1), 2.0)])
    clean = torch.zeros(2, 2, dtype=torch.bool)
    loss = masked_flow_loss(pred, target, clean, torch.tensor([2.0, 0.5]))
    assert loss.item() == pytest.approx((2.0 * 1.0 + 0.5 * 4.0) / 2)


def test_all_clean_sample_contributes_zero():
    clean = torch.ones(1, 3, dtype=torch.bool)
    loss = masked_flow_loss(
        torch.ones(1, 2, 3, 1, 1), torch.zeros(1, 2, 3, 1, 1), clean, torch.ones(1)
    )
    assert loss.item() == 0.0


def test_frame_weights_shift_the_balance_between_latent_frames():
    """Frame 1 errs by 1, frame 2 by 3; weighting frame 2 by 3 moves the mean towards 9."""
    target = torch.zeros(1, 1, 3, 1, 1)
    pred = torch.tensor([0.0, 1.0, 3.0]).view(1, 1, 3, 1, 1)
    clean = torch.tensor([True, False, False])
    frame_weight = torch.tensor([5.0, 1.0, 3.0])  # a clean frame stays out whatever its weight
    loss = masked_flow_loss(pred, target, clean, torch.ones(1), frame_weight)
    assert loss.item() == pytest.approx((1.0 * 1.0 + 3.0 * 9.0) / 4.0)

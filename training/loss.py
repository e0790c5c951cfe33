"""The flow-matching objective: noising, timestep draws, weights, masked loss.

The reference's objective is described in docs/reference.md §5.

x_t = (1 - σ) x0 + σ ε, target v = ε - x0; conditioning (clean) latent frames are reset to x0
after noising and excluded from the loss. σ comes from the shifted 1000-step training grid and
each sample's loss is multiplied by the reference weight w(t).
"""

from __future__ import annotations

from typing import Literal

import torch

from aimg.model.schedule import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    training_sigmas,
    training_weights,
    velocity_target,
)


class TimestepSampler:
    """Draws training σ, model timesteps and loss weights from the shifted grid.

    Draws are reproducible from integer seeds, so a batch split over ranks sees exactly the
    timesteps it would see in one process.
    """

    def __init__(
        self,
        shift: float,
        mode: Literal["per_batch", "per_sample"] = "per_sample",
        weighting: Literal["reference", "sample", "uniform"] = "reference",
    ) -> None:
        self.mode = mode
        self.sigmas = training_sigmas(shift)
        self.timesteps = self.sigmas * NUM_TRAIN_TIMESTEPS
        if weighting == "reference":
            self.weights = training_weights(self.timesteps)
        elif weighting == "sample":
            # velocity error x σ = clean-sample error: every noise level counts alike in x0
            # space, so the high-noise levels, where only the conditioning says where things
            # go, are not drowned out (the reference weight is 0 at σ = 1).
            squared = self.sigmas.double() ** 2
            self.weights = squared / squared.mean()
        elif weighting == "uniform":
            self.weights = torch.ones_like(self.timesteps)
        else:
            raise ValueError(
                f"loss weighting must be 'reference', 'sample' or 'uniform', got {weighting!r}"
            )

    def draw(self, sample_seeds: torch.Tensor, batch_seed: int) -> dict[str, torch.Tensor]:
        """σ [B], timestep [B] and weight [B] (float32) for samples with these seeds."""
        if self.mode == "per_batch":
            gen = torch.Generator().manual_seed(int(batch_seed))
            k = torch.randint(len(self.sigmas), (1,), generator=gen).expand(len(sample_seeds))
        else:
            k = torch.stack(
                [
                    torch.randint(
                        len(self.sigmas), (1,), generator=torch.Generator().manual_seed(int(s))
                    )[0]
                    for s in sample_seeds.tolist()
                ]
            )
        return {
            "sigma": self.sigmas[k].float(),
            "timestep": self.timesteps[k].float(),
            "weight": self.weights[k].float(),
        }


def seeded_noise(shape: tuple[int, ...], sample_seeds: torch.Tensor) -> torch.Tensor:
    """Standard normal noise [B, *shape], sample b drawn from its own seed (rank-independent)."""
    return torch.stack(
        [
            torch.randn(shape, generator=torch.Generator().manual_seed(int(s) + 1))
            for s in sample_seeds.tolist()
        ]
    )


def noised_latents(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target v) for x0, noise [B, C, F, h, w], sigma [B], clean bool [B, F] or [F].

    Conditioning frames of x_t are reset to x0 (docs/reference.md §5).
    """
    s = sigma.to(x0.dtype).view(-1, 1, 1, 1, 1)
    xt = torch.where(_frame_mask(clean, x0), x0, add_noise(x0, noise, s))
    return xt, velocity_target(x0, noise)


def masked_flow_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    clean: torch.Tensor,
    weight: torch.Tensor,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of w(t_b) · Σ((v̂ - v)² · valid) / Σ(valid) per sample.

    pred, target: [B, C, F, h, w]; clean: bool [B, F] or [F]; weight: [B]. valid counts
    elements of non-conditioning frames (clamped to >= 1 so an all-clean sample gives 0).
    `frame_weight` [F] (optional) scales valid per latent frame, e.g. to stress action
    segments; the sum is still divided by the weighted count, so only the balance changes.
    """
    valid = (~_frame_mask(clean, pred)).float()
    if frame_weight is not None:
        valid = valid * frame_weight.to(valid.device, torch.float32).view(1, 1, -1, 1, 1)
    valid = valid.expand_as(pred)
    err = (pred.float() - target.float()) ** 2 * valid
    per_sample = err.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    return (per_sample * weight.to(per_sample.dtype)).mean()


def _frame_mask(clean: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    clean = clean.to(like.device, torch.bool)
    if clean.dim() == 1:
        clean = clean.unsqueeze(0)
    return clean.view(clean.shape[0], 1, clean.shape[1], 1, 1)

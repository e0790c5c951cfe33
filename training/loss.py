"""The flow-matching objective of spec §5: noising, timestep draws, weights, masked loss.

x_t = (1 - σ) x0 + σ ε, target v = ε - x0; conditioning (clean) latent frames are reset to x0
after noising and excluded from the loss. σ comes from the shifted 1000-step training grid and
each sample's loss is multiplied by the reference weight w(t).
"""

from __future__ import annotations

from typing import Literal

import torch

GRID_STEPS = 1000


def training_grid(shift: float, steps: int = GRID_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted training sigmas and timesteps, both float64 [steps], from σ=1 down.

    σ_k = linspace(1, 0, steps + 1)[:-1], σ' = shift σ / (1 + (shift - 1) σ), t = 1000 σ'.
    """
    from aimg.model.schedule import shift_sigmas

    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    shifted = torch.as_tensor(shift_sigmas(sigmas, shift), dtype=torch.float64)
    return shifted, shifted * 1000.0


def reference_weights(timesteps: torch.Tensor, steps: int = GRID_STEPS) -> torch.Tensor:
    """w(t) = y(t) - min y, normalised to mean 1 over the grid; y = exp(-2((t - 500)/1000)^2)."""
    y = torch.exp(-2.0 * ((timesteps - steps / 2) / steps) ** 2)
    y = y - y.min()
    return y * (len(timesteps) / y.sum())


class TimestepSampler:
    """Draws training σ, model timesteps and loss weights from the shifted grid.

    Draws are reproducible from integer seeds, so a batch split over ranks sees exactly the
    timesteps it would see in one process.
    """

    def __init__(
        self,
        shift: float,
        mode: Literal["per_batch", "per_sample"] = "per_sample",
        weighting: Literal["reference", "uniform"] = "reference",
    ) -> None:
        self.mode = mode
        self.sigmas, self.timesteps = training_grid(shift)
        if weighting == "reference":
            self.weights = reference_weights(self.timesteps)
        else:
            self.weights = torch.ones_like(self.timesteps)

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


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """Noised latents x_t [B, C, F, h, w] with clean frames reset to x0.

    x0, noise: [B, C, F, h, w]; sigma: [B]; clean: bool [B, F] or [F] (True = conditioning).
    """
    s = sigma.to(x0.dtype).view(-1, 1, 1, 1, 1)
    xt = (1.0 - s) * x0 + s * noise
    keep = _frame_mask(clean, x0)
    return torch.where(keep, x0, xt)


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target v = ε - x0."""
    return noise - x0


def masked_flow_loss(
    pred: torch.Tensor, target: torch.Tensor, clean: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of w(t_b) · Σ((v̂ - v)² · valid) / Σ(valid) per sample.

    pred, target: [B, C, F, h, w]; clean: bool [B, F] or [F]; weight: [B]. valid counts
    elements of non-conditioning frames (clamped to >= 1 so an all-clean sample gives 0).
    """
    valid = (~_frame_mask(clean, pred)).to(pred.dtype).expand_as(pred)
    err = (pred.float() - target.float()) ** 2 * valid
    per_sample = err.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    return (per_sample * weight.to(per_sample.dtype)).mean()


def _frame_mask(clean: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    clean = clean.to(like.device, torch.bool)
    if clean.dim() == 1:
        clean = clean.unsqueeze(0)
    return clean.view(clean.shape[0], 1, clean.shape[1], 1, 1)

"""Flow-matching noise schedules: x_t = (1 - σ) x0 + σ ε, timestep = 1000 σ.

The reference's training and sampling grids are described in docs/reference.md §5 and §6.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = shift·σ / (1 + (shift - 1)·σ): more steps at high noise for shift > 1."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sampler_sigmas(
    num_steps: int, shift: float, sigmas: Sequence[float] | None = None
) -> torch.Tensor:
    """Sampler grid [N + 1] float64, from σ_0 down to a final 0.

    Default: shifted linspace(1, 0, N + 1)[:-1] (the reference scheduler). An explicit
    `sigmas` list (a distilled student's own grid) is used as given, then 0 is appended.
    """
    if sigmas is not None:
        grid = torch.tensor(list(sigmas), dtype=torch.float64)
    else:
        if num_steps <= 0:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        uniform = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
        grid = shift_sigmas(uniform, shift)
    return torch.cat([grid, grid.new_zeros(1)])


def window_indices(teacher_steps: int, student_steps: int) -> list[int]:
    """Indices of a student's K + 1 grid points in a teacher's N + 1 (both ending at σ = 0).

    round(linspace(0, N, K + 1)): evenly many teacher steps per student window (N / K, or its
    two neighbouring integers), so the student grid is a subset of the teacher's and keeps its
    shape (the shifted grid's density at high σ). Progressive halving (N = 2K) takes every
    other point.
    """
    if not 0 < student_steps <= teacher_steps:
        raise ValueError(
            f"a student of {student_steps} steps needs 1 <= K <= the teacher's {teacher_steps}"
        )
    points = torch.linspace(0, teacher_steps, student_steps + 1, dtype=torch.float64)
    return [int(i) for i in torch.round(points).tolist()]


def training_sigmas(shift: float, num: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Training grid [num] float64: shifted linspace(1, 0, num + 1)[:-1] (docs/reference.md §5)."""
    return shift_sigmas(torch.linspace(1.0, 0.0, num + 1, dtype=torch.float64)[:-1], shift)


def training_weights(timesteps: torch.Tensor) -> torch.Tensor:
    """Loss weight w(t) on a timestep grid: y = exp(-2((t-500)/1000)^2), y - min y, mean 1."""
    y = torch.exp(-2.0 * ((timesteps - 500.0) / 1000.0) ** 2)
    y = y - y.min()
    return y / y.mean()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - σ) x0 + σ ε; sigma broadcastable to x0 (e.g. [B, 1, 1, 1, 1])."""
    return (1.0 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target v = ε - x0."""
    return noise - x0

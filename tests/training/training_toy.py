"""A tiny regression problem that exercises the trainer without the world action model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aimg.training.config import TrainConfig


class ToyDataset(torch.utils.data.Dataset):
    """16 fixed inputs [8] with targets from a fixed linear map plus seed-dependent noise."""

    def __init__(self, size: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 8, generator=gen)
        self.w = torch.randn(8, 4, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        noise = np.random.default_rng(seed).normal(size=4).astype(np.float32) * 0.01
        return {"x": self.x[index], "y": self.x[index] @ self.w + torch.from_numpy(noise)}


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](torch.tanh(self.blocks[0](x)))


def toy_objective(model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
    loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
    return loss, {}


def toy_config(run_dir, **overrides) -> TrainConfig:
    values = dict(
        run_dir=run_dir,
        seed=3,
        max_steps=6,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=3,
        keep_checkpoints=2,
        log_every=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def make_toy_model(seed: int = 0) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel()

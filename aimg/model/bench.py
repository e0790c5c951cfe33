"""Model benchmark: training step (forward + backward + AdamW) and inference forward time.

`python -m aimg.model.bench --preset configs/sim-tiny.yaml --batch 8` prints one JSON object.
Inputs are random tensors of the preset's packed joint layout, so no data is needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from aimg.model.build import build_model
from aimg.model.config import load_preset


def _inputs(cfg, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    frames = cfg.latent_frames * cfg.views * 2
    gen = torch.Generator().manual_seed(0)
    shape = (batch, cfg.latent_channels, frames, cfg.latent_height, cfg.latent_width)
    x = torch.randn(shape, generator=gen)
    if cfg.transformer.timestep_mode == "per_token":
        t = torch.rand(batch, frames, generator=gen) * 1000
    else:
        t = torch.rand(batch, generator=gen) * 1000
    text = torch.randn(batch, cfg.text.max_length, cfg.transformer.text_dim, generator=gen)
    cams = torch.randn(
        batch, frames, cfg.cam_channels, cfg.latent_height, cfg.latent_width, generator=gen
    )
    return tuple(a.to(device) for a in (x, t, text, cams))


def run_model_benchmark(
    preset: str | Path,
    batch: int = 8,
    repeats: int = 5,
    threads: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Median seconds per training step and per inference forward for a preset."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(preset, batch, repeats, device)
    finally:
        torch.set_num_threads(previous)


def _run(preset: str | Path, batch: int, repeats: int, device: str) -> dict[str, Any]:
    cfg, _, _ = load_preset(preset)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    x, t, text, cams = _inputs(cfg, batch, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        loss = (model(x, t, text, cams) - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad():
            model(x, t, text, cams)

    results = {}
    for name, fn in (("train_step_s", train_step), ("forward_s", forward)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    return {
        "preset": cfg.name,
        "batch": batch,
        "tokens_per_sample": cfg.num_tokens(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "repeats": repeats,
        **results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="configs/sim-tiny.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = run_model_benchmark(args.preset, args.batch, args.repeats, args.threads, args.device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

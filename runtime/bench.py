"""`aimg bench policy`: plan latency per component and backend, measured in one run.

Backends are timed alternately on the same observation (round-robin repeats, so a machine that
gets busier halfway slows all of them alike); per component the median over repeats: text,
camera latents (cached after the first plan), encoding, each denoiser call, decoding, total.
With `--official-5b` on a GPU: one denoiser evaluation of the reference architecture at its
real shapes (2 views, 41 frames, 512x512, 11,264 tokens) with random bf16 weights, to set
against the reference's 49.1 s for 100 evaluations on one H100.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from aimg.observation import synthetic_observation

REFERENCE_H100_S_PER_EVAL = 49.1 / 100  # paper Table 7: 50 steps with CFG on one H100


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def run_policy_benchmark(
    checkpoint: Path,
    artifact: Path | None,
    backends: list[str],
    repeats: int = 5,
    threads: int | None = None,
    device: str = "cpu",
    instruction: str = "reach the red cube",
) -> dict[str, Any]:
    """Median plan latency per component for each backend (see the module docstring)."""
    from aimg.runtime.backends import load

    threads = threads or torch.get_num_threads()
    opened = {}
    for name in backends:
        path = checkpoint if name == "torch" else artifact
        if path is None:
            raise ValueError(
                f"backend {name!r} runs an artifact: export one with `aimg export onnx "
                f"{checkpoint} --out DIR` and pass --artifact DIR"
            )
        opened[name] = load(path, name, device=device, threads=threads, checkpoint=checkpoint)
    first = next(iter(opened.values()))
    obs = synthetic_observation(first.spec)
    for backend in opened.values():  # warm-up: camera latents, text, allocator, kernels
        backend.plan(obs, instruction, seed=0)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in opened}
    for r in range(repeats):
        for name, backend in opened.items():
            samples[name].append(backend.plan(obs, instruction, seed=r).timings)
    results = {}
    for name, runs in samples.items():
        steps = [s for run in runs for s in run["steps"]]
        results[name] = {
            **opened[name].describe(),
            "denoiser_calls": len(runs[0]["steps"]),
            "total_s": _median([run["total"] for run in runs]),
            "step_s": _median(steps),
            "steps_s": _median([sum(run["steps"]) for run in runs]),
            "encode_s": _median([run["encode"] for run in runs]),
            "decode_s": _median([run["decode"] for run in runs]),
            "cameras_cached_s": _median([run["cameras"] for run in runs]),
            "text_cached_s": _median([run["text"] for run in runs]),
        }
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "artifact": str(artifact) if artifact else None,
        "repeats": repeats,
        "threads": threads,
        "machine": _machine(),
        "backends": results,
    }
    if "torch" in results and len(results) > 1:
        base = results["torch"]["total_s"]
        out["speedup_vs_torch"] = {
            name: base / r["total_s"] for name, r in results.items() if name != "torch"
        }
    return out


def official_step_benchmark(preset: Path, repeats: int = 5, batch: int = 1) -> dict[str, Any]:
    """One bf16 denoiser evaluation of the reference architecture at its real shapes (GPU)."""
    from aimg.model.build import build_model
    from aimg.model.config import load_preset

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU: the 6.4B-parameter step at real shapes needs one"}
    cfg, _, _ = load_preset(preset)
    with torch.device("cuda"):
        model = build_model(cfg, init=False).to(torch.bfloat16).eval()
    model.rebuild_rope("cuda")
    frames = 2 * cfg.views * cfg.latent_frames
    h, w = cfg.latent_height, cfg.latent_width
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device="cuda").to(torch.bfloat16)

    inputs = (
        randn(batch, cfg.latent_channels, frames, h, w),
        torch.full((batch,), 500.0, device="cuda"),
        randn(batch, cfg.text.max_length, cfg.transformer.text_dim),
        randn(batch, frames, cfg.cam_channels, h, w),
    )
    times = []
    with torch.no_grad():
        for r in range(repeats + 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(*inputs)
            torch.cuda.synchronize()
            if r >= 2:
                times.append(time.perf_counter() - t0)
    step = _median(times)
    return {
        "preset": str(preset),
        "gpu": torch.cuda.get_device_name(),
        "dtype": "bfloat16",
        "batch": batch,
        "tokens": cfg.num_tokens(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s": step,
        "hundred_evaluations_s": 100 * step / batch,
        "reference_hundred_evaluations_h100_s": 49.1,
        "memory_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def _machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }

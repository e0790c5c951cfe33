"""Assemble and run one training job from a preset: what `aimg train` does on every rank."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from aimg.config import to_dict
from aimg.training import checkpointing as ckpt
from aimg.training.config import TrainingPreset
from aimg.training.dataset import EpisodeClipDataset, find_episodes, frame_rate
from aimg.training.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from aimg.training.latent_cache import LatentCache
from aimg.training.objective import WorldActionObjective, codec_signature
from aimg.training.trainer import Trainer

PRESET_FILE = "preset.yaml"


class RunError(ValueError):
    """The run cannot start as asked; the message says what to do."""


def override(
    preset: TrainingPreset,
    run_dir: Path | None = None,
    max_steps: int | None = None,
    data: list[Path] | None = None,
    device: str | None = None,
    cpu_threads: int | None = None,
) -> TrainingPreset:
    """The preset with command-line overrides applied (validated like the file)."""
    train, data_cfg = preset.train, preset.data
    changes: dict[str, Any] = {}
    if run_dir is not None:
        changes["run_dir"] = Path(run_dir)
    if max_steps is not None:
        changes["max_steps"] = max_steps
    if device is not None:
        if device not in ("auto", "cpu", "cuda"):
            raise RunError(f"--device must be auto, cpu or cuda, got {device!r}")
        changes["device"] = device
    if cpu_threads is not None:
        if cpu_threads < 1:
            raise RunError(f"--cpu-threads must be at least 1, got {cpu_threads}")
        changes["cpu_threads"] = cpu_threads
    if changes:
        train = dataclasses.replace(train, **changes)
    if data:
        data_cfg = dataclasses.replace(data_cfg, roots=[Path(p) for p in data])
    return dataclasses.replace(preset, train=train, data=data_cfg)


def preset_dict(preset: TrainingPreset) -> dict[str, Any]:
    """The resolved preset (all four sections) as plain data."""
    return {
        "model": to_dict(preset.model),
        "sampling": to_dict(preset.sampling),
        "data": to_dict(preset.data),
        "train": to_dict(preset.train),
    }


def model_saver(preset: TrainingPreset, fps: float | None = None) -> ckpt.ModelSaver:
    """Writes a step directory's model in the `aimg.model.checkpoint` format.

    `extra` holds the data and train sections and, when the recording rate `fps` is known,
    `action_dt_s`: seconds between consecutive frames of a generated segment (stride / fps),
    which a policy needs to time its trajectory.
    """
    sections = preset_dict(preset)
    extra: dict[str, Any] = {"data": sections["data"], "train": sections["train"]}
    if fps is not None:
        extra.update(data_fps=fps, action_dt_s=preset.data.stride / fps)
    return checkpoint_saver(preset.model, preset.sampling, extra)


def checkpoint_saver(model_cfg: Any, sampling: Any, extra: dict[str, Any]) -> ckpt.ModelSaver:
    """A `ModelSaver` writing `model_cfg`'s weights with `sampling` and `extra` in config.json.

    The full state dict is assigned into a weightless (meta) model, so FSDP shards gathered on
    rank 0 are saved without a second copy.
    """
    from aimg.model.build import build_model
    from aimg.model.checkpoint import save_checkpoint

    def save(directory: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        with torch.device("meta"):
            shell = build_model(model_cfg, init=False)
        shell.load_state_dict(state, strict=True, assign=True)
        save_checkpoint(directory, shell, model_cfg, sampling, extra=extra)

    return save


def init_weights(model: torch.nn.Module, mcfg: Any, source: Path) -> None:
    """Copy a checkpoint's weights into `model`; the architecture must be the same (its
    `model:` section, the name aside), so a mismatch is named instead of half-loading."""
    import dataclasses

    from aimg.model.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(source)
    except (CheckpointError, OSError) as exc:
        raise RunError(f"train.init_from {source}: {exc}") from exc
    mine = dataclasses.replace(mcfg, name="")
    theirs = dataclasses.replace(loaded.model_config, name="")
    if mine != theirs:
        diff = [
            f.name
            for f in dataclasses.fields(mine)
            if getattr(mine, f.name) != getattr(theirs, f.name)
        ]
        raise RunError(
            f"train.init_from {source}: its model differs from the preset's in {diff}; start "
            "from a checkpoint of the same architecture"
        )
    model.load_state_dict(loaded.model.state_dict())


def build_trainer(preset: TrainingPreset, ctx: DistContext, progress: bool = True) -> Trainer:
    """Dataset, model, codec, text encoder and objective for a preset, wired into a Trainer."""
    from aimg.model.build import build_latent_codec, build_model, build_text_encoder

    mcfg, dcfg, tcfg = preset.model, preset.data, preset.train
    episodes = find_episodes(dcfg.roots)
    dataset = EpisodeClipDataset(
        episodes, dcfg, mcfg.frames, mcfg.height, mcfg.width, mcfg.blob_sigma
    )
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank (FSDP does not sync)
    model = build_model(mcfg)
    if tcfg.init_from is not None:
        init_weights(model, mcfg, tcfg.init_from)
    codec = build_latent_codec(mcfg).to(ctx.device)
    text = build_text_encoder(mcfg)
    if hasattr(text, "to"):
        text = text.to(ctx.device)
    cache = None
    if dcfg.latent_cache is not None:
        # the crop and the blob width decide the pixels as much as the codec does
        signature = f"{codec_signature(mcfg)}|crop={dcfg.crop}|blob={mcfg.blob_sigma}"
        cache = LatentCache(dcfg.latent_cache, signature)
    objective = WorldActionObjective(mcfg, dcfg, tcfg, codec, text, ctx.device, cache)
    return Trainer(
        model,
        objective,
        dataset,
        tcfg,
        ctx,
        num_workers=dcfg.num_workers,
        save_model=model_saver(preset, frame_rate(episodes)),
        progress=progress,
    )


def run_training(preset: TrainingPreset, resume: bool, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a preset in this process; returns a summary (rank 0's view)."""
    return run_job(
        preset.train.run_dir,
        preset.train.device,
        lambda ctx: build_trainer(preset, ctx, progress),
        {PRESET_FILE: yaml.safe_dump(preset_dict(preset), sort_keys=False)},
        resume,
        "continue that run, or choose a new --run-dir",
    )


def run_job(
    run_dir: Path,
    device: str,
    build: Callable[[Any], Any],
    files: dict[str, str],
    resume: bool,
    advice: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run skeleton shared by `aimg train` and `aimg distill`: refuse to overwrite a run
    unless resuming, set up the process group, build the trainer, resume, write the run's
    config `files` (rank 0), fit, leave together; returns the summary (with `extra`)."""
    checkpoints = run_dir / "checkpoints"
    if not resume and ckpt.latest_checkpoint(checkpoints) is not None:
        raise RunError(f"{run_dir} already holds checkpoints: pass --resume to {advice}")
    ctx = init_distributed(device)
    try:
        trainer = build(ctx)
        if resume:
            trainer.resume_latest()
        resumed_from = trainer.step
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (run_dir / name).write_text(text)
        metrics = trainer.fit()
        # Leave together: a rank that tears down gloo while another still finishes its last
        # checkpoint collective aborted at exit on a loaded machine ("terminate called ...").
        barrier(ctx)
        latest = ckpt.latest_checkpoint(checkpoints)
        return {
            "rank": ctx.rank,
            "run_dir": str(run_dir),
            **(extra or {}),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "start_step": resumed_from,
            "step": trainer.step,
            "checkpoint": str(latest) if latest else None,
            **{k: round(v, 6) for k, v in metrics.items()},
        }
    finally:
        shutdown_distributed()


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)

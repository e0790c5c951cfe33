"""`aimg train` and `aimg eval`: flow-matching training and open-loop evaluation.

`aimg train` runs in one process or under torchrun (`torchrun --nproc_per_node N -m aimg
train ...`); every rank runs the same command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from aimg.config import ConfigError


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def train(
    config: Path = typer.Option(
        ..., "--config", "-c", help="Preset YAML with model, sampling, data and train sections."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run from its latest checkpoint, bit-exactly."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (checkpoints, TensorBoard); overrides train.run_dir."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Train until this step; overrides train.max_steps."
    ),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Episode directory (repeatable); replaces data.roots."
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu or cuda; overrides train.device."
    ),
    cpu_threads: int | None = typer.Option(
        None,
        "--cpu-threads",
        min=1,
        help="torch + numba threads per process; overrides train.cpu_threads (keep 1 on a busy "
        "machine, use the free cores on a quiet one).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm bar on rank 0."),
) -> None:
    """Train a world action model with masked flow matching.

    The model learns to denoise the video and action latents that are not given
    (given: the current frames and action images, or whole segments), as the reference trains.

    One process:   aimg train --config configs/sim-tiny.yaml
    N processes:   torchrun --standalone --nproc_per_node N -m aimg train --config ...
    (DDP on CPU, FSDP2 per transformer block on GPUs; train.batch_size is per process.)
    Checkpoints:   <run-dir>/checkpoints/step_NNNNNN (the last train.keep_checkpoints)
    Logs:          <run-dir>/tensorboard, <run-dir>/metrics.jsonl
    SIGINT/SIGTERM save a checkpoint and stop; --resume continues it exactly.
    Prints a JSON summary when done.
    """
    from aimg.training.checkpointing import CheckpointError
    from aimg.training.config import load_training_preset
    from aimg.training.dataset import DatasetError
    from aimg.training.run import RunError, override, run_training, summary_json

    try:
        preset = override(
            load_training_preset(config), run_dir, max_steps, data, device, cpu_threads
        )
        summary = run_training(preset, resume=resume, progress=progress)
    except (ConfigError, DatasetError, RunError, CheckpointError) as exc:
        _fail(str(exc))
        return
    if summary.pop("rank") == 0:
        typer.echo(summary_json(summary))


def evaluate(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="A step directory, or a run directory (its latest checkpoint)."
    ),
    data: list[Path] = typer.Option(
        ..., "--data", help="Directory of held-out episodes (repeatable)."
    ),
    episodes: int = typer.Option(50, "--episodes", min=1, help="How many start states to try."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write report.json and contact sheets (default: <run>/eval/<step>).",
    ),
    threshold: float = typer.Option(
        0.03, "--threshold", help="Success radius in metres (final position vs target)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sheets: int = typer.Option(8, "--sheets", min=0, help="Contact sheets to write (PNG)."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampling steps (default: the checkpoint's sampling block)."
    ),
    cfg: float | None = typer.Option(
        None, "--cfg", help="Classifier-free guidance scale (default: the checkpoint's)."
    ),
    samples: int = typer.Option(
        1,
        "--samples",
        min=1,
        help="Plans drawn per start state; the consensus (medoid) plan is scored.",
    ),
    denoise: bool = typer.Option(
        False,
        "--denoise",
        help="Instead of sampling: clean-sample error of true clips noised at fixed σ, per "
        "modality, against a flat image (does the model know where things go at σ = 1?).",
    ),
) -> None:
    """Open-loop evaluation: sample action segments from start states, decode, score.

    Per held-out episode: frame 0 of two views + the current-pose action image
    -> sampled action video -> aimg.codec.decode -> decoded trajectory.
    Success: final decoded position within --threshold of the expert's final one.
    Prints a JSON summary; writes report.json and PNG contact sheets
    (ground-truth row above predicted row, per view).
    """
    import json

    from aimg.training.evaluate import EvaluationError, denoising_report, evaluate_checkpoint

    if denoise:
        try:
            typer.echo(json.dumps(denoising_report(checkpoint, data, episodes, device=device)))
        except (ConfigError, EvaluationError) as exc:
            _fail(str(exc))
        return
    try:
        report = evaluate_checkpoint(
            checkpoint,
            data,
            num_episodes=episodes,
            out_dir=out,
            threshold=threshold,
            device=device,
            contact_sheets=sheets,
            num_steps=steps,
            cfg_scale=cfg,
            samples=samples,
        )
    except (ConfigError, EvaluationError) as exc:
        _fail(str(exc))
        return
    typer.echo(json.dumps(report["summary"], indent=2))

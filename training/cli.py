"""`aimg train`, `aimg distill` and `aimg eval`: training, distillation, open-loop evaluation.

`aimg train` and `aimg distill` run in one process or under torchrun (`torchrun
--nproc_per_node N -m aimg train ...`); every rank runs the same command. `aimg eval` scores
one checkpoint; its sub-commands `distill` (students against their teacher) and `guidance`
(the teacher's guidance sweep) compare samplers.
"""

from __future__ import annotations

import dataclasses
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
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Start from this checkpoint's weights (same architecture; a fresh optimiser and "
        "schedule); overrides train.init_from.",
    ),
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
        if init_from is not None:
            preset = dataclasses.replace(
                preset, train=dataclasses.replace(preset.train, init_from=init_from)
            )
        summary = run_training(preset, resume=resume, progress=progress)
    except (ConfigError, DatasetError, RunError, CheckpointError) as exc:
        _fail(str(exc))
        return
    if summary.pop("rank") == 0:
        typer.echo(summary_json(summary))


def evaluate(
    ctx: typer.Context,
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="A step directory, or a run directory (its latest checkpoint)."
    ),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Directory of held-out episodes (repeatable)."
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
    Sub-commands: `aimg eval distill` (students against their teacher), `aimg eval guidance`
    (the teacher's guidance sweep).
    """
    import json

    if ctx.invoked_subcommand is not None:
        return
    if checkpoint is None or not data:
        _fail(
            "aimg eval needs --checkpoint and --data (or a sub-command: `aimg eval distill`, "
            "`aimg eval guidance`; see `aimg eval --help`)"
        )
        return

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


def distill(
    teacher: Path = typer.Option(
        ..., "--teacher", help="Teacher checkpoint (step or run directory), e.g. assets/sim-tiny."
    ),
    config: Path = typer.Option(
        ...,
        "--config",
        "-c",
        help="Distillation YAML with data, train and distill sections "
        "(configs/distill-sim-tiny.yaml).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory of the student."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest checkpoint in --out, bit-exactly."
    ),
    student_steps: int | None = typer.Option(
        None, "--student-steps", min=1, help="Student steps K; overrides distill.student_steps."
    ),
    teacher_steps: int | None = typer.Option(
        None, "--teacher-steps", min=1, help="Teacher steps N; overrides distill.teacher_steps."
    ),
    teacher_cfg: float | None = typer.Option(
        None,
        "--teacher-cfg",
        help="Teacher guidance scale folded into the student; overrides distill.teacher_cfg_scale.",
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Distil until this step; overrides train.max_steps."
    ),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Episode directory (repeatable); replaces data.roots."
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu or cuda; overrides train.device."
    ),
    cpu_threads: int | None = typer.Option(
        None, "--cpu-threads", min=1, help="torch + numba threads per process (train.cpu_threads)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm bar on rank 0."),
) -> None:
    """Distil a teacher into a few-step, guidance-free student (docs/distillation.md).

    The student (the teacher's architecture, initialised from its weights) learns, on its own
    K-step grid cut from the teacher's N-step grid, the velocity that carries the teacher's
    guided Euler sub-steps across each window; one evaluation per step, no guidance at sampling.
    A distilled student as --teacher starts a progressive stage (e.g. 16 -> 8 steps):
    configs/distill-sim-tiny-progressive.yaml.

    One process:   aimg distill --teacher assets/sim-tiny --config configs/distill-sim-tiny.yaml
                   --out runs/distill-16
    N processes:   torchrun --standalone --nproc_per_node N -m aimg distill ...
    Checkpoints:   <out>/checkpoints/step_NNNNNN (config.json records the student's sampling)
    Logs:          <out>/tensorboard, <out>/metrics.jsonl, <out>/distill.yaml
    SIGINT/SIGTERM save a checkpoint and stop; --resume continues it exactly.
    """
    from aimg.model.checkpoint import CheckpointError as ModelCheckpointError
    from aimg.training.checkpointing import CheckpointError
    from aimg.training.dataset import DatasetError
    from aimg.training.distill import DistillError, load_distill_job, run_distillation
    from aimg.training.run import RunError, summary_json

    try:
        job = load_distill_job(
            config,
            teacher,
            out,
            student_steps=student_steps,
            teacher_steps=teacher_steps,
            teacher_cfg_scale=teacher_cfg,
            max_steps=max_steps,
            data=data,
            device=device,
            cpu_threads=cpu_threads,
        )
        summary = run_distillation(job, resume=resume, progress=progress)
    except (
        ConfigError,
        DatasetError,
        DistillError,
        RunError,
        CheckpointError,
        ModelCheckpointError,
    ) as exc:
        _fail(str(exc))
        return
    if summary.pop("rank") == 0:
        typer.echo(summary_json(summary))


def evaluate_distill(
    teacher: Path = typer.Option(..., "--teacher", help="The original (undistilled) teacher."),
    student: list[Path] = typer.Option(
        ..., "--student", help="A distilled student checkpoint (repeatable)."
    ),
    data: list[Path] = typer.Option(
        ..., "--data", help="Directory of held-out episodes (repeatable)."
    ),
    episodes: int = typer.Option(50, "--episodes", min=1, help="How many start states."),
    cfg: float | None = typer.Option(
        None,
        "--cfg",
        help="Guidance of the reference and the guided brackets (default: the guidance folded "
        "into the first student).",
    ),
    reference_steps: int = typer.Option(
        50, "--reference-steps", min=1, help="Teacher steps of the reference."
    ),
    bracket_steps: int | None = typer.Option(
        None,
        "--bracket-steps",
        min=1,
        help="Teacher steps of the brackets (default: each student's own).",
    ),
    floor_steps: int = typer.Option(
        100, "--floor-steps", min=1, help="Teacher steps of the numerical-floor bracket."
    ),
    threshold: float = typer.Option(0.03, "--threshold", help="Success radius in metres."),
    seed: int = typer.Option(0, "--seed", help="Noise seed of start state i is seed + i."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads (default: the teacher's train.cpu_threads); 1 on a busy machine.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Also write the whole report (every start state) to OUT/report.json."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm bar."),
) -> None:
    """Students against their teacher from the same noise and conditioning.

    Arms: the reference (teacher, --reference-steps with guidance), each student on its own
    grid, and the brackets: teacher at the student's steps with guidance (twice the
    evaluations) and without, and at --floor-steps with guidance (the numerical floor).
    Per arm against the reference: relative L2 of the generated action latents, PSNR of the
    generated action images, decoded position (mm) / rotation (deg) error and gripper agreement;
    against the expert: open-loop success as `aimg eval` scores it; evaluations and wall time
    per plan. `verdicts` says whether each student beats the guided bracket of its step count
    and how many points of success it loses against the reference.
    """
    import json

    from aimg.model.checkpoint import CheckpointError as ModelCheckpointError
    from aimg.training.distill_eval import compare_samplers, format_table
    from aimg.training.evaluate import EvaluationError

    try:
        report = compare_samplers(
            teacher,
            list(student),
            list(data),
            num_episodes=episodes,
            threshold=threshold,
            device=device,
            seed=seed,
            reference_steps=reference_steps,
            cfg_scale=cfg,
            bracket_steps=bracket_steps,
            floor_steps=floor_steps,
            progress=progress,
            threads=threads,
        )
    except (ConfigError, EvaluationError, ModelCheckpointError) as exc:
        _fail(str(exc))
        return
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = report["summary"]
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(format_table(summary))
        typer.echo(json.dumps({"verdicts": summary["verdicts"]}, indent=2))


def evaluate_guidance(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The teacher checkpoint."),
    data: list[Path] = typer.Option(
        ..., "--data", help="Directory of held-out episodes (repeatable)."
    ),
    scales: str = typer.Option(
        "1,1.5,2,3,5", "--scales", help="Comma-separated guidance scales to sweep."
    ),
    steps: int = typer.Option(50, "--steps", min=1, help="Sampling steps of every run."),
    episodes: int = typer.Option(50, "--episodes", min=1, help="How many start states."),
    samples: int = typer.Option(1, "--samples", min=1, help="Plans per start (medoid scored)."),
    threshold: float = typer.Option(0.03, "--threshold", help="Success radius in metres."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where each scale's report.json and sweep.json go "
        "(default: <run>/eval/guidance-<step>-<steps>steps).",
    ),
) -> None:
    """Sweep the classifier-free guidance scale of a teacher on held-out start states.

    Runs `aimg eval` at --steps for each scale (same start states, same noise) and prints JSON:
    per scale the success rate, errors and evaluations per plan, the best scale (highest
    success, then lowest median error, then the smallest scale), whether guidance helps (the
    best scale solves more of the same starts than scale 1, beyond chance: paired sign test,
    p < 0.05) and the scale to distil: `aimg distill ... --teacher-cfg RECOMMENDED`.
    """
    import json

    from aimg.training.distill_eval import guidance_sweep
    from aimg.training.evaluate import EvaluationError

    try:
        values = [float(v) for v in scales.split(",") if v.strip()]
    except ValueError:
        _fail(f"--scales must be comma-separated numbers, got {scales!r}")
        return
    if not values or any(v <= 0 for v in values):
        _fail(f"--scales must list positive numbers, got {scales!r}")
        return
    try:
        result = guidance_sweep(
            checkpoint, list(data), values, steps, episodes, out, threshold, device, samples
        )
    except (ConfigError, EvaluationError) as exc:
        _fail(str(exc))
        return
    typer.echo(json.dumps(result, indent=2))


def evaluate_diagnose(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A step or run directory."),
    data: list[Path] = typer.Option(..., "--data", help="Episodes whose start states to use."),
    episodes: int = typer.Option(50, "--episodes", min=1, help="How many start states."),
    samples: int = typer.Option(4, "--samples", min=2, help="Plans drawn per start state."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: Path | None = typer.Option(None, "--out", help="Also write the full report (JSON)."),
) -> None:
    """Where the open-loop error comes from, per component: the codec's floor, each view's
    placement of the TCP blob (px, mm), the 3D error along and across each camera's ray, the
    views' disagreement, the sampler's bias and spread, and the cube the plan ends at. Run it
    on training and on held-out start states: the gap is what the data costs. Prints JSON."""
    import json

    from aimg.training.diagnose import diagnose_checkpoint
    from aimg.training.evaluate import EvaluationError

    try:
        report = diagnose_checkpoint(checkpoint, list(data), episodes, samples, device, 0, steps)
    except (ConfigError, EvaluationError) as exc:
        _fail(str(exc))
        return
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(report["summary"], indent=2))


eval_app = typer.Typer(
    invoke_without_command=True,
    help="Open-loop evaluation of a checkpoint (`aimg eval --checkpoint ... --data ...`), "
    "students against their teacher (`aimg eval distill`), guidance sweeps (`aimg eval "
    "guidance`).",
)
eval_app.callback()(evaluate)
eval_app.command("distill")(evaluate_distill)
eval_app.command("guidance")(evaluate_guidance)
eval_app.command("diagnose")(evaluate_diagnose)

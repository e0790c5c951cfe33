"""Guidance + trajectory distillation: a few-step, guidance-free student (`aimg distill`).

The teacher samples with N Euler steps on its shifted grid and classifier-free guidance (two
evaluations per step). The student has the teacher's architecture, starts from its weights and
samples on K < N steps whose grid points are a subset of the teacher's (`window_indices`), one
evaluation per step. For window i, [σ_i, σ_{i+1}] of the student grid, the target is the
velocity that carries the teacher's guided Euler sub-steps across the window:

    x_{σ_{i+1}} = teacher's CFG Euler steps from x_{σ_i} through its grid points in the window
    target v*  = (x_{σ_{i+1}} - x_{σ_i}) / (σ_{i+1} - σ_i)

so one student step from x_{σ_i} lands where the teacher's several guided steps do. x_{σ_i}
is data noised to σ_i, the marginal the teacher's grid visits, which costs one noising instead
of a teacher run from pure noise (the choice of guidance distillation and progressive
distillation alike). Conditioning is exactly as in sampling: each step draws one of the
training tasks, the conditioning frames stay clean through the teacher's sub-steps, and the
loss counts the generated latent frames only (`masked_flow_loss`). With `weighting: sample` a
window's velocity error is scaled by σ_i², i.e. measured in clean-sample units as the teacher
was trained (`loss_weighting: sample`), so the last windows' 1/σ amplification does not drown
the first ones, where the plan is decided.

A progressive stage distils a previous student (its own grid, guidance already folded in) into
one with half the steps (16 -> 8 -> 4). The student's `config.json` records its sampling: steps,
σ grid, shift, `cfg_scale` 1 and `distilled` (teacher fingerprint, teacher steps and guidance,
the guidance folded in, the stage), which the sampler, `aimg export` and the runtime read.
The loop is `Trainer`'s: torchrun DDP/FSDP2, atomic checkpoints, exact resume, TensorBoard.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from aimg.config import ConfigError, from_dict, load_yaml, to_dict
from aimg.model.config import DistilledFrom, ModelConfig, SamplingConfig
from aimg.model.schedule import NUM_TRAIN_TIMESTEPS, sampler_sigmas, window_indices
from aimg.training.config import DataConfig, TrainConfig
from aimg.training.distributed import DistContext
from aimg.training.loss import masked_flow_loss, noised_latents, seeded_noise
from aimg.training.objective import WorldActionObjective
from aimg.training.order import mix_seed
from aimg.training.trainer import Trainer

CONFIG_FILE = "distill.yaml"
# data keys that define what the model sees: a student must see what its teacher saw
TEACHER_DATA_KEYS = ("crop", "relative_cameras", "stride", "views")
# train keys of the flow-matching objective that distillation does not use
UNUSED_TRAIN_KEYS = ("shift", "timesteps", "loss_weighting")

Velocity = Callable[..., torch.Tensor]
"""(x [B, C, F, h, w], t [B] or [B, F], text [B, L, D], cams [B, F, ...]) -> velocity."""


class DistillError(ValueError):
    """The distillation cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class DistillConfig:
    """The `distill:` section of a distillation config.

    `student_steps` K: the student's sampling steps (windows). `teacher_steps` N and
    `teacher_cfg_scale`: how the teacher runs to make targets (None: its checkpoint's own
    sampling block); a teacher that is itself a distilled student always runs its own grid
    without guidance (a progressive stage), so both must be None then. `teacher_shift`: the
    shift of the teacher's grid (None: its own). `weighting`: `sample` scales each window's
    velocity error by σ_i² (clean-sample units, as sim-tiny trains), `velocity` weighs all
    windows alike.
    """

    student_steps: int = 16
    teacher_steps: int | None = 50
    teacher_cfg_scale: float | None = None
    teacher_shift: float | None = None
    weighting: Literal["sample", "velocity"] = "sample"

    def __post_init__(self) -> None:
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        if self.teacher_cfg_scale is not None and self.teacher_cfg_scale <= 0:
            raise ValueError(f"teacher_cfg_scale must be > 0, got {self.teacher_cfg_scale}")
        if self.teacher_shift is not None and self.teacher_shift <= 0:
            raise ValueError(f"teacher_shift must be > 0, got {self.teacher_shift}")


@dataclass(frozen=True)
class TeacherPlan:
    """How the teacher makes targets and the student grid cut from its grid.

    grid: the teacher's N + 1 σ (float, decreasing, last 0); indices: the K + 1 positions of
    the student's grid points in it; sampling: the student's sampling block.
    """

    grid: list[float]
    cfg_scale: float
    negative_prompt: str
    indices: list[int]
    sampling: SamplingConfig

    @property
    def student_grid(self) -> list[float]:
        """The student's K + 1 σ (last 0)."""
        return [self.grid[i] for i in self.indices]


def plan_distillation(
    teacher: SamplingConfig, teacher_sha256: str, cfg: DistillConfig
) -> TeacherPlan:
    """The teacher's grid and guidance, and the student's grid and sampling block."""
    if teacher.distilled is not None:
        if cfg.teacher_steps is not None or cfg.teacher_cfg_scale is not None:
            raise DistillError(
                f"the teacher is a distilled {teacher.num_steps}-step student (stage "
                f"{teacher.distilled.stage}); a progressive stage runs it on its own grid "
                "without guidance: set distill.teacher_steps and distill.teacher_cfg_scale to "
                "null (configs/distill-sim-tiny-progressive.yaml)"
            )
        steps, scale, shift = teacher.num_steps, teacher.cfg_scale, teacher.shift
        grid = sampler_sigmas(steps, shift, teacher.sigmas).tolist()
        guidance = teacher.distilled.guidance_scale
        stage = teacher.distilled.stage + 1
    else:
        steps = cfg.teacher_steps if cfg.teacher_steps is not None else teacher.num_steps
        scale = cfg.teacher_cfg_scale if cfg.teacher_cfg_scale is not None else teacher.cfg_scale
        shift = cfg.teacher_shift if cfg.teacher_shift is not None else teacher.shift
        explicit = teacher.sigmas if cfg.teacher_steps is None else None
        grid = sampler_sigmas(steps, shift, explicit).tolist()
        guidance, stage = scale, 1
    if cfg.student_steps >= steps:
        raise DistillError(
            f"distill.student_steps {cfg.student_steps} must be fewer than the teacher's "
            f"{steps} steps"
        )
    indices = window_indices(steps, cfg.student_steps)
    sampling = SamplingConfig(
        num_steps=cfg.student_steps,
        shift=shift,
        cfg_scale=1.0,
        negative_prompt=teacher.negative_prompt,
        sigmas=[grid[i] for i in indices[:-1]],
        step_cache=False,
        seed=teacher.seed,
        distilled=DistilledFrom(
            teacher_sha256=teacher_sha256,
            teacher_steps=steps,
            teacher_cfg_scale=scale,
            guidance_scale=guidance,
            stage=stage,
        ),
    )
    return TeacherPlan(grid, scale, teacher.negative_prompt, indices, sampling)


@torch.no_grad()
def window_targets(
    teacher: Velocity,
    x: torch.Tensor,
    clean: torch.Tensor,
    text: torch.Tensor,
    cams: torch.Tensor,
    grid: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    cfg_scale: float = 1.0,
    negative: torch.Tensor | None = None,
    per_token: bool = False,
) -> tuple[torch.Tensor, int]:
    """The velocities [B, C, F, h, w] (float32) that carry the teacher's Euler sub-steps from
    grid[start[b]] to grid[end[b]] in one step, and the number of teacher calls made.

    x: latents at σ = grid[start] with clean conditioning frames (`clean`: bool [F] or [B, F]);
    text / negative: [B, L, D] (negative needed when cfg_scale != 1); grid: the teacher's σ
    [N + 1]; start, end: int [B]. Each sub-step is the sampler's update
    (`aimg.model.sampler.flow_sample`): v = v_neg + s (v_pos - v_neg), x <- x + v Δσ on the
    generated frames only, both branches in one batch. Samples whose window is already done
    are left out of a sub-step's batch.
    """
    batch, frames = x.shape[0], x.shape[2]
    clean = clean.to(device=x.device, dtype=torch.bool)
    rows = clean.expand(batch, frames) if clean.ndim == 1 else clean
    grid = grid.to(device=x.device, dtype=torch.float64)
    start, end = start.to(x.device), end.to(x.device)
    use_cfg = cfg_scale != 1.0
    if use_cfg and negative is None:
        raise ValueError(f"cfg_scale {cfg_scale} needs the negative prompt's embeddings")
    state = x.float().clone()
    calls = 0
    for j in range(int((end - start).max())):
        active = torch.nonzero(start + j < end).flatten()
        k = start[active] + j
        sigma, sigma_next = grid[k], grid[k + 1]
        t = (sigma * NUM_TRAIN_TIMESTEPS).float()
        keep = rows[active]
        if per_token:
            t = t[:, None].expand(-1, frames).masked_fill(keep, 0.0)
        xs = state[active].to(x.dtype)
        if use_cfg:
            both = teacher(
                torch.cat([xs, xs]),
                torch.cat([t, t]),
                torch.cat([text[active], negative[active]]),
                torch.cat([cams[active], cams[active]]),
            ).float()
            v_pos, v_neg = both.chunk(2)
            v = v_neg + cfg_scale * (v_pos - v_neg)
        else:
            v = teacher(xs, t, text[active], cams[active]).float()
        calls += 1
        step = (sigma_next - sigma).float().view(-1, 1, 1, 1, 1)
        moved = state[active] + v * step
        state[active] = torch.where(keep[:, None, :, None, None], state[active], moved)
    width = (grid[end] - grid[start]).float().view(-1, 1, 1, 1, 1)
    return (state - x.float()) / width, calls


class DistillObjective:
    """Callable objective for `Trainer`: window targets from the teacher, the student's loss.

    Data, task draw, encoding, packing, masks and timestep inputs are `WorldActionObjective`'s
    (`base`), so the student sees batches exactly as the teacher did in training. Each sample
    draws its window from its own seed and the step, so the loss of a global batch does not
    depend on how it is split over ranks, and a resumed run repeats it exactly.
    """

    def __init__(
        self,
        base: WorldActionObjective,
        teacher: nn.Module,
        plan: TeacherPlan,
        weighting: str = "sample",
    ) -> None:
        self.base = base
        self.teacher = teacher.eval().requires_grad_(False)
        self.plan = plan
        self.grid = torch.tensor(plan.grid, dtype=torch.float64)
        self.indices = torch.tensor(plan.indices, dtype=torch.long)
        student = torch.tensor(plan.student_grid[:-1], dtype=torch.float64)
        if weighting == "sample":
            self.window_weights = (student**2 / (student**2).mean()).float()
        elif weighting == "velocity":
            self.window_weights = torch.ones(len(student))
        else:
            raise ValueError(f"weighting must be 'sample' or 'velocity', got {weighting!r}")
        self.negative: torch.Tensor | None = None
        if plan.cfg_scale != 1.0:
            self.negative = base.text_encoder([plan.negative_prompt]).to(base.device)

    @property
    def num_windows(self) -> int:
        return len(self.indices) - 1

    def windows(self, sample_seeds: torch.Tensor, step: int) -> torch.Tensor:
        """The student window [B] (0 = the one from σ = 1) of each sample."""
        return torch.tensor(
            [
                int(
                    torch.randint(
                        self.num_windows,
                        (1,),
                        generator=torch.Generator().manual_seed(mix_seed(int(s), 0xD157, step)),
                    )
                )
                for s in sample_seeds.tolist()
            ],
            dtype=torch.long,
        )

    def __call__(
        self, model: nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        base = self.base
        task = base.task(step)
        inp = base.inputs(batch, task)
        x0, clean = inp["x0"], inp["clean"]
        seeds = batch["seed"]
        window = self.windows(seeds, step)
        sigma = self.grid[self.indices[window]]  # float64, as the sampler computes t
        noise = seeded_noise(tuple(x0.shape[1:]), seeds).to(base.device)
        xt, _ = noised_latents(x0, noise, sigma.float().to(base.device), clean)
        negative = None
        if self.negative is not None:
            negative = self.negative.expand(x0.shape[0], -1, -1)
        target, calls = window_targets(
            self.teacher,
            xt,
            clean,
            inp["text"],
            inp["cameras"],
            self.grid,
            self.indices[window],
            self.indices[window + 1],
            self.plan.cfg_scale,
            negative,
            base.per_token,
        )
        t = base.model_timesteps((sigma * NUM_TRAIN_TIMESTEPS).float().to(base.device), clean)
        pred = model(xt, t, inp["text"], inp["cameras"])
        weight = self.window_weights[window].to(base.device)
        loss = masked_flow_loss(pred, target, clean, weight, base.frame_weights(task))
        return loss, {"teacher_calls": float(calls)}


@dataclass(frozen=True)
class DistillJob:
    """Everything `aimg distill` needs: the teacher, the data and train sections, the plan."""

    teacher: Path
    teacher_sha256: str
    model: ModelConfig
    teacher_extra: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    distill: DistillConfig
    plan: TeacherPlan
    config_path: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.train.run_dir


def load_distill_job(
    config: str | Path,
    teacher: str | Path,
    out: str | Path,
    *,
    student_steps: int | None = None,
    teacher_steps: int | None = None,
    teacher_cfg_scale: float | None = None,
    max_steps: int | None = None,
    data: list[Path] | None = None,
    device: str | None = None,
    cpu_threads: int | None = None,
) -> DistillJob:
    """Read a distillation config against a teacher checkpoint, with command-line overrides.

    `data:` is merged over the teacher's own data section (its crop, stride, views and camera
    frame are kept: they define what the model sees); `train:` is a whole `TrainConfig`
    whose run directory is `out`; `distill:` is a `DistillConfig`.
    """
    from aimg.artifacts import checkpoint_fingerprint
    from aimg.model.checkpoint import CheckpointError, read_checkpoint_config
    from aimg.training.evaluate import EvaluationError, resolve_checkpoint

    config = Path(config)
    try:
        step_dir = resolve_checkpoint(Path(teacher))
        teacher_config = read_checkpoint_config(step_dir)
    except (EvaluationError, CheckpointError) as exc:
        raise DistillError(f"--teacher {teacher}: {exc}") from exc
    where = str(step_dir / "config.json")
    model = from_dict(ModelConfig, teacher_config["model"], f"{where}: model")
    sampling = from_dict(SamplingConfig, teacher_config["sampling"], f"{where}: sampling")
    extra = teacher_config.get("extra") or {}

    raw = load_yaml(config)
    unknown = sorted(set(raw) - {"data", "train", "distill"})
    if unknown:
        raise ConfigError(
            f"{config}: unknown section(s) {unknown}; a distillation config has data, train "
            "and distill (model and sampling come from the teacher)"
        )
    data_raw = dict(raw.get("data") or {})
    teacher_data = dict(extra.get("data") or {})
    for key in TEACHER_DATA_KEYS:
        if key in data_raw and data_raw[key] != teacher_data.get(key):
            raise ConfigError(
                f"{config}: data.{key} {data_raw[key]!r} differs from the teacher's "
                f"{teacher_data.get(key)!r}; the student must see inputs as its teacher did "
                f"(leave data.{key} out)"
            )
    data_cfg = from_dict(DataConfig, {**teacher_data, **data_raw}, f"{config}: data")
    train_raw = dict(raw.get("train") or {})
    unused = sorted(set(train_raw) & set(UNUSED_TRAIN_KEYS))
    if unused:
        raise ConfigError(
            f"{config}: train.{unused[0]} belongs to flow-matching training; distillation "
            "draws its σ from the student grid and weighs windows by distill.weighting"
        )
    train_raw["run_dir"] = str(out)
    train_cfg = from_dict(TrainConfig, train_raw, f"{config}: train")
    distill_cfg = from_dict(DistillConfig, raw.get("distill") or {}, f"{config}: distill")

    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise DistillError(f"--device must be auto, cpu or cuda, got {device!r}")
    changes = {"max_steps": max_steps, "device": device, "cpu_threads": cpu_threads}
    overrides = {
        "student_steps": student_steps,
        "teacher_steps": teacher_steps,
        "teacher_cfg_scale": teacher_cfg_scale,
    }
    try:
        train_cfg = dataclasses.replace(
            train_cfg, **{k: v for k, v in changes.items() if v is not None}
        )
        distill_cfg = dataclasses.replace(
            distill_cfg, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ValueError as exc:
        raise DistillError(f"command-line override: {exc}") from exc
    if data:
        data_cfg = dataclasses.replace(data_cfg, roots=[Path(p) for p in data])
    sha = checkpoint_fingerprint(step_dir)
    plan = plan_distillation(sampling, sha, distill_cfg)
    return DistillJob(step_dir, sha, model, extra, data_cfg, train_cfg, distill_cfg, plan, config)


def job_dict(job: DistillJob) -> dict[str, Any]:
    """The resolved job as plain data (written to `<out>/distill.yaml` and the student)."""
    return {
        "teacher": str(job.teacher),
        "teacher_sha256": job.teacher_sha256,
        "distill": to_dict(job.distill),
        "teacher_grid": job.plan.grid,
        "teacher_cfg_scale": job.plan.cfg_scale,
        "window_indices": job.plan.indices,
        "data": to_dict(job.data),
        "train": to_dict(job.train),
    }


def build_distiller(job: DistillJob, ctx: DistContext, progress: bool = True) -> Trainer:
    """Teacher, student (the teacher's weights), data and objective wired into a `Trainer`."""
    from aimg.model.build import build_latent_codec, build_text_encoder
    from aimg.model.checkpoint import load_checkpoint
    from aimg.training.dataset import EpisodeClipDataset, find_episodes
    from aimg.training.run import checkpoint_saver

    mcfg, dcfg, tcfg = job.model, job.data, job.train
    episodes = find_episodes(dcfg.roots)
    dataset = EpisodeClipDataset(
        episodes, dcfg, mcfg.frames, mcfg.height, mcfg.width, mcfg.blob_sigma
    )
    teacher = load_checkpoint(job.teacher, device=ctx.device).model
    student = load_checkpoint(job.teacher, device="cpu").model
    codec = build_latent_codec(mcfg).to(ctx.device)
    text = build_text_encoder(mcfg)
    if hasattr(text, "to"):
        text = text.to(ctx.device)
    base = WorldActionObjective(mcfg, dcfg, tcfg, codec, text, ctx.device)
    objective = DistillObjective(base, teacher, job.plan, job.distill.weighting)
    extra = {
        "data": to_dict(dcfg),
        "train": to_dict(tcfg),
        "distill": {k: v for k, v in job_dict(job).items() if k not in ("data", "train")},
    }
    for key in ("data_fps", "action_dt_s"):
        if key in job.teacher_extra:
            extra[key] = job.teacher_extra[key]
    return Trainer(
        student,
        objective,
        dataset,
        tcfg,
        ctx,
        num_workers=dcfg.num_workers,
        save_model=checkpoint_saver(mcfg, job.plan.sampling, extra),
        progress=progress,
        progress_desc=f"distill {job.plan.sampling.num_steps} steps",
    )


def run_distillation(job: DistillJob, resume: bool, progress: bool = True) -> dict[str, Any]:
    """Distil (or resume) in this process; returns a summary (rank 0's view)."""
    from aimg.training.run import run_job

    sampling = job.plan.sampling
    config_text = yaml.safe_dump(json.loads(json.dumps(job_dict(job))), sort_keys=False)
    return run_job(
        job.run_dir,
        job.train.device,
        lambda ctx: build_distiller(job, ctx, progress),
        {CONFIG_FILE: config_text},
        resume,
        "continue that distillation, or choose a new --out",
        extra={
            "teacher": str(job.teacher),
            "teacher_steps": sampling.distilled.teacher_steps,
            "teacher_cfg_scale": sampling.distilled.teacher_cfg_scale,
            "student_steps": sampling.num_steps,
            "stage": sampling.distilled.stage,
        },
    )

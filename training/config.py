"""The `data:` and `train:` sections of a preset, as typed dataclasses validated once.

The `model:` and `sampling:` sections belong to `aimg.model.config`; `load_training_preset`
reads all four from one YAML file and says exactly which key is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aimg.config import ConfigError, from_dict, load_yaml


@dataclass(frozen=True)
class TaskMixture:
    """Probabilities of the training tasks (docs/reference.md §5).

    `video_only` is drawn first; the rest is split between joint image-to-video+action
    generation (`i2va`), "first view's video given" and video-to-action labelling (`v2a`),
    which are renormalised to sum to 1.
    """

    video_only: float = 0.1
    i2va: float = 0.90
    first_view_video_given: float = 0.05
    v2a: float = 0.05

    def __post_init__(self) -> None:
        probs = (self.video_only, self.i2va, self.first_view_video_given, self.v2a)
        if any(p < 0 for p in probs):
            raise ValueError(f"task probabilities must be >= 0, got {probs}")
        if self.video_only > 1:
            raise ValueError(f"video_only is a probability, got {self.video_only}")
        if self.video_only < 1 and self.i2va + self.first_view_video_given + self.v2a <= 0:
            raise ValueError("i2va, first_view_video_given and v2a cannot all be 0")


@dataclass(frozen=True)
class DataConfig:
    """Where episodes live and how training clips are cut from them.

    A clip is `model.frames` video frames `stride` apart; frame 0 is the "current" observation
    and action frame k is the absolute tool pose at video frame k. With probability
    `start_at_zero` the clip starts at the first frame (the policy's typical situation), else
    uniformly where the whole clip fits; clips that run past the end repeat the last frame.
    `relative_cameras` gives the model camera poses relative to the condition view, as the
    reference trains (docs/reference.md §3.2); the default keeps them in the robot base frame,
    which a static cell makes informative. Inference must use the same choice.
    `crop` = [x0, y0, w, h], fractions of each camera image, is the region the model sees
    (then centre-cropped to the model aspect and resized; None: the whole image). Framing the
    workspace makes small objects cover more pixels of a small model input; inference must crop
    the same way (the cameras follow the crop).
    """

    roots: list[Path] = field(default_factory=lambda: [Path("data/reach")])
    stride: int = 4
    start_at_zero: float = 0.3
    max_start_fraction: float = 0.0
    views: list[str] | None = None
    text_dropout: float = 0.05
    tasks: TaskMixture = field(default_factory=TaskMixture)
    relative_cameras: bool = False
    crop: list[float] | None = None
    num_workers: int = 0
    latent_cache: Path | None = None

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("roots must list at least one episode directory")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 <= self.start_at_zero <= 1.0:
            raise ValueError(f"start_at_zero is a probability, got {self.start_at_zero}")
        if not 0.0 <= self.max_start_fraction <= 1.0:
            raise ValueError(f"max_start_fraction must be in [0, 1], got {self.max_start_fraction}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"text_dropout is a probability, got {self.text_dropout}")
        if self.views is not None and len(self.views) < 1:
            raise ValueError("views must name at least one camera view (or be omitted)")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.crop is not None:
            if len(self.crop) != 4:
                raise ValueError(f"crop is [x0, y0, w, h] (image fractions), got {self.crop}")
            x0, y0, w, h = (float(c) for c in self.crop)
            if min(x0, y0) < 0 or min(w, h) <= 0 or x0 + w > 1 + 1e-9 or y0 + h > 1 + 1e-9:
                raise ValueError(
                    f"crop {self.crop} must lie inside the image: 0 <= x0, y0; w, h > 0; "
                    "x0 + w <= 1 and y0 + h <= 1 (fractions of width and height)"
                )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, timesteps, checkpoints and parallelism of one training run.

    `batch_size` is per process: the global batch is batch_size x world size.
    `cpu_threads` caps torch's and numba's threads per process on CPU (0 leaves the defaults):
    oversubscribed OpenMP threads spin, and on a busy 2-core machine a sim-tiny step took 14 s
    with 2 threads against 0.65 s with 1.
    `timesteps: per_batch` draws one t for the whole global batch (the reference); `per_sample`
    draws one per sample (less gradient noise with small batches).
    `action_loss_weight` scales the loss of action-segment latents against video ones (1.0 is
    the reference): a policy needs the actions, and a small model spends most of its capacity on
    the harder video otherwise.
    """

    run_dir: Path = Path("runs/default")
    seed: int = 42
    max_steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    shift: float = 5.0
    timesteps: Literal["per_batch", "per_sample"] = "per_sample"
    loss_weighting: Literal["reference", "sample", "uniform"] = "reference"
    action_loss_weight: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    activation_checkpointing: Literal["auto", "on", "off"] = "auto"
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    cpu_threads: int = 1
    #: torch.compile the model for the training step: about 1.2x faster on CPU for sim-tiny
    #: (0.27 -> 0.22 s per bf16 forward + backward on 2 cores), after a compile of about a minute
    #: per distinct input shape (one per task of the mixture that packs differently)
    compile: bool = False
    #: start from these weights (a checkpoint directory with the same architecture, e.g. a
    #: bundled model) with a fresh optimiser and schedule; `--resume` of a run ignores it
    init_from: Path | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0 = defaults), got {self.cpu_threads}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.action_loss_weight <= 0:
            raise ValueError(f"action_loss_weight must be > 0, got {self.action_loss_weight}")


@dataclass(frozen=True)
class TrainingPreset:
    """Everything `aimg train` needs, read from one preset file."""

    path: Path
    model: Any
    sampling: Any
    data: DataConfig
    train: TrainConfig
    raw: dict[str, Any]


def parse_sections(raw: dict[str, Any], where: str) -> tuple[DataConfig, TrainConfig]:
    """The `data:` and `train:` sections of a preset mapping (both required)."""
    for section in ("data", "train"):
        if section not in raw:
            raise ConfigError(f"{where}: missing section '{section}:' needed by `aimg train`")
    data = from_dict(DataConfig, raw["data"], f"{where}: data")
    train = from_dict(TrainConfig, raw["train"], f"{where}: train")
    return data, train


def load_training_preset(path: str | Path) -> TrainingPreset:
    """Read and validate a preset's model, sampling, data and train sections."""
    from aimg.model.config import load_preset

    path = Path(path)
    raw = load_yaml(path)
    data, train = parse_sections(raw, str(path))
    model, sampling, _ = load_preset(path)
    return TrainingPreset(path, model, sampling, data, train, raw)

"""The `model:` and `sampling:` sections of a preset, validated once when loaded.

A `ModelConfig` fixes everything that shapes a checkpoint: the transformer, the latent codec,
the text encoder and the sample geometry (views, pixel frames, image size). Derived sizes
(latent channels, latent frames, token grid, camera-latent channels) are properties, so there is
one source of truth. `SamplingConfig` is the default sampler set-up stored with a checkpoint
(distilled students carry their own step grid here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aimg.config import ConfigError, from_dict, load_yaml

PIXEL_CHANNELS = 3


@dataclass(frozen=True)
class TransformerConfig:
    """Shapes of the Wan DiT plus the camera branch (docs/reference.md §3.4, §4.1)."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int
    cam_pool: tuple[int, int, int]
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    timestep_mode: Literal["scalar", "per_token"] = "scalar"
    prediction: Literal["velocity", "sample"] = "velocity"
    min_sigma: float = 0.05
    sigma_data: float = 0.0

    def __post_init__(self) -> None:
        if self.sigma_data < 0 or (self.sigma_data > 0 and self.prediction != "sample"):
            raise ValueError(
                f"sigma_data {self.sigma_data}: the skip needs prediction: sample (0 turns it off)"
            )
        if not 0.0 < self.min_sigma < 1.0:
            raise ValueError(f"min_sigma must lie in (0, 1), got {self.min_sigma}")
        for name in ("num_layers", "num_heads", "head_dim", "ffn_dim", "text_dim", "freq_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(
                f"head_dim {self.head_dim} must be even and >= 6: RoPE splits it into "
                "t/h/w parts of complex pairs (e.g. 20 -> 8/6/6, 128 -> 44/42/42)"
            )
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even (cos and sin halves)")
        if self.patch_size[0] != 1:
            raise ValueError(
                f"patch_size {self.patch_size}: the temporal patch must be 1, because the camera "
                "branch adds one vector per latent frame to that frame's tokens"
            )
        if min(self.patch_size) <= 0 or min(self.cam_pool) <= 0:
            raise ValueError("patch_size and cam_pool entries must be positive")

    @property
    def dim(self) -> int:
        """Transformer width D = heads x head_dim."""
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class CodecConfig:
    """Latent codec: the Wan VAE from a local directory, or the exact pixel codec."""

    kind: Literal["pixel", "wan_vae"]
    spatial_factor: int = 8
    temporal_factor: int = 4
    path: str | None = None
    latent_channels: int | None = None

    def __post_init__(self) -> None:
        if self.spatial_factor <= 0 or self.temporal_factor <= 0:
            raise ValueError("spatial_factor and temporal_factor must be positive")
        if self.kind == "wan_vae" and (self.path is None or self.latent_channels is None):
            raise ValueError(
                "codec kind 'wan_vae' needs `path` (a local AutoencoderKLWan directory) and "
                "`latent_channels` (its z_dim, 48 for Wan2.2)"
            )
        if self.kind == "pixel" and self.latent_channels not in (None, self.pixel_channels):
            raise ValueError(
                f"pixel codec latent_channels is fixed to 3*s*s*t = {self.pixel_channels}; "
                "leave it out"
            )

    @property
    def pixel_channels(self) -> int:
        return PIXEL_CHANNELS * self.spatial_factor**2 * self.temporal_factor

    @property
    def channels(self) -> int:
        """Latent channels C."""
        if self.kind == "pixel":
            return self.pixel_channels
        assert self.latent_channels is not None
        return self.latent_channels


@dataclass(frozen=True)
class TextConfig:
    """Text encoder: umT5 from a local directory (reference) or the built-in hashing encoder."""

    kind: Literal["builtin", "umt5"]
    max_length: int = 512
    path: str | None = None
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        if self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        if self.kind == "umt5" and self.path is None:
            raise ValueError(
                "text kind 'umt5' needs `path`: a local directory with the umT5 encoder and "
                "its tokenizer (nothing is downloaded)"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The `model:` section: transformer, codec, text encoder and sample geometry.

    `blob_sigma` is the action-image blob width as a fraction of min(H, W) (the reference's
    0.05, docs/reference.md §1.4). A small model whose 16 px tokens are far wider than a 0.05
    blob (3.2 px at 64 px; the reference's blobs span ~1.6 tokens) learns where blobs go much
    more easily with wider ones; data rendering and decoding follow this value.
    """

    transformer: TransformerConfig
    codec: CodecConfig
    text: TextConfig
    name: str = "custom"
    views: int = 2
    frames: int = 41
    height: int = 512
    width: int = 512
    blob_sigma: float = 0.05

    def __post_init__(self) -> None:
        if self.views <= 0 or self.frames <= 0:
            raise ValueError("views and frames must be positive")
        if not 0.0 < self.blob_sigma <= 0.5:
            raise ValueError(
                f"blob_sigma is a fraction of the image side in (0, 0.5] (reference 0.05), "
                f"got {self.blob_sigma}"
            )
        t = self.codec.temporal_factor
        if (self.frames - 1) % t:
            raise ValueError(
                f"frames {self.frames} does not fit the codec's temporal factor {t}: use "
                f"1 + {t}k frames (e.g. {1 + t * max(1, (self.frames - 1) // t)})"
            )
        step = self.codec.spatial_factor * self.transformer.patch_size[1]
        step_w = self.codec.spatial_factor * self.transformer.patch_size[2]
        if self.height % step or self.width % step_w:
            raise ValueError(
                f"image {self.height}x{self.width} must be a multiple of codec spatial factor x "
                f"patch ({step}x{step_w})"
            )
        pool_c, pool_h, pool_w = self.transformer.cam_pool
        if pool_c > self.cam_channels or pool_h > self.latent_height or pool_w > self.latent_width:
            raise ValueError(
                f"cam_pool {self.transformer.cam_pool} exceeds the camera latent shape "
                f"({self.cam_channels}, {self.latent_height}, {self.latent_width})"
            )

    @property
    def latent_channels(self) -> int:
        return self.codec.channels

    @property
    def cam_channels(self) -> int:
        """Camera-latent channels: Plücker direction and moment, each encoded.

        See docs/reference.md §3.3.
        """
        return 2 * self.codec.channels

    @property
    def latent_frames(self) -> int:
        """T_l per segment: 1 + (T - 1) / temporal_factor."""
        return 1 + (self.frames - 1) // self.codec.temporal_factor

    @property
    def latent_height(self) -> int:
        return self.height // self.codec.spatial_factor

    @property
    def latent_width(self) -> int:
        return self.width // self.codec.spatial_factor

    @property
    def cam_features(self) -> int:
        """Input width of each block's camera Linear: prod(cam_pool)."""
        return math.prod(self.transformer.cam_pool)

    def num_tokens(self, with_actions: bool = True) -> int:
        """Tokens of one packed sample: segments x T_l x (h/p_h) x (w/p_w)."""
        _, p_h, p_w = self.transformer.patch_size
        segments = self.views * (2 if with_actions else 1)
        return (
            segments * self.latent_frames * (self.latent_height // p_h) * (self.latent_width // p_w)
        )


@dataclass(frozen=True)
class DistilledFrom:
    """Where a distilled student's step grid came from (`aimg distill`, docs/distillation.md).

    The student samples on its own grid (`SamplingConfig.sigmas`) with one evaluation per
    step: `guidance_scale` is the classifier-free guidance folded into its weights, so its
    own `cfg_scale` stays 1. `teacher_sha256` is the teacher's `aimg.artifacts.
    checkpoint_fingerprint`; `teacher_steps` / `teacher_cfg_scale` are how the teacher ran
    when it made the targets; `stage` counts distillations from the original model (2 and up:
    progressive halving from the previous student).
    """

    teacher_sha256: str
    teacher_steps: int
    teacher_cfg_scale: float
    guidance_scale: float
    stage: int = 1

    def __post_init__(self) -> None:
        if self.teacher_steps <= 0 or self.stage < 1:
            raise ValueError(
                f"teacher_steps must be positive and stage >= 1, got {self.teacher_steps} and "
                f"{self.stage}"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """Default sampler set-up (docs/reference.md §6).

    `sigmas` overrides the shifted uniform grid (then it has `num_steps` entries). A distilled
    student records its grid here and how it was made in `distilled`; the sampler, the export
    and the runtime read both from the checkpoint, never from flags.
    """

    num_steps: int = 50
    shift: float = 5.0
    cfg_scale: float = 7.5
    negative_prompt: str = ""
    sigmas: list[float] | None = None
    step_cache: bool = False
    seed: int = 42
    distilled: DistilledFrom | None = None

    def __post_init__(self) -> None:
        if self.num_steps <= 0:
            raise ValueError(f"num_steps must be positive, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.sigmas is not None:
            s = list(self.sigmas)
            decreasing = all(a > b for a, b in zip(s, s[1:], strict=False))
            if not s or any(not 0.0 < x <= 1.0 for x in s) or not decreasing:
                raise ValueError(
                    "sigmas must be a strictly decreasing list in (0, 1] (the final 0 is implied)"
                )
            if len(s) != self.num_steps:
                raise ValueError(
                    f"sigmas has {len(s)} entries but num_steps is {self.num_steps}: a grid of "
                    "N steps lists N sigmas (the final 0 is implied)"
                )
        if self.distilled is not None and self.sigmas is None:
            raise ValueError("a distilled student samples on its own grid: `sigmas` is required")

    @property
    def evaluations_per_plan(self) -> int:
        """Transformer evaluations of one plan: two per step with guidance (the unconditional
        branch), one without."""
        return self.num_steps * (2 if self.cfg_scale != 1.0 else 1)


def model_config_from_dict(data: Any, where: str = "model") -> ModelConfig:
    """Validate a `model:` mapping into a ModelConfig (errors name the key)."""
    return from_dict(ModelConfig, data, where)


def load_preset(path: str | Path) -> tuple[ModelConfig, SamplingConfig, dict[str, Any]]:
    """Read a preset YAML: its `model:` and `sampling:` sections plus the raw mapping.

    Other sections (`data:`, `train:`, ...) are left in the raw mapping for their owners.
    """
    raw = load_yaml(path)
    if "model" not in raw:
        raise ConfigError(f"{path}: no `model:` section; see configs/sim-tiny.yaml for an example")
    model = from_dict(ModelConfig, raw["model"], f"{path}:model")
    sampling = from_dict(SamplingConfig, raw.get("sampling") or {}, f"{path}:sampling")
    return model, sampling, raw

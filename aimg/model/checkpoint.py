"""Model checkpoints: a directory with `model.safetensors` and `config.json`.

config.json holds the preset name, the validated `model` and `sampling` sections, the derived
shapes, the transformer's diffusers config and an optional `extra` mapping (e.g. the training
step). Loading rebuilds the model from the `model` section alone, so no code path unpickles.
Each file is written to a temporary name and renamed into place (never half-written); other
files in the directory (e.g. a trainer's state) are left alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aimg.config import from_dict, to_dict
from aimg.model.build import build_model, transformer_kwargs
from aimg.model.config import ModelConfig, SamplingConfig
from aimg.model.transformer import WorldActionModel

FORMAT = "aimg-world-action-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns."""

    model: WorldActionModel
    model_config: ModelConfig
    sampling: SamplingConfig
    extra: dict[str, Any] = field(default_factory=dict)


def shapes_of(cfg: ModelConfig) -> dict[str, Any]:
    """Derived sizes recorded in config.json for readers that do not build the model."""
    return {
        "views": cfg.views,
        "frames": cfg.frames,
        "height": cfg.height,
        "width": cfg.width,
        "latent_channels": cfg.latent_channels,
        "latent_frames": cfg.latent_frames,
        "latent_height": cfg.latent_height,
        "latent_width": cfg.latent_width,
        "cam_channels": cfg.cam_channels,
        "text_length": cfg.text.max_length,
        "text_dim": cfg.transformer.text_dim,
        "tokens_joint": cfg.num_tokens(with_actions=True),
    }


def save_checkpoint(
    directory: str | Path,
    model: WorldActionModel,
    model_config: ModelConfig,
    sampling: SamplingConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` + `config.json` into `directory` (each file atomically)."""
    directory = Path(directory)
    expected = transformer_kwargs(model_config)
    actual = {k: model.config[k] for k in expected}
    if {k: _plain(v) for k, v in actual.items()} != {k: _plain(v) for k, v in expected.items()}:
        raise CheckpointError(
            f"the model does not match its ModelConfig: model {actual} vs config {expected}"
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": model_config.name,
        "model": to_dict(model_config),
        "sampling": to_dict(sampling or SamplingConfig()),
        "shapes": shapes_of(model_config),
        "transformer": {k: _plain(v) for k, v in expected.items()},
        "extra": extra or {},
    }
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _write_atomic(
        directory / WEIGHTS_NAME,
        lambda path: save_file(tensors, str(path), metadata={"format": FORMAT}),
    )
    text = json.dumps(config, indent=2) + "\n"
    _write_atomic(directory / CONFIG_NAME, lambda path: path.write_text(text))
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory (validated format)."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{directory} is not an aimg checkpoint: it needs {WEIGHTS_NAME} and {CONFIG_NAME} "
            "(convert a reference .ckpt with aimg.model.official first)"
        )
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an aimg world-action-model config")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {config['format_version']}; update aimg")
    return config


def load_checkpoint(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Rebuild the model from config.json and load the weights strictly."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    model_cfg = from_dict(ModelConfig, config["model"], f"{directory / CONFIG_NAME}:model")
    sampling = from_dict(SamplingConfig, config["sampling"], f"{directory / CONFIG_NAME}:sampling")
    tensors = load_file(str(directory / WEIGHTS_NAME), device=str(device))
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    with torch.device("meta"):
        model = build_model(model_cfg, init=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k])
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if wrong or missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} does not fit its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(tensors, strict=True, assign=True)
    model.rebuild_rope(device)
    return Checkpoint(model.eval(), model_cfg, sampling, config.get("extra", {}))


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value

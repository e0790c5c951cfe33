"""Atomic training checkpoints that resume bit-exactly.

Layout: `<run>/checkpoints/step_000100/` holds the model (`model.safetensors` + `config.json`,
the format of `aimg.model.checkpoint`) and `trainer_state.pt` (optimiser, LR scheduler, step,
every rank's python/numpy/torch RNG states). A step directory is written under a temporary
name and renamed when complete; `checkpoints/latest` names the newest one and is replaced
atomically; only the last N step directories are kept. `trainer_state.pt` holds tensors and
plain containers only and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_FILE = "trainer_state.pt"
LATEST = "latest"

ModelSaver = Callable[[Path, nn.Module, dict[str, torch.Tensor]], None]


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the message says which and what to do."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states as safe-to-load containers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def default_model_saver(directory: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`model.safetensors` from a full state dict, plus `config.json` for ConfigMixin models."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    if hasattr(model, "save_config"):
        model.save_config(str(directory))


def load_model_file(directory: Path) -> dict[str, torch.Tensor]:
    """The full state dict saved by `default_model_saver` / `aimg.model.checkpoint`."""
    from safetensors.torch import load_file

    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    return load_file(str(path))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(
    checkpoints: Path,
    step: int,
    model: nn.Module,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    keep: int,
    save_model: ModelSaver = default_model_saver,
) -> Path:
    """Write one step directory atomically, point `latest` at it, prune to the last `keep`."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / step_dir_name(step)
    tmp = checkpoints / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(tmp, model, model_state)
    torch.save(trainer_state, tmp / STATE_FILE)
    _replace_dir(tmp, final)
    _write_text_atomic(checkpoints / LATEST, final.name + "\n")
    steps = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The step directory named by `latest`, or None when the run has no checkpoint yet."""
    pointer = checkpoints / LATEST
    if not pointer.is_file():
        return None
    path = checkpoints / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over "
            "or point it at an intact step directory"
        )
    return path


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """`trainer_state.pt` of a step directory, loaded without unpickling code."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    return torch.load(path, map_location="cpu", weights_only=True)

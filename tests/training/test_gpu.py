"""`aimg train` on a CUDA GPU: FSDP2 per block, bf16 autocast, activation checkpointing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from training_fixtures import write_synthetic_episodes, write_tiny_preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _torchrun(*args: str) -> dict:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "aimg", "train", "--device", "cuda", "--no-progress", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_fsdp2_training_on_gpu_checkpoints_and_resumes(tmp_path):
    data = tmp_path / "data"
    write_synthetic_episodes(data, 3, frames=12)
    preset = write_tiny_preset(tmp_path / "tiny.yaml", data, tmp_path / "run")
    first = _torchrun("--config", str(preset), "--max-steps", "3")
    assert first["device"].startswith("cuda") and first["step"] == 3
    second = _torchrun("--config", str(preset), "--max-steps", "6", "--resume")
    assert (second["start_step"], second["step"]) == (3, 6)
    assert second["loss"] == second["loss"]  # finite, not NaN

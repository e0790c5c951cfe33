"""`aimg train` under torchrun: 2 CPU processes (DDP or FSDP2 on gloo) match 1 process and
resume."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from training_fixtures import write_synthetic_episodes, write_tiny_preset

from aimg.training.checkpointing import load_model_file


def _run(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, "--nproc_per_node", str(processes), "-m", "aimg", "train", *args]
    else:
        command = [sys.executable, "-m", "aimg", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_with_resume_match_one_process_with_the_same_global_batch(tmp_path, parallel):
    data = tmp_path / "data"
    write_synthetic_episodes(data, 3, frames=12)
    preset = write_tiny_preset(tmp_path / "tiny.yaml", data, tmp_path / "unused")
    per_rank = tmp_path / "per_rank.yaml"
    per_rank.write_text(
        preset.read_text().replace("batch_size: 2", f"batch_size: 1\n  parallel: {parallel}")
    )

    two = tmp_path / "two"
    common = ["--no-progress", "--run-dir"]
    _run(["--config", str(per_rank), *common, str(two), "--max-steps", "3"], processes=2)
    resumed = _run(
        ["--config", str(per_rank), *common, str(two), "--max-steps", "6", "--resume"],
        processes=2,
    )
    assert '"start_step": 3' in resumed.stdout
    assert '"world_size": 2' in resumed.stdout
    one = tmp_path / "one"
    _run(["--config", str(preset), *common, str(one), "--max-steps", "6"], processes=1)

    a = load_model_file(two / "checkpoints" / "step_000006")
    b = load_model_file(one / "checkpoints" / "step_000006")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)

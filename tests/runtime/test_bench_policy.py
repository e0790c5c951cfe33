"""`aimg bench policy` times every backend in one run and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from artifact_fixtures import SIM_TINY

from aimg.runtime.bench import official_step_benchmark, run_policy_benchmark

pytestmark = pytest.mark.xdist_group("sim_tiny_export")


def test_the_benchmark_reports_each_component_per_backend(sim_tiny_artifact):
    result = run_policy_benchmark(
        SIM_TINY, sim_tiny_artifact, ["torch", "onnxruntime"], repeats=1, threads=1
    )
    assert result["threads"] == 1
    assert set(result["backends"]) == {"torch", "onnxruntime"}
    for timing in result["backends"].values():
        assert timing["denoiser_calls"] == 20
        assert timing["total_s"] >= timing["steps_s"] > 0
        assert timing["encode_s"] > 0 and timing["decode_s"] > 0
    assert result["speedup_vs_torch"]["onnxruntime"] > 0


def test_compiled_backends_need_an_artifact():
    with pytest.raises(ValueError, match="aimg export onnx"):
        run_policy_benchmark(SIM_TINY, None, ["onnxruntime"], repeats=1)


def test_the_official_step_is_skipped_without_a_gpu(repo_root):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the step is measured by the gpu-marked benchmark")
    result = official_step_benchmark(repo_root / "configs" / "official-5b.yaml")
    assert "no CUDA GPU" in result["skipped"]


def test_the_command_prints_json(sim_tiny_artifact):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aimg",
            "bench",
            "policy",
            "--artifact",
            str(sim_tiny_artifact),
            "--repeats",
            "1",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["backends"]) == {"torch", "onnxruntime"}

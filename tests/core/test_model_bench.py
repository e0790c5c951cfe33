"""The model benchmark runs on a preset and reports its shapes (timings are not asserted)."""

from __future__ import annotations

from pathlib import Path

from aimg.model.bench import run_model_benchmark

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_benchmark_reports_steps_for_the_sim_tiny_preset():
    result = run_model_benchmark(CONFIGS / "sim-tiny.yaml", batch=1, repeats=1, threads=1)
    assert result["tokens_per_sample"] == 320
    assert result["parameters"] > 1_000_000
    assert result["train_step_s"] > 0 and result["forward_s"] > 0

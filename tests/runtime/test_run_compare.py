"""`aimg run --sim --compare`: a second model on the same start states, side by side."""

from __future__ import annotations

import json
import shutil

import pytest
import typer
from artifact_fixtures import SIM_TINY
from typer.testing import CliRunner

from aimg.model.config import SamplingConfig
from aimg.runtime.cli import run
from aimg.runtime.sim_run import side_by_side


def _report(steps: int, cfg: float, distilled: bool, success: float, latency: float) -> dict:
    return {
        "model": {  # the keys of the backend's describe()
            "steps": steps,
            "cfg_scale": cfg,
            "evaluations_per_plan": SamplingConfig(
                num_steps=steps, cfg_scale=cfg
            ).evaluations_per_plan,
            "distilled": {"stage": 1} if distilled else None,
        },
        "success_rate": success,
        "final_xy_error_median_m": 0.02,
        "plan_latency_p50_s": latency,
        "plan_latency_p95_s": latency * 1.5,
        "replans_per_episode": 3.0,
        "out_of_limit_commands": 0,
    }


def test_side_by_side_counts_a_guided_step_as_two_evaluations():
    rows = side_by_side(
        {
            "student": _report(16, 1.0, True, 0.8, 0.3),
            "teacher": _report(50, 3.0, False, 0.75, 2.0),
        }
    )
    assert [r["model"] for r in rows] == ["student", "teacher"]
    assert rows[0]["evaluations_per_plan"] == 16 and rows[0]["distilled"]
    assert rows[1]["evaluations_per_plan"] == 100 and not rows[1]["distilled"]
    assert rows[1]["plan_latency_p50_s"] == 2.0 and rows[0]["success_rate"] == 0.8


@pytest.mark.slow
@pytest.mark.xdist_group("cell")
def test_run_compare_runs_both_models_on_the_same_start_states(tmp_path):
    other = tmp_path / "copy-of-sim-tiny"
    shutil.copytree(SIM_TINY, other)
    out = tmp_path / "report.json"
    app = typer.Typer()
    app.command()(run)
    args = ["--sim", "--episodes", "1", "--episode-seconds", "2", "--seed", "31"]
    args += ["--model", str(SIM_TINY), "--compare", str(other), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [row["model"] for row in report["side_by_side"]] == [str(SIM_TINY), str(other)]
    compared = report["compared"][str(other)]
    assert compared["per_episode"][0]["seed"] == report["per_episode"][0]["seed"]
    assert all(row["evaluations_per_plan"] == row["steps"] for row in report["side_by_side"])
    assert result.output.count("plan latency p50") == 3  # the summary line and one per model

"""`aimg eval diagnose`: the per-component error report, on the bundled student and real sim
start states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from aimg.geometry import Camera, intrinsics_matrix, look_at
from aimg.training.cli import evaluate_diagnose
from aimg.training.diagnose import _along_across, _view_errors

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    from aimg.robot.sim.collect import RolloutSettings, collect

    root = tmp_path_factory.mktemp("reach")
    collect(root, RolloutSettings(task="reach", views=2, height=128, width=128), 2, seed=4711)
    return root


def test_the_error_splits_along_and_across_a_cameras_ray():
    camera = Camera(intrinsics_matrix(100, 100, 31.5, 31.5), look_at((1, 0, 0), (0, 0, 0)), 64, 64)
    along, across = _along_across(np.array([-0.01, 0.0, 0.0]), camera, np.zeros(3))
    assert along == pytest.approx(10.0) and across == pytest.approx(0.0, abs=1e-9)
    along, across = _along_across(np.array([0.0, 0.02, 0.0]), camera, np.zeros(3))
    assert along == pytest.approx(0.0, abs=1e-9) and across == pytest.approx(20.0)


def test_view_errors_read_a_displaced_blob_in_pixels_and_millimetres():
    from aimg.codec.render import render

    camera = Camera(
        intrinsics_matrix(100, 100, 31.5, 31.5), look_at((1, 0, 0.3), (0, 0, 0)), 64, 64
    )
    pose = np.array([[0.0, 0.0, 0.0, np.pi, 0.0, 0.0, 1.0]])
    images = render(pose, [camera], 64, 64, 0.125)
    exact_px, _ = _view_errors(images, [camera], pose[0, :3], 0.125)
    assert exact_px[0] < 0.2
    moved = pose[0, :3] + np.array([0.0, 0.01, 0.0])  # 1 cm across the ray at ~1 m
    px, mm = _view_errors(images, [camera], moved, 0.125)
    assert 0.7 < px[0] < 1.3 and 8.0 < mm[0] < 12.0


def test_diagnose_reports_every_component(starts, tmp_path):
    app = typer.Typer()
    app.command()(evaluate_diagnose)
    out = tmp_path / "diagnosis.json"
    result = CliRunner().invoke(
        app,
        [
            "--checkpoint", str(REPO_ROOT / "assets" / "sim-tiny-4"), "--data", str(starts),
            "--episodes", "2", "--samples", "2", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["episodes"] == 2 and summary["samples"] == 2
    assert summary["codec_mm"]["median"] < 2.0  # the expert's own poses decode back
    assert len(summary["view_px"]) == 2 and all(v["n"] == 4 for v in summary["view_px"])
    for key in ("one_draw_mm", "mean_of_draws_mm", "spread_mm", "view_disagreement_px"):
        assert summary[key]["median"] >= 0.0
    report = json.loads(out.read_text())
    assert len(report["episodes"]) == 2 and len(report["episodes"][0]["draw_mm"]) == 2
    one = CliRunner().invoke(app, ["--checkpoint", "x", "--data", str(starts), "--samples", "1"])
    assert one.exit_code != 0

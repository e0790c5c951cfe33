"""`aimg calib`: registered with `aimg`, helpful without a simulator, and the sim check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aimg.calib.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_aimg_lists_the_calib_commands():
    out = subprocess.run(
        [sys.executable, "-m", "aimg", "calib", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in (
        "handeye", "check", "study", "intrinsics", "latency", "reference", "show", "board",
        "scene-study",
    ):  # fmt: skip
        assert command in out


def _flat(output: str) -> str:
    """Typer's error box wraps lines: the text without the box and the line breaks."""
    return " ".join(output.replace("│", " ").split())


def test_handeye_refuses_a_sim_config_and_says_what_to_run(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "configs" / "cell-sim.yaml").read_text())
    data["model"]["path"] = str(REPO_ROOT / "assets" / "sim-tiny")
    config = tmp_path / "cell.yaml"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["handeye", "--config", str(config)])
    assert result.exit_code != 0
    text = _flat(result.output)
    assert "calib handeye --sim" in text and "calib reference --config" in text


def test_handeye_and_check_say_which_cell_to_give(tmp_path):
    for command in (["handeye"], ["check"]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0
        assert "--config CELL" in _flat(result.output)
    missing = runner.invoke(app, ["handeye", "--config", str(tmp_path / "nope.yaml")])
    # a long path may wrap anywhere in the box
    assert missing.exit_code != 0 and "nope.yaml" in "".join(_flat(missing.output).split())


def test_check_refuses_a_file_that_is_not_a_calibration(tmp_path):
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text("hello: world\n")
    result = runner.invoke(app, ["check", "--calibration", str(bogus), "--sim"])
    assert result.exit_code != 0
    assert "not an aimg calibration file" in result.output


@pytest.mark.slow
def test_check_passes_then_names_a_knocked_camera(calibrated):
    ok = runner.invoke(app, ["check", "--calibration", str(calibrated.path), "--sim"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.splitlines()[-1])["ok"] is True
    name = sorted(calibrated.truth)[0]
    args = ["check", "--calibration", str(calibrated.path), "--sim", "--move-camera", name]
    knocked = runner.invoke(app, [*args, "--move-mm", "10"])
    assert knocked.exit_code == 1
    assert f"camera '{name}' moved" in knocked.output


@pytest.mark.slow
def test_handeye_sim_writes_the_file_and_prints_residuals(tmp_path):
    out = tmp_path / "one.yaml"
    args = ["handeye", "--sim", "--seed", "5", "--cameras", "1", "--poses-per-camera", "8"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["out"] == str(out) and out.is_file()
    assert (tmp_path / "one.cam0.overlay.png").is_file()
    assert report["cameras"]["cam0"]["validation"]["rms_px"] < 1.0


def test_board_prints_at_true_size_and_is_detected(tmp_path):
    import numpy as np
    from PIL import Image

    from aimg.calib.board import BoardDetector, BoardSpec

    out = tmp_path / "board.png"
    result = runner.invoke(app, ["board", "--out", str(out), "--dpi", "150"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    with Image.open(out) as image:
        assert abs(image.info["dpi"][0] - 150) < 0.1  # PNG stores dots per metre
        width_px = image.size[0]
        pixels = np.asarray(image.convert("RGB").resize((700, 500)))
    # 7 squares of 35 mm plus half a square of margin each side
    assert abs(width_px / 150 * 25.4 - 8 * 35.0) < 1.0
    assert abs(report["size_mm"][0] - 8 * 35.0) < 1.0
    assert len(BoardDetector(BoardSpec()).detect(pixels)) == BoardSpec().num_corners


def test_scene_study_reports_every_case_right_for_the_models_cameras():
    result = runner.invoke(app, ["scene-study", "--size", "64", "--views", "2"])
    assert result.exit_code == 0, result.output
    cameras = json.loads(result.output.splitlines()[-1])["cameras"]
    for name in ("left", "right"):
        for case, got in cameras[name].items():
            assert got["right"] == got["of"], (name, case, got)
        assert cameras[name]["still"]["view_shift_deg"][1] < 0.1
        assert cameras[name]["1 cm"]["view_shift_deg"][0] > 0.3

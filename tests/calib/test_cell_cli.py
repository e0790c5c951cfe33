"""`aimg calib reference` and `aimg calib show` on the daemon's simulated cell config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from aimg.calib.calibration_file import read_calibration
from aimg.calib.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def sim_config(tmp_path: Path, **extra) -> Path:
    """The daemon's sim cell at 64 px (the test daemons' size) with the bundled model."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "cell-sim.yaml").read_text())
    data["devices"]["sim"]["image_size"] = 64
    data["model"]["path"] = str(REPO_ROOT / "assets" / "sim-tiny")
    data.update(extra)
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _json(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_reference_writes_a_calibration_with_scene_references(tmp_path):
    config = sim_config(tmp_path)
    out = tmp_path / "cal" / "cell.yaml"
    result = runner.invoke(app, ["reference", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = _json(result.output)
    assert report["calibration"] == str(out)
    assert f"set `calibration: {out}`" in result.output
    calibration = read_calibration(out)
    assert sorted(calibration.records) == ["left", "right"]
    for name, record in calibration.records.items():
        assert record.method == "sim-exact" and record.width == 64
        picture = np.asarray(Image.open(calibration.resolve(record.scene_reference)))
        assert picture.shape == (64, 64, 4)
        assert report["cameras"][name]["self_check"]["ok"]
        assert 0.4 < report["cameras"][name]["static_fraction"] < 0.98

    # again, now with the file in the config: it updates the file in place
    config = sim_config(tmp_path, calibration=str(out))
    result = runner.invoke(app, ["reference", "--config", str(config), "--poses", "2"])
    assert result.exit_code == 0, result.output
    assert _json(result.output)["calibration"] == str(out)
    assert "now set" not in result.output


def test_show_draws_the_tool_axes_and_workspace_on_every_camera(tmp_path):
    out = tmp_path / "show.png"
    result = runner.invoke(app, ["show", "--config", str(sim_config(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _json(result.output) == {"picture": str(out), "cameras": ["left", "right"]}
    picture = np.asarray(Image.open(out))
    assert picture.shape == (64, 128, 3)
    yellow = (picture[..., 0] > 200) & (picture[..., 1] > 170) & (picture[..., 2] < 80)
    red = (picture[..., 0] > 180) & (picture[..., 1] < 90) & (picture[..., 2] < 90)
    for half in (slice(0, 64), slice(64, 128)):
        assert yellow[:, half].sum() > 20  # the workspace box
        assert red[:, half].sum() > 2  # the tool's x axis


def test_reference_refuses_a_calibration_for_other_cameras(tmp_path):
    config = sim_config(tmp_path)
    out = tmp_path / "cal.yaml"
    assert (
        runner.invoke(app, ["reference", "--config", str(config), "--out", str(out)]).exit_code == 0
    )
    three = sim_config(tmp_path, calibration=str(out))
    data = yaml.safe_load(three.read_text())
    data["devices"]["sim"]["views"] = 3
    three.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["reference", "--config", str(three)])
    assert result.exit_code == 1
    assert "is for cameras ['left', 'right'], but this cell has ['front', 'left', 'right']" in (
        result.output
    )


def test_check_on_a_cell_config_runs_the_daemons_scene_check(tmp_path):
    out = tmp_path / "cal.yaml"
    config = sim_config(tmp_path)
    assert (
        runner.invoke(app, ["reference", "--config", str(config), "--out", str(out)]).exit_code == 0
    )
    config = sim_config(tmp_path, calibration=str(out))
    still = runner.invoke(app, ["check", "--config", str(config)])
    assert still.exit_code == 0, still.output
    report = _json(still.output)
    assert report["ok"] and {c["camera"] for c in report["cameras"]} == {"left", "right"}
    turned = runner.invoke(
        app, ["check", "--config", str(config), "--move-camera", "right", "--turn-deg", "1"]
    )
    assert turned.exit_code == 1
    assert "camera 'right' moved" in turned.output and "camera 'left' moved" not in turned.output

"""The daemon's calibration check before every task: a sim camera knocked by 1 deg or 1 cm
refuses the next task, with the camera named in the reply and in the status; put back, the
cell takes tasks again. A real daemon (subprocess, HTTP), its sim cell and the bundled model."""

from __future__ import annotations

import dataclasses
import time

import pytest
import yaml
from daemon_fixtures import CHEAP_CELL, REPO_ROOT, START_TIMEOUT_S, run_daemon
from typer.testing import CliRunner

from aimg.calib.cli import app as calib_app

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cell")]


def _reference(tmp_path):
    """`aimg calib reference` on the same sim cell the test daemon runs (64 px, two views)."""
    data = yaml.safe_load((REPO_ROOT / "configs" / "cell-sim.yaml").read_text())
    data["devices"]["sim"]["image_size"] = CHEAP_CELL["devices.sim.image_size"]
    data["model"]["path"] = CHEAP_CELL["model.path"]
    config = tmp_path / "cell.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "calibration" / "cell.yaml"
    result = CliRunner().invoke(
        calib_app, ["reference", "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def _knock(daemon, camera, translation_m=(0.0, 0.0, 0.0), rotation_deg=(0.0, 0.0, 0.0)):
    response = daemon.post(
        f"/sim/cameras/{camera}/knock",
        {"translation_m": list(translation_m), "rotation_deg": list(rotation_deg)},
    )
    assert response.status_code == 200, response.text
    time.sleep(1.0)  # a few frames at 5 fps: the newest frame shows the knock


def _refused_for(daemon, camera, other):
    response = daemon.post("/tasks", {"instruction": "reach the red cube"})
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert f"camera '{camera}' moved" in detail and other not in detail
    calibration = daemon.status()["calibration"]
    assert calibration["checked"] and calibration["ok"] is False
    assert f"camera '{camera}' moved" in calibration["summary"]
    verdicts = {v["camera"]: v for v in calibration["cameras"]}
    assert not verdicts[camera]["ok"] and verdicts[other]["ok"]
    assert daemon.status()["state"] == "idle"  # refused, not faulted: nothing to reset


def test_a_knocked_camera_refuses_the_task_and_is_named(tmp_path):
    calibration = _reference(tmp_path)
    with run_daemon(tmp_path / "daemon", {"calibration": str(calibration)}) as daemon:
        status = daemon.status()
        assert status["calibration"]["summary"] == "checked before every task"

        _knock(daemon, "left", rotation_deg=(1.0, 0.0, 0.0))
        _refused_for(daemon, "left", "right")

        _knock(daemon, "left")
        _knock(daemon, "right", translation_m=(0.0, 0.01, 0.0))
        _refused_for(daemon, "right", "left")

        _knock(daemon, "right")
        response = daemon.post("/tasks", {"instruction": "reach the red cube"})
        assert response.status_code == 202, response.text
        calibration_status = daemon.status()["calibration"]
        assert calibration_status["ok"] is True
        assert calibration_status["summary"] == "calibration ok (2 cameras unmoved)"
        daemon.make_idle()

        assert daemon.post("/sim/cameras/nope/knock", {}).status_code == 404
        bad = daemon.post("/sim/cameras/left/knock", {"rotation_deg": [90, 0, 0]})
        assert bad.status_code == 422


def test_a_calibration_without_scene_references_stops_the_daemon_at_start(tmp_path):
    """The check would silently not run: the daemon says so and exits, unless it is off."""
    from aimg.calib.calibration_file import read_calibration, write_calibration
    from aimg.runtime.daemon_bench import spawn_daemon, wait_healthy

    calibration = _reference(tmp_path)
    bare = read_calibration(calibration)
    records = {n: dataclasses.replace(r, scene_reference=None) for n, r in bare.records.items()}
    write_calibration(calibration, dataclasses.replace(bare, records=records))
    config = REPO_ROOT / "configs" / "cell-sim.yaml"
    overrides = {**CHEAP_CELL, "calibration": str(calibration)}
    process, url, log_path = spawn_daemon(config, tmp_path / "d", "t" * 24, overrides)
    with pytest.raises(RuntimeError, match="no static-scene reference") as failed:
        wait_healthy(process, url, log_path, START_TIMEOUT_S)
    assert "aimg calib reference" in str(failed.value)
    assert process.wait(30) == 1

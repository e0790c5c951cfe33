"""The calibration commands on a real cell's config (`devices.kind: xarm`) with the devices it
can have here: the unmodified xArm SDK against the loopback controller emulator, and RealSense
cameras replayed by librealsense from an `aimg realsense record` directory."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from aimg.calib.calibration_file import read_calibration
from aimg.calib.cli import app
from aimg.robot.remote import RemoteDevice, spawn_server

rs = pytest.importorskip("pyrealsense2")
pytest.importorskip("xarm.wrapper")
from recorded_cell import record_cameras, write_rig_calibration  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("cell"),
    pytest.mark.usefixtures("port_502"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
runner = CliRunner()


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A recording of two software cameras, a calibration placing them, the emulator, and the
    cell config tying them together."""
    from aimg.robot.xarm.emulator import make_emulator_devices

    tmp = tmp_path_factory.mktemp("real-cell-calib")
    serials = record_cameras(tmp / "recording", SIZE)
    write_rig_calibration(tmp / "calibration.yaml", serials, SIZE)
    channel = spawn_server(functools.partial(make_emulator_devices, host=None))
    emulator = RemoteDevice(channel, "emulator")
    config = tmp / "cell.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "emulated-xarm-cell",
                "devices": {
                    "kind": "xarm",
                    "xarm": {"ip": emulator.call("host")},
                    "camera_recording": str(tmp / "recording"),
                },
                "calibration": str(tmp / "calibration.yaml"),
                "model": {"path": str(REPO_ROOT / "assets" / "sim-tiny")},
            }
        )
    )
    try:
        yield config, tmp
    finally:
        channel.close()


def _json(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("{")))


def test_show_draws_through_the_sdk_pose_and_the_recorded_cameras(cell):
    config, tmp = cell
    out = tmp / "show.png"
    result = runner.invoke(app, ["show", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _json(result.output)["cameras"] == ["front", "side"]
    picture = np.asarray(Image.open(out))
    assert picture.shape == (SIZE, 2 * SIZE, 3)
    yellow = (picture[..., 0] > 200) & (picture[..., 1] > 170) & (picture[..., 2] < 80)
    assert yellow[:, :SIZE].any() and yellow[:, SIZE:].any()  # the workspace box on both


def test_reference_moves_the_arm_through_the_sdk_and_writes_the_references(cell):
    config, tmp = cell
    result = runner.invoke(app, ["reference", "--config", str(config), "--poses", "2"])
    # the recorded test pattern changes every frame, so its self-check may refuse it; the
    # references must be written either way
    assert result.exit_code in (0, 1), result.output
    assert "reference failed" not in result.output, result.output
    calibration = read_calibration(tmp / "calibration.yaml")
    for name, record_ in calibration.records.items():
        assert record_.scene_reference == f"calibration.{name}.scene.png"
        assert calibration.resolve(record_.scene_reference).is_file()
        assert record_.serial in ("311111111111", "322222222222")  # the rest is kept

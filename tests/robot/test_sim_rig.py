"""`aimg sim rig`: the standard sim rig's exact calibration, optionally moved by a known amount."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from aimg.calib.calibration_file import read_calibration
from aimg.geometry import rotation_angle_between
from aimg.robot.cli import app
from aimg.robot.sim.cameras import default_camera_specs


def _rig(tmp_path, *args):
    out = tmp_path / "rig.yaml"
    result = CliRunner().invoke(app, ["rig", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["out"] == str(out)
    return read_calibration(out).cameras()


def test_an_unmoved_rig_is_the_standard_placement(tmp_path):
    cameras = _rig(tmp_path, "--views", "3", "--size", "96")
    specs = default_camera_specs(3)
    assert sorted(cameras) == sorted(spec.name for spec in specs)
    for spec in specs:
        expected = spec.camera(96, 96)
        np.testing.assert_allclose(cameras[spec.name].c2w, expected.c2w, atol=1e-8)
        np.testing.assert_allclose(cameras[spec.name].K, expected.K, atol=1e-8)


def test_every_camera_moves_and_turns_by_exactly_the_asked_amount(tmp_path):
    cameras = _rig(tmp_path, "--move-cm", "3", "--turn-deg", "2", "--seed", "5")
    moves = []
    for spec in default_camera_specs(2):
        standard, moved = spec.camera(128, 128), cameras[spec.name]
        shift = np.linalg.norm(moved.c2w[:3, 3] - standard.c2w[:3, 3])
        turn = np.degrees(rotation_angle_between(moved.c2w[:3, :3], standard.c2w[:3, :3]))
        assert abs(shift - 0.03) < 1e-6 and abs(turn - 2.0) < 1e-5
        moves.append(moved.c2w[:3, 3] - standard.c2w[:3, 3])
    assert not np.allclose(moves[0], moves[1])  # each camera in its own direction
    again = _rig(tmp_path, "--move-cm", "3", "--turn-deg", "2", "--seed", "5")
    other = _rig(tmp_path, "--move-cm", "3", "--turn-deg", "2", "--seed", "6")
    np.testing.assert_allclose(again["left"].c2w, cameras["left"].c2w, atol=1e-9)
    assert not np.allclose(other["left"].c2w, cameras["left"].c2w)

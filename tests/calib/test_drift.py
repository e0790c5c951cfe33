"""Drift check in the simulated cell: moved cameras are refused by name, unmoved ones pass."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.calibration_file import CalibrationFileError, read_calibration
from aimg.calib.drift import check_drift

pytestmark = pytest.mark.slow


def test_unmoved_cameras_pass(calibrated, make_cell):
    with make_cell() as cell:
        report = check_drift(read_calibration(calibrated.path), cell.arm, cell.rig, cell.wait)
    assert report.ok, report.summary()
    for verdict in report.verdicts.values():
        assert verdict.translation_mm < 0.5 and verdict.rotation_deg < 0.05


def test_a_camera_moved_1cm_and_one_turned_1deg_are_refused_by_name(calibrated, make_cell):
    with make_cell() as cell:
        moved, turned = cell.rig.view_names
        along_axis = cell.rig.cameras[moved].c2w[:3, 2]  # towards the board: the hardest way
        cell.move_camera(moved, 0.01 * along_axis, np.zeros(3))
        cell.move_camera(turned, np.zeros(3), np.radians([0.0, 1.0, 0.0]))
        report = check_drift(read_calibration(calibrated.path), cell.arm, cell.rig, cell.wait)
    assert not report.ok
    assert set(report.failed) == {moved, turned}
    assert report.verdicts[moved].translation_mm > 5.0
    assert report.verdicts[turned].rotation_deg > 0.5
    assert f"camera '{moved}' moved" in report.summary()
    assert f"camera '{turned}' moved" in report.summary()


def test_a_camera_turned_away_from_the_board_is_refused(calibrated, make_cell):
    with make_cell() as cell:
        name = cell.rig.view_names[0]
        cell.move_camera(name, np.zeros(3), np.radians([0.0, 35.0, 0.0]))
        report = check_drift(read_calibration(calibrated.path), cell.arm, cell.rig, cell.wait)
    assert report.failed == [name]
    assert "board not found" in report.verdicts[name].reason


def test_a_file_for_other_cameras_is_refused_before_moving(calibrated, make_cell):
    with make_cell(num_cameras=3) as cell:
        start = cell.arm.read_state().tool_pose
        with pytest.raises(CalibrationFileError, match="is for cameras"):
            check_drift(read_calibration(calibrated.path), cell.arm, cell.rig, cell.wait)
        np.testing.assert_allclose(cell.arm.read_state().tool_pose, start, atol=1e-9)

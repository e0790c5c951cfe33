"""A simulated cell calibrated once per session (a calibration takes ~15 s), shared by the
tests that only read its views, file and errors; tests that move cameras rebuild the cell."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

CELL_SEED = 7
CELL_CAMERAS = 2
POSES_PER_CAMERA = 10


def make_cell(seed: int = CELL_SEED, num_cameras: int = CELL_CAMERAS):
    from aimg.calib.sim import SimCalibrationCell

    return SimCalibrationCell(seed=seed, num_cameras=num_cameras)


def quick_motion(cell, seed: int):
    from aimg.calib.handeye import MotionSettings

    return MotionSettings(
        workspace_low=cell.config.workspace_low,
        workspace_high=cell.config.workspace_high,
        poses_per_camera=POSES_PER_CAMERA,
        seed=seed,
    )


@dataclass
class Calibrated:
    run: object  # aimg.calib.session.SimRun
    path: Path
    intrinsics: dict
    board: object
    truth: dict  # camera name -> true c2w
    true_mount: object


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory) -> Calibrated:
    import numpy as np

    from aimg.calib.session import calibrate_sim

    path = tmp_path_factory.mktemp("calibration") / "cell.yaml"
    with make_cell() as cell:
        run = calibrate_sim(cell, path, quick_motion(cell, CELL_SEED))
        return Calibrated(
            run=run,
            path=path,
            intrinsics={name: (cam, np.zeros(5)) for name, cam in cell.rig.cameras.items()},
            board=cell.board,
            truth={name: cam.c2w for name, cam in cell.rig.cameras.items()},
            true_mount=cell.true_tool_T_board,
        )


@pytest.fixture(name="make_cell")
def make_cell_fixture():
    """`make_cell(seed, num_cameras)`: a new simulated cell (close it, or use `with`)."""
    return make_cell


@pytest.fixture(name="quick_motion")
def quick_motion_fixture():
    """`quick_motion(cell, seed)`: the tests' shorter scripted motion for a cell."""
    return quick_motion

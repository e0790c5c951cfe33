"""One hand-eye calibration end to end: motion, solve, then the calibration file with a
reference image and an overlay picture per camera next to it; and the simulated cell's run of
the same, scored against ground truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aimg.atomic_files import write_png_atomic
from aimg.calib.board import BoardSpec
from aimg.calib.calibration_file import (
    CalibrationFile,
    CameraCalibration,
    ReferenceFrame,
    now_iso,
    write_calibration,
)
from aimg.calib.handeye import (
    HandEyeResult,
    HandEyeSettings,
    MotionSettings,
    run_motion,
    solve,
)
from aimg.calib.overlay import draw_overlay

if TYPE_CHECKING:
    from aimg.calib.cell_devices import CellDevices
    from aimg.calib.sim import SimCalibrationCell
    from aimg.geometry import Camera


def save_result(
    result: HandEyeResult,
    out: Path,
    board: BoardSpec,
    source: str,
    serials: Mapping[str, str] | None = None,
    workspace: tuple[np.ndarray, np.ndarray] | None = None,
) -> CalibrationFile:
    """Write `out` (YAML) plus `<stem>.<camera>.reference.png` / `.overlay.png` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    date = now_iso()
    method = f"{result.method}+refine" if result.refined else result.method
    object_points = board.corner_points()
    records = {}
    for name, sol in result.cameras.items():
        references = []
        for k, index in enumerate(sol.reference_indices):
            view = result.views[index]
            image_name = f"{out.stem}.{name}.reference{k}.png"
            write_png_atomic(out.parent / image_name, view.images[name])
            references.append(ReferenceFrame(image_name, view.tool_pose, view.detections[name]))
        view = result.views[sol.reference_indices[0]]
        board_pose = view.tool_pose @ result.tool_T_board
        overlay = draw_overlay(
            view.images[name],
            sol.camera,
            sol.distortion,
            tool_pose=view.tool_pose,
            workspace=workspace,
            board_corners_base=object_points @ board_pose[:3, :3].T + board_pose[:3, 3],
            detection=view.detections[name],
        )
        write_png_atomic(out.parent / f"{out.stem}.{name}.overlay.png", overlay)
        records[name] = CameraCalibration(
            name=name,
            serial=(serials or {}).get(name, name),
            K=sol.camera.K,
            distortion=sol.distortion,
            c2w=sol.camera.c2w,
            width=sol.camera.width,
            height=sol.camera.height,
            date=date,
            method=method,
            residuals={
                "train": sol.train.to_dict(),
                "validation": sol.validation.to_dict(),
                "views_seen": sol.views_seen,
                "views_rejected": sol.views_rejected,
            },
            references=tuple(references),
        )
    calibration = CalibrationFile(records, board, result.tool_T_board, source, out)
    write_calibration(out, calibration)
    return calibration


@dataclass
class SimRun:
    """A simulated calibration and how far it is from the truth (mm, deg per camera)."""

    result: HandEyeResult
    errors: dict[str, dict]
    mount_error: dict
    motion_sim_s: float
    wall_s: float
    calibration: CalibrationFile | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        cams = self.result.cameras
        return {
            "cameras": {
                name: {
                    "error": self.errors[name],
                    "train": cams[name].train.to_dict(),
                    "validation": cams[name].validation.to_dict(),
                }
                for name in cams
            },
            "mount_error": self.mount_error,
            "motion_sim_s": round(self.motion_sim_s, 1),
            "wall_s": round(self.wall_s, 1),
        }


def sim_source(seed: int, num_cameras: int) -> str:
    return f"sim seed={seed} cameras={num_cameras}"


def parse_sim_source(source: str) -> tuple[int, int]:
    """(seed, cameras) from `sim_source`'s string; ValueError for a file from a real cell."""
    fields = dict(part.split("=", 1) for part in source.split()[1:] if "=" in part)
    if not source.startswith("sim ") or "seed" not in fields or "cameras" not in fields:
        raise ValueError(f"calibration source {source!r} is not a simulated cell")
    return int(fields["seed"]), int(fields["cameras"])


def calibrate_sim(
    cell: SimCalibrationCell,
    out: Path | None = None,
    motion: MotionSettings | None = None,
    settings: HandEyeSettings | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SimRun:
    """Calibrate a `SimCalibrationCell` (lock-step time), score it, optionally write `out`."""
    start = time.monotonic()
    motion = motion or MotionSettings(
        workspace_low=cell.config.workspace_low, workspace_high=cell.config.workspace_high
    )
    sim_start = cell.world.time_s
    views, skipped = run_motion(
        cell.arm,
        cell.rig,
        cell.board,
        cell.nominal_tool_T_board,
        cell.wait,
        motion,
        on_progress=on_progress,
    )
    motion_s = cell.world.time_s - sim_start
    intrinsics = {name: (cam, np.zeros(5)) for name, cam in cell.rig.cameras.items()}
    result = solve(views, intrinsics, cell.board, settings)
    result.motion_seconds = motion_s
    estimates = {name: sol.camera for name, sol in result.cameras.items()}
    errors = {name: e.to_dict() for name, e in cell.camera_errors(estimates).items()}
    for name, px in cell.reprojection_errors(estimates).items():
        errors[name]["workspace_px"] = round(px, 3)
    calibration = None
    if out is not None:
        calibration = save_result(
            result,
            out,
            cell.board,
            sim_source(cell.seed, len(cell.specs)),
            workspace=(
                np.asarray(cell.config.workspace_low),
                np.asarray(cell.config.workspace_high),
            ),
        )
    return SimRun(
        result=result,
        errors=errors,
        mount_error=cell.mount_error(result.tool_T_board).to_dict(),
        motion_sim_s=motion_s,
        wall_s=time.monotonic() - start,
        calibration=calibration,
        skipped=skipped,
    )


def calibrate_cell(
    devices: CellDevices,
    out: Path,
    motion: MotionSettings,
    settings: HandEyeSettings | None = None,
    intrinsics: Mapping[str, tuple[Camera, np.ndarray]] | None = None,
    board: BoardSpec | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[HandEyeResult, CalibrationFile, dict[str, str]]:
    """Hand-eye calibration of a real cell (board on the gripper, `flag_mount`): the scripted
    motion, the solve with `intrinsics` (default: the devices' own), then the file with the
    cameras' serials, reference images and overlays. Returns the result, the file and the
    cameras the motion could not aim at (name -> why)."""
    from aimg.calib.cell_devices import device_intrinsics
    from aimg.calib.handeye import flag_mount

    board = board or BoardSpec()
    views, skipped = run_motion(
        devices.arm,
        devices.rig,
        board,
        flag_mount(board),
        devices.wait,
        motion,
        on_progress=on_progress,
    )
    result = solve(views, intrinsics or device_intrinsics(devices.rig), board, settings)
    config = devices.config
    serials = {c.name: c.serial for c in config.devices.cameras}
    ip = config.devices.xarm.ip if config.devices.xarm is not None else "?"
    calibration = save_result(
        result, out, board, f"xarm {ip} cell {config.name}", serials, devices.workspace
    )
    return result, calibration, skipped

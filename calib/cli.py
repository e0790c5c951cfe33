"""`aimg calib ...`: hand-eye calibration of static cameras, drift checks, the sim study."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from aimg.calib.cell_cli import reference, show

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(
    help="Camera calibration: ChArUco hand-eye (board on the gripper), drift checks.",
    no_args_is_help=True,
)

_REAL_CELL = (
    "calibrating a real cell needs the xArm and RealSense drivers (aimg.robot.xarm, "
    "aimg.robot.realsense) wired to a cell config, which this version does not do yet: "
    "use --sim for the simulated cell"
)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


def _require_real_drivers() -> None:
    try:
        import aimg.robot.realsense  # noqa: F401
        import aimg.robot.xarm  # noqa: F401
    except ImportError as exc:
        raise typer.BadParameter(f"{_REAL_CELL} ({exc})") from exc
    raise typer.BadParameter(_REAL_CELL)


@app.command()
def handeye(
    sim: bool = typer.Option(False, "--sim", help="Calibrate the simulated cell (PyBullet)."),
    config: Path = typer.Option(None, help="Cell config of a real cell (needs the drivers)."),
    seed: int = typer.Option(0, help="Sim: cell seed (camera placements, board mount)."),
    cameras: int = typer.Option(3, min=1, max=4, help="Sim: number of random cameras."),
    out: Path = typer.Option(Path("calibration.yaml"), help="Calibration file to write."),
    method: str = typer.Option("park", help="tsai, park, horaud, andreff, daniilidis, shah, li."),
    refine: bool = typer.Option(True, help="Joint reprojection refinement after the solver."),
    poses_per_camera: int = typer.Option(14, min=4, help="Aimed poses per camera."),
) -> None:
    """Move the board through a scripted motion, solve camera-to-base poses, write the file,
    a reference image and an overlay per camera; prints a JSON residual report."""
    from aimg.calib.handeye import CalibrationError, HandEyeSettings, MotionSettings

    if not sim:
        if config is None:
            raise typer.BadParameter("give --sim, or --config CELL for a real cell")
        _require_real_drivers()
    from aimg.calib.session import calibrate_sim
    from aimg.calib.sim import SimCalibrationCell

    try:
        settings = HandEyeSettings(method=method, refine=refine)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with SimCalibrationCell(seed=seed, num_cameras=cameras) as cell, _progress() as progress:
        motion = MotionSettings(
            workspace_low=cell.config.workspace_low,
            workspace_high=cell.config.workspace_high,
            poses_per_camera=poses_per_camera,
            seed=seed,
        )
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                label = "sweep" if stage == "sweep" else f"aim at {stage}"
                bars[stage] = progress.add_task(label, total=total)
            progress.update(bars[stage], completed=done + 1)

        try:
            run = calibrate_sim(cell, out, motion, settings, on_progress=on_progress)
        except CalibrationError as exc:
            typer.echo(f"calibration failed: {exc}", err=True)
            raise typer.Exit(1) from exc
    report = run.to_dict()
    report["out"] = str(out)
    typer.echo(json.dumps(report))


@app.command()
def check(
    calibration: Path = typer.Option(..., help="Calibration file written by `calib handeye`."),
    sim: bool = typer.Option(False, "--sim", help="Check the simulated cell it came from."),
    config: Path = typer.Option(None, help="Cell config of a real cell (needs the drivers)."),
    move_camera: str = typer.Option(None, help="Sim: knock this camera before the check."),
    move_mm: float = typer.Option(0.0, help="Sim: shift the knocked camera along base x (mm)."),
    turn_deg: float = typer.Option(0.0, help="Sim: turn the knocked camera about its x (deg)."),
    max_mm: float = typer.Option(5.0, help="Refuse a camera that moved more than this (mm)."),
    max_deg: float = typer.Option(0.5, help="Refuse a camera that turned more than this (deg)."),
) -> None:
    """Drift check: exit 0 when every camera is where it was calibrated, 1 (naming the moved
    cameras) otherwise; prints a JSON report."""
    import numpy as np

    from aimg.calib.calibration_file import CalibrationFileError, read_calibration
    from aimg.calib.drift import DriftThresholds, check_drift

    try:
        cal = read_calibration(calibration)
    except CalibrationFileError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not sim:
        if config is None:
            raise typer.BadParameter("give --sim, or --config CELL for a real cell")
        _require_real_drivers()
    from aimg.calib.session import parse_sim_source
    from aimg.calib.sim import SimCalibrationCell

    try:
        seed, cameras = parse_sim_source(cal.source)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{calibration}: {exc}; --sim needs a simulated cell's file"
        ) from exc
    thresholds = DriftThresholds(translation_mm=max_mm, rotation_deg=max_deg)
    with SimCalibrationCell(seed=seed, num_cameras=cameras) as cell:
        if move_camera is not None:
            if move_camera not in cell.rig.view_names:
                raise typer.BadParameter(
                    f"no camera {move_camera!r}; the cell has {list(cell.rig.view_names)}"
                )
            cell.move_camera(
                move_camera, [move_mm / 1000.0, 0.0, 0.0], [np.radians(turn_deg), 0.0, 0.0]
            )
        try:
            report = check_drift(cal, cell.arm, cell.rig, cell.wait, thresholds)
        except CalibrationFileError as exc:
            raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(report.to_dict()))
    if not report.ok:
        typer.echo(report.summary(), err=True)
        raise typer.Exit(1)


app.command()(reference)
app.command()(show)


@app.command()
def study(
    cells: int = typer.Option(10, min=1, help="Randomised simulated cells to calibrate."),
    seed: int = typer.Option(0, help="First cell seed; cell i uses seed + i."),
    cameras: int = typer.Option(3, min=1, max=4, help="Cameras per cell."),
    method: str = typer.Option("park", help="Hand-eye method (see `calib handeye`)."),
) -> None:
    """Calibrate several randomised sim cells; print JSON: per-camera extrinsic errors against
    ground truth (median, max; mm, deg) and the time per calibration."""
    from aimg.calib.handeye import CalibrationError, HandEyeSettings, MotionSettings
    from aimg.calib.session import calibrate_sim
    from aimg.calib.sim import SimCalibrationCell

    runs, failures = [], []
    with _progress() as progress:
        bar = progress.add_task("cells", total=cells)
        for i in range(cells):
            with SimCalibrationCell(seed=seed + i, num_cameras=cameras) as cell:
                motion = MotionSettings(
                    workspace_low=cell.config.workspace_low,
                    workspace_high=cell.config.workspace_high,
                    seed=seed + i,
                )
                try:
                    run = calibrate_sim(cell, None, motion, HandEyeSettings(method=method))
                except CalibrationError as exc:
                    failures.append({"seed": seed + i, "error": str(exc)})
                    progress.advance(bar)
                    continue
            runs.append({"seed": seed + i, **run.to_dict()})
            progress.advance(bar)
    if not runs:
        typer.echo(json.dumps({"failures": failures}))
        raise typer.Exit(1)
    mm = [c["error"]["translation_mm"] for r in runs for c in r["cameras"].values()]
    deg = [c["error"]["rotation_deg"] for r in runs for c in r["cameras"].values()]
    px = [c["error"]["workspace_px"] for r in runs for c in r["cameras"].values()]
    wall = [r["wall_s"] for r in runs]
    motion_s = [r["motion_sim_s"] for r in runs]
    summary = {
        "cells": cells,
        "failed_cells": len(failures),
        "cameras": len(mm),
        "translation_mm": {"median": statistics.median(mm), "max": max(mm)},
        "rotation_deg": {"median": statistics.median(deg), "max": max(deg)},
        "workspace_px": {"median": statistics.median(px), "max": max(px)},
        "wall_s_per_calibration": {"median": statistics.median(wall), "max": max(wall)},
        "scripted_motion_s": {"median": statistics.median(motion_s), "max": max(motion_s)},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    typer.echo(json.dumps({"summary": summary, "runs": runs, "failures": failures}))

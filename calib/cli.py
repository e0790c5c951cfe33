"""`aimg calib ...`: hand-eye calibration of static cameras, drift checks, the sim study."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from aimg.calib.cell_cli import load_cell, reference, show

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(
    help="Camera calibration: ChArUco hand-eye (board on the gripper), drift checks.",
    no_args_is_help=True,
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


@app.command()
def handeye(
    sim: bool = typer.Option(False, "--sim", help="Calibrate a simulated cell (PyBullet)."),
    config: Path = typer.Option(None, help="Cell config of a real (xarm) cell to calibrate."),
    seed: int = typer.Option(0, help="Sim: cell seed (camera placements, board mount)."),
    cameras: int = typer.Option(3, min=1, max=4, help="Sim: number of random cameras."),
    out: Path = typer.Option(
        None,
        help="Calibration file to write (default: the config's calibration:, else "
        "calibration.yaml).",
    ),
    method: str = typer.Option("park", help="tsai, park, horaud, andreff, daniilidis, shah, li."),
    refine: bool = typer.Option(True, help="Joint reprojection refinement after the solver."),
    poses_per_camera: int = typer.Option(14, min=4, help="Aimed poses per camera."),
    intrinsics: Path = typer.Option(
        None,
        help="Real cell: an `aimg calib intrinsics` file to use instead of the cameras' "
        "factory intrinsics.",
    ),
) -> None:
    """Move the board (on the gripper) through a scripted motion, solve camera-to-base poses,
    write the file, reference images and an overlay per camera; prints a JSON residual report.

    Real cell: the daemon must not be running; mount the board as docs/calibration.md shows,
    clear the workspace, keep a hand on the e-stop. Afterwards take the board off and run
    `aimg calib reference --config CELL` for the daemon's drift check."""
    from aimg.calib.handeye import CalibrationError, HandEyeSettings, MotionSettings

    if sim == (config is not None):
        raise typer.BadParameter("give --sim, or --config CELL for a real cell (not both)")
    try:
        settings = HandEyeSettings(method=method, refine=refine)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if config is not None:
        _handeye_cell(load_cell(config), out, settings, poses_per_camera, seed, intrinsics)
        return
    from aimg.calib.session import calibrate_sim
    from aimg.calib.sim import SimCalibrationCell

    out = out or Path("calibration.yaml")
    with SimCalibrationCell(seed=seed, num_cameras=cameras) as cell, _progress() as progress:
        motion = MotionSettings(
            workspace_low=cell.config.workspace_low,
            workspace_high=cell.config.workspace_high,
            poses_per_camera=poses_per_camera,
            seed=seed,
        )
        try:
            run = calibrate_sim(cell, out, motion, settings, on_progress=_bars(progress))
        except CalibrationError as exc:
            typer.echo(f"calibration failed: {exc}", err=True)
            raise typer.Exit(1) from exc
    report = run.to_dict()
    report["out"] = str(out)
    typer.echo(json.dumps(report))


def _bars(progress: Progress):
    """An `on_progress` callback drawing one bar per stage of the motion."""
    bars: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            label = "sweep" if stage == "sweep" else f"aim at {stage}"
            bars[stage] = progress.add_task(label, total=total)
        progress.update(bars[stage], completed=done + 1)

    return on_progress


def _file_intrinsics(path: Path, names: list[str]) -> dict:
    """(unplaced Camera, distortion) per camera from an `aimg calib intrinsics` file."""
    import numpy as np

    from aimg.calib.intrinsics import read_intrinsics
    from aimg.geometry import Camera

    records = read_intrinsics(path)
    missing = sorted(set(names) - set(records))
    if missing:
        raise typer.BadParameter(
            f"{path} has no intrinsics for cameras {missing}: run `aimg calib intrinsics` for "
            "them, or leave --intrinsics out to use the factory ones"
        )
    return {
        name: (
            Camera(records[name].K, np.eye(4), records[name].width, records[name].height),
            records[name].distortion,
        )
        for name in names
    }


def _handeye_cell(
    cell, out: Path | None, settings, poses_per_camera: int, seed: int, intrinsics: Path | None
) -> None:
    """`calib handeye --config`: the real cell's arm and cameras through their drivers."""
    from aimg.calib.calibration_file import CalibrationFileError
    from aimg.calib.cell_devices import open_cell
    from aimg.calib.handeye import CalibrationError, MotionSettings
    from aimg.calib.session import calibrate_cell

    if cell.devices.kind != "xarm":
        raise typer.BadParameter(
            f"{cell.source} is a simulated cell, whose cameras are exact: `aimg calib handeye "
            "--sim` runs the procedure in a simulated cell with a board on the gripper, and "
            "`aimg calib reference --config` takes this cell's drift references"
        )
    out = out or cell.calibration or Path("calibration.yaml")
    try:
        with open_cell(cell, require_calibration=False) as devices, _progress() as progress:
            low, high = devices.workspace
            motion = MotionSettings.real_arm(
                workspace_low=tuple(low),
                workspace_high=tuple(high),
                poses_per_camera=poses_per_camera,
                seed=seed,
            )
            known = (
                _file_intrinsics(intrinsics, list(devices.rig.view_names)) if intrinsics else None
            )
            result, _, skipped = calibrate_cell(
                devices, out, motion, settings, known, on_progress=_bars(progress)
            )
    except (CalibrationError, CalibrationFileError, ValueError, RuntimeError) as exc:
        typer.echo(f"calibration failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    report = {
        "cameras": {
            name: {"train": sol.train.to_dict(), "validation": sol.validation.to_dict()}
            for name, sol in result.cameras.items()
        },
        "skipped": skipped,
        "motion_s": round(result.motion_seconds or 0.0, 1),
        "out": str(out),
    }
    typer.echo(json.dumps(report))
    typer.echo(
        f"next: take the board off, set `calibration: {out}` in {cell.source} and run "
        f"`aimg calib reference --config {cell.source}`",
        err=True,
    )


@app.command()
def check(
    calibration: Path = typer.Option(None, help="Sim: a file written by `calib handeye --sim`."),
    sim: bool = typer.Option(False, "--sim", help="Check the simulated cell it came from."),
    config: Path = typer.Option(None, help="Cell config: check that cell (sim or xarm)."),
    board: bool = typer.Option(
        False,
        "--board",
        help="With --config: the arm puts the board (on the gripper) back at the reference "
        "poses, instead of comparing each camera with its static-scene reference.",
    ),
    move_camera: str = typer.Option(None, help="Sim: knock this camera before the check."),
    move_mm: float = typer.Option(0.0, help="Sim: shift the knocked camera along base x (mm)."),
    turn_deg: float = typer.Option(0.0, help="Sim: turn the knocked camera about its x (deg)."),
    max_mm: float = typer.Option(5.0, help="Board check: the most a camera may move (mm)."),
    max_deg: float = typer.Option(0.5, help="Board check: the most a camera may turn (deg)."),
    max_view_deg: float = typer.Option(
        0.15, help="Scene check: the most a camera's view may shift (deg)."
    ),
) -> None:
    """Drift check: exit 0 when every camera is where it was calibrated, 1 (naming the moved
    cameras) otherwise; prints a JSON report. `--config CELL` runs the daemon's check (static
    scene, no motion) or, with `--board`, the board check; `--sim` checks a simulated cell."""
    if sim == (config is not None):
        raise typer.BadParameter("give --sim (with --calibration), or --config CELL")
    if config is not None:
        report = _check_cell(
            load_cell(config), board, move_camera, move_mm, turn_deg, max_mm, max_deg, max_view_deg
        )
    else:
        if calibration is None:
            raise typer.BadParameter("--sim needs --calibration FILE (from `calib handeye --sim`)")
        report = _check_sim(calibration, move_camera, move_mm, turn_deg, max_mm, max_deg)
    typer.echo(json.dumps(report.to_dict()))
    if not report.ok:
        typer.echo(report.summary(), err=True)
        raise typer.Exit(1)


def _knock(names, move_camera: str | None) -> None:
    if move_camera is not None and move_camera not in names:
        raise typer.BadParameter(f"no camera {move_camera!r}; the cell has {list(names)}")


def _check_sim(calibration: Path, move_camera, move_mm, turn_deg, max_mm, max_deg):
    import numpy as np

    from aimg.calib.calibration_file import CalibrationFileError, read_calibration
    from aimg.calib.drift import DriftThresholds, check_drift
    from aimg.calib.session import parse_sim_source
    from aimg.calib.sim import SimCalibrationCell

    try:
        cal = read_calibration(calibration)
        seed, cameras = parse_sim_source(cal.source)
    except CalibrationFileError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ValueError as exc:
        raise typer.BadParameter(
            f"{calibration}: {exc}; --sim needs a simulated cell's file"
        ) from exc
    thresholds = DriftThresholds(translation_mm=max_mm, rotation_deg=max_deg)
    with SimCalibrationCell(seed=seed, num_cameras=cameras) as cell:
        _knock(cell.rig.view_names, move_camera)
        if move_camera is not None:
            cell.move_camera(
                move_camera, [move_mm / 1000.0, 0.0, 0.0], [np.radians(turn_deg), 0.0, 0.0]
            )
        try:
            return check_drift(cal, cell.arm, cell.rig, cell.wait, thresholds)
        except CalibrationFileError as exc:
            raise typer.BadParameter(str(exc)) from exc


def _check_cell(cell, board, move_camera, move_mm, turn_deg, max_mm, max_deg, max_view_deg):
    """The check of a cell config's cell: static scene (as the daemon) or board."""
    import numpy as np

    from aimg.calib.calibration_file import CalibrationFileError
    from aimg.calib.cell_devices import open_cell
    from aimg.calib.drift import DriftReport, DriftThresholds, check_drift
    from aimg.calib.scene_drift import SceneDriftThresholds, assess_scene, load_reference

    if cell.calibration is None:
        raise typer.BadParameter(
            f"{cell.source} sets no calibration file: run `aimg calib reference --config "
            f"{cell.source}` (sim) or `aimg calib handeye --config {cell.source}` (real) first"
        )
    try:
        with open_cell(cell) as devices:
            _knock(devices.rig.view_names, move_camera)
            if move_camera is not None:
                if not devices.is_sim:
                    raise typer.BadParameter("--move-camera knocks simulated cameras only")
                devices.world.knock_camera(
                    move_camera, [move_mm / 1000.0, 0.0, 0.0], [np.radians(turn_deg), 0.0, 0.0]
                )
            calibration = devices.calibration
            if board:
                motion = {} if devices.is_sim else {"step_m": 0.002, "tick_s": 0.01}
                thresholds = DriftThresholds(translation_mm=max_mm, rotation_deg=max_deg)
                return check_drift(
                    calibration, devices.arm, devices.rig, devices.wait, thresholds, **motion
                )
            frames = devices.rig.read().images
            scene = SceneDriftThresholds(max_view_deg=max_view_deg)
            return DriftReport(
                {
                    name: assess_scene(
                        name,
                        load_reference(calibration, name),
                        frames[name],
                        float(calibration.records[name].K[0, 0]),
                        scene,
                    )
                    for name in devices.rig.view_names
                }
            )
    except CalibrationFileError as exc:
        raise typer.BadParameter(str(exc)) from exc


app.command()(reference)
app.command()(show)


@app.command()
def board(
    out: Path = typer.Option(Path("charuco-board.png"), help="Picture to print (PNG)."),
    dpi: int = typer.Option(300, min=72, max=1200, help="Printer resolution (dots per inch)."),
) -> None:
    """The ChArUco board `calib handeye` looks for, as a PNG that prints at its true size (7 x 5
    squares of 35 mm, 245 x 175 mm plus a white margin) at --dpi. Print at 100 % (no "fit to
    page"), then measure one square: it must be 35.0 mm, or the calibration's scale is off."""
    from PIL import Image

    from aimg.calib.board import BoardSpec

    spec = BoardSpec()
    pixels_per_square = round(spec.square_m / 0.0254 * dpi)
    image = spec.texture(pixels_per_square=pixels_per_square, margin_squares=0.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out, dpi=(dpi, dpi))
    size_mm = [round(v * 25.4 / dpi, 1) for v in image.shape[1::-1]]
    typer.echo(
        json.dumps(
            {"picture": str(out), "dpi": dpi, "size_mm": size_mm, "square_mm": spec.square_m * 1e3}
        )
    )


@app.command(name="scene-study")
def scene_study(
    size: int = typer.Option(128, min=32, max=640, help="Square image size of the cameras (px)."),
    views: int = typer.Option(4, min=1, max=4, help="Sim cameras: left, right, front, top."),
) -> None:
    """The daemon's scene drift check on the simulated cell: every camera still and knocked by
    1 cm / 1 deg in new scenes; prints JSON: view shift ranges and right verdicts per case."""
    from aimg.calib.scene_drift import sim_scene_study

    typer.echo(json.dumps({"size": size, "cameras": sim_scene_study(size, views)}))


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


from aimg.calib.intrinsics_cli import intrinsics as _intrinsics  # noqa: E402

app.command(name="intrinsics")(_intrinsics)


from aimg.calib.latency_cli import latency as _latency  # noqa: E402

app.command(name="latency")(_latency)

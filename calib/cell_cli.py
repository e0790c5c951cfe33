"""`aimg calib reference` and `aimg calib show`: commands that drive a cell from its cell config
(sim or xArm; the daemon must not be running, one process owns the arm)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import typer

from aimg.calib.calibration_file import CalibrationFileError


def load_cell(config: Path):
    """The validated cell config, its errors as the command's parameter errors."""
    from aimg.config import ConfigError
    from aimg.runtime.cell_config import load_cell_config

    try:
        return load_cell_config(config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc


def reference(
    config: Path = typer.Option(..., help="The cell config the daemon runs (sim or xarm)."),
    out: Path = typer.Option(
        None,
        help="Sim cell without a calibration file: where to write one (its exact cameras plus "
        "the references); default runs/calibration/<cell name>.yaml.",
    ),
    poses: int = typer.Option(4, min=1, max=5, help="Arm poses the references are taken at."),
) -> None:
    """Take each camera's static-scene reference for the daemon's drift check.

    The arm visits a few poses spread over the workspace (clear it first) and every camera's
    frames are merged into a picture of what never moves; the daemon compares each camera's
    frame with it before every task and refuses the task if a camera moved. Run it right after
    `aimg calib handeye` (board off the gripper) and whenever the scene around the table
    changes for good. Prints a JSON report; exit 1 if a camera cannot be checked.
    """
    from rich.progress import Progress

    from aimg.calib.calibration_file import write_calibration
    from aimg.calib.cell_devices import capture_scene_frames, open_cell, sim_exact_calibration
    from aimg.calib.scene_drift import assess_scene, build_reference, save_reference

    cell = load_cell(config)
    try:
        with open_cell(cell) as devices, Progress(transient=True) as progress:
            bar = progress.add_task("reference poses", total=poses)
            frames = capture_scene_frames(
                devices, poses, on_progress=lambda k, n: progress.update(bar, completed=k + 1)
            )
            calibration = devices.calibration
            if calibration is None:
                target = out or Path("runs/calibration") / f"{cell.name}.yaml"
                target.parent.mkdir(parents=True, exist_ok=True)
                calibration = sim_exact_calibration(devices, target)
            target = Path(calibration.path)
            records, report = dict(calibration.records), {}
            now = devices.rig.read().images  # the arm is back where it started
            for name in devices.rig.view_names:
                picture = build_reference(frames[name])
                relative = save_reference(target, name, picture)
                records[name] = dataclasses.replace(records[name], scene_reference=relative)
                verdict = assess_scene(
                    name, picture, now[name], float(records[name].K[0, 0])
                ).to_dict()
                report[name] = {
                    "reference": relative,
                    "static_fraction": round(float((picture[..., 3] > 0).mean()), 3),
                    "self_check": verdict,
                }
            write_calibration(target, dataclasses.replace(calibration, records=records))
    except (CalibrationFileError, ValueError, RuntimeError) as exc:
        typer.echo(f"reference failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"calibration": str(target), "cameras": report}))
    if cell.calibration is None:
        typer.echo(f"now set `calibration: {target}` in {config}", err=True)
    bad = [name for name, r in report.items() if not r["self_check"]["ok"]]
    if bad:
        for name in bad:
            typer.echo(report[name]["self_check"]["reason"], err=True)
        raise typer.Exit(1)


def show(
    config: Path = typer.Option(..., help="The cell config (sim or xarm)."),
    out: Path = typer.Option(Path("calib-show.png"), help="Picture to write (PNG)."),
    every: float = typer.Option(
        0.0, help="Rewrite the picture every this many seconds until Ctrl-C (0: once)."
    ),
) -> None:
    """Each camera's frame with the tool's axes (x red, y green, z blue) and the workspace box
    (yellow) drawn through the calibration, side by side: if the axes sit on the gripper and
    the box on the table, the calibration is right."""
    from aimg.atomic_files import write_png_atomic
    from aimg.calib.cell_devices import open_cell
    from aimg.calib.overlay import draw_overlay

    cell = load_cell(config)
    try:
        with open_cell(cell) as devices:
            cameras = devices.cameras()
            distortion = {
                name: devices.calibration.records[name].distortion
                if devices.calibration is not None
                else np.zeros(5)
                for name in cameras
            }
            while True:
                frames = devices.rig.read()
                pose = devices.arm.read_state().tool_pose
                pictures = [
                    draw_overlay(
                        np.asarray(frames.images[name]),
                        cameras[name],
                        distortion[name],
                        tool_pose=pose,
                        workspace=devices.workspace,
                    )
                    for name in devices.rig.view_names
                ]
                height = max(p.shape[0] for p in pictures)
                padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in pictures]
                out.parent.mkdir(parents=True, exist_ok=True)
                write_png_atomic(out, np.concatenate(padded, axis=1))
                if every <= 0:
                    break
                time.sleep(every)
    except KeyboardInterrupt:
        pass
    except (CalibrationFileError, ValueError, RuntimeError) as exc:
        typer.echo(f"show failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"picture": str(out), "cameras": list(cameras)}))

"""`aimg calib latency`: camera and arm latency measured with a scripted motion
(`aimg.calib.latency`) on the simulated cell (scored against its simulated latencies) or a real
one, stored in the calibration file, where the runtime's scheduler reads them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer


def _load_real_cell(config: Path) -> Any:
    """The validated cell config of a real cell that can be measured: an xArm with live cameras."""
    from aimg.calib.cell_cli import load_cell

    cell = load_cell(config)
    devices = cell.devices
    if devices.kind != "xarm":
        raise typer.BadParameter(
            f"{config} describes a simulated cell (devices.kind: {devices.kind}), which has no "
            "board on its gripper: use --sim"
        )
    if devices.camera_recording is not None:
        raise typer.BadParameter(
            f"{config} replays a recording (devices.camera_recording): its timestamps are "
            "recorded, not live, so they say nothing of this cell's latency; remove it"
        )
    return cell


def _motion(amplitude_mm: float, period_s: float, cycles: int, servo_hz: float) -> Any:
    from aimg.calib.latency import LatencyMotion

    try:
        return LatencyMotion(
            amplitude_m=amplitude_mm / 1000.0, period_s=period_s, cycles=cycles, servo_hz=servo_hz
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def latency(
    sim: bool = typer.Option(False, "--sim", help="Measure the simulated cell (PyBullet)."),
    config: Path = typer.Option(None, help="Cell config of a real cell (xArm + RealSense)."),
    calibration: Path = typer.Option(
        None, help="Calibration file: cameras to locate the board with; the result goes in it."
    ),
    write: bool = typer.Option(
        True, "--write/--no-write", help="Store the measured latency in --calibration."
    ),
    seed: int = typer.Option(0, help="Sim: cell seed (without --calibration)."),
    cameras: int = typer.Option(2, min=1, max=4, help="Sim: cameras (without --calibration)."),
    sim_camera_latency_ms: float = typer.Option(30.0, help="Sim: exposure -> receipt (ms)."),
    sim_arm_latency_ms: float = typer.Option(50.0, help="Sim: command -> controller (ms)."),
    sim_camera_jitter_ms: float = typer.Option(0.0, help="Sim: extra uniform receipt delay."),
    fps: float = typer.Option(30.0, help="Sim: camera frame rate."),
    amplitude_mm: float = typer.Option(30.0, help="Stroke of the back-and-forth (mm)."),
    period_s: float = typer.Option(1.0, help="Duration of one stroke (s)."),
    cycles: int = typer.Option(2, min=1, help="Strokes."),
    servo_hz: float = typer.Option(100.0, help="Rate of the servo targets (Hz)."),
    center: tuple[float, float, float] = typer.Option(
        (0.45, 0.0, 0.30), help="Real cell: where the board moves (base frame, m)."
    ),
) -> None:
    """Move the board on the gripper back and forth, print JSON: per camera the exposure ->
    receipt latency, the command -> observed motion latency of the arm (per camera and
    combined) and the arm's command -> reported state delay; with --sim also the ground truth
    and the errors. Exit 1 when the measurement is impossible (the message says why)."""
    from aimg.calib.calibration_file import CalibrationFileError, read_calibration
    from aimg.calib.latency import write_latency

    if sim == (config is not None):
        raise typer.BadParameter("give either --sim or --config CELL (a real cell)")
    motion = _motion(amplitude_mm, period_s, cycles, servo_hz)
    cell_config = _load_real_cell(config) if config is not None else None
    if calibration is None and cell_config is not None:
        calibration = cell_config.calibration
    if calibration is None and cell_config is not None:
        raise typer.BadParameter(f"{config} names no calibration file: give --calibration")
    cal = None
    if calibration is not None:
        try:
            cal = read_calibration(calibration)
        except CalibrationFileError as exc:
            raise typer.BadParameter(str(exc)) from exc
    try:
        if sim:
            report, result = _measure_sim(
                cal,
                seed,
                cameras,
                sim_arm_latency_ms / 1000.0,
                sim_camera_latency_ms / 1000.0,
                sim_camera_jitter_ms / 1000.0,
                fps,
                motion,
            )
        else:
            report, result = _measure_real(cell_config, config, calibration, center, motion)
        written = None
        if cal is not None and write:
            write_latency(calibration, result)
            written = str(calibration)
    except (RuntimeError, CalibrationFileError) as exc:  # LatencyError, device errors
        typer.echo(f"latency measurement failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    report["written"] = written
    typer.echo(json.dumps(report))


def _progress_callback(progress: Any):
    bars: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=total)
        progress.update(bars[stage], completed=done)

    return on_progress


def _measure_sim(
    cal: Any,
    seed: int,
    num_cameras: int,
    arm_latency_s: float,
    camera_latency_s: float,
    jitter_s: float,
    fps: float,
    motion: Any,
) -> tuple[dict, Any]:
    from aimg.calib.cli import _progress
    from aimg.calib.latency import measure_sim, sim_latency_cell
    from aimg.calib.session import parse_sim_source

    cameras = tool_T_board = None
    if cal is not None:
        try:
            seed, num_cameras = parse_sim_source(cal.source)
        except ValueError as exc:
            raise typer.BadParameter(
                f"{cal.path}: {exc}; --sim needs a simulated cell's file"
            ) from exc
        cameras, tool_T_board = cal.cameras(), cal.tool_T_board
    try:
        cell = sim_latency_cell(
            seed, num_cameras, arm_latency_s, camera_latency_s, fps, jitter_s, supersample=1
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with cell, _progress() as progress:
        run = measure_sim(cell, motion, cameras, tool_T_board, _progress_callback(progress))
    report = run.to_dict()
    report["sim"] = {"seed": seed, "cameras": num_cameras}
    return report, run.result


def _measure_real(
    cell: Any, config: Path, calibration: Path, center: tuple[float, float, float], motion: Any
) -> tuple[dict, Any]:
    """The xArm and RealSense cameras of `cell`, opened as the other calibration commands open
    them (`aimg.calib.cell_devices.open_cell`), the cameras placed by `calibration`."""
    import dataclasses

    from aimg.calib.board import BoardSpec
    from aimg.calib.cell_devices import open_cell
    from aimg.calib.cli import _progress
    from aimg.calib.handeye import flag_mount
    from aimg.calib.latency import measure_latency

    cell = dataclasses.replace(cell, calibration=calibration)
    with open_cell(cell) as devices, _progress() as progress:
        cal = devices.calibration
        low, high = devices.workspace
        reach = motion.amplitude_m + 0.05
        if any(
            c - reach < lo or c + reach > hi for c, lo, hi in zip(center, low, high, strict=True)
        ):
            raise typer.BadParameter(
                f"--center {list(center)} is within {reach:.2f} m of the safety workspace "
                f"[{low.tolist()}, {high.tolist()}] of {config}: choose one further inside"
            )
        board = cal.board or BoardSpec()
        distortion = (
            {name: record.distortion for name, record in cal.records.items()}
            if cell.devices.camera_intrinsics == "calibration"
            else None
        )
        try:
            result = measure_latency(
                devices.arm,
                devices.rig,
                board,
                cal.tool_T_board if cal.tool_T_board is not None else flag_mount(board),
                time.monotonic_ns,
                devices.wait,
                motion,
                center=center,
                distortion=distortion,
                threaded_reader=True,
                on_progress=_progress_callback(progress),
            )
        finally:
            devices.arm.stop()
    return {"estimate": result.to_dict(), "cell": str(config)}, result

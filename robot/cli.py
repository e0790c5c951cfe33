"""`aimg sim ...`: collect episodes in the simulated xArm cell and look at them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

app = typer.Typer(
    help="The simulated xArm cell (PyBullet): collect expert episodes, inspect them.",
    no_args_is_help=True,
)


def _calibrated_cameras(path: Path) -> dict:
    """The cameras of a calibration file (its one reader, `aimg.calib.calibration_file`)."""
    from aimg.calib.calibration_file import CalibrationFileError, read_calibration

    try:
        return read_calibration(path).cameras()
    except CalibrationFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--calibration") from exc


@app.command()
def collect(
    task: str = typer.Option("reach", help="Task: reach or pick."),
    episodes: int = typer.Option(200, min=0, help="Total episodes wanted in --out."),
    out: Path = typer.Option(..., help="Episode root directory (created if missing)."),
    views: int = typer.Option(2, min=1, max=4, help="Cameras: left, right, front, top."),
    size: int = typer.Option(128, min=16, help="Square image size in pixels."),
    fps: float = typer.Option(10.0, help="Recorded frames per second (divides 60)."),
    seed: int = typer.Option(0, help="Collection seed; episode i uses a seed derived from it."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    calibration: Path = typer.Option(
        None,
        help="Place the cameras as this calibration file says (e.g. a real cell's) instead of "
        "the standard placements; --views is then the file's cameras.",
    ),
    start: str = typer.Option(
        "standard",
        help="Tool start pose: standard (high above the workspace), near (a few cm off the "
        "target, low: the corrections a closed loop needs, which standard starts never show) "
        "or regrasp (a missed grasp: the hand closed on nothing a few cm off the target; the "
        "expert opens it and grasps again).",
    ),
    jitter_cm: float = typer.Option(
        0.0,
        min=0.0,
        help="Camera placement augmentation: move every camera by up to this much (cm) per "
        "episode, in a random direction (the episode records its cameras).",
    ),
    jitter_deg: float = typer.Option(
        0.0, min=0.0, help="... and turn it by up to this much (deg) per episode."
    ),
) -> None:
    """Roll out the scripted expert and write episodes; re-running continues where it stopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from aimg.robot.sim.collect import RolloutSettings, collect, missing_indices

    cameras = _calibrated_cameras(calibration) if calibration is not None else None
    settings = RolloutSettings(
        task=task,
        views=views,
        height=size,
        width=size,
        fps=fps,
        cameras=cameras,
        start=start,
        jitter_m=jitter_cm / 100.0,
        jitter_deg=jitter_deg,
    )
    todo = len(missing_indices(out, episodes))
    start = time.monotonic()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ) as progress:
        bar = progress.add_task(f"{task} -> {out}", total=todo)
        try:
            results = collect(
                out,
                settings,
                episodes,
                seed=seed,
                workers=workers,
                on_episode=lambda index, success: progress.advance(bar),
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    elapsed = time.monotonic() - start
    successes = sum(success for _, success in results)
    summary = {
        "task": task,
        "out": str(out),
        "written": len(results),
        "skipped_existing": episodes - todo,
        "successes": successes,
        "success_rate": successes / len(results) if results else None,
        "seconds": round(elapsed, 1),
    }
    typer.echo(json.dumps(summary))


@app.command()
def rig(
    out: Path = typer.Option(..., help="Calibration file to write (YAML)."),
    views: int = typer.Option(2, min=1, max=4, help="Cameras: left, right, front, top."),
    size: int = typer.Option(128, min=16, help="Square image size in pixels."),
    move_cm: float = typer.Option(0.0, min=0.0, help="Move every camera this far (cm)."),
    turn_deg: float = typer.Option(0.0, min=0.0, help="Turn every camera this much (deg)."),
    seed: int = typer.Option(0, help="Seed of the random directions of the moves and turns."),
) -> None:
    """Write the sim rig's exact calibration, each camera optionally moved and turned in a
    random direction: `--calibration` of `aimg sim collect` and `aimg run --sim` then renders
    from it and plans with it (how much a policy loses when the rig is not the training one)."""
    from aimg.calib.calibration_file import exact_calibration, write_calibration
    from aimg.robot.sim.cameras import moved_rig

    cameras = moved_rig(views, size, move_cm / 100.0, turn_deg, seed)
    source = f"sim rig moved {move_cm:g} cm / {turn_deg:g} deg (seed {seed})"
    path = write_calibration(out, exact_calibration(cameras, source))
    typer.echo(json.dumps({"out": str(path), "cameras": sorted(cameras), "source": source}))


@app.command()
def show(
    episode: Path = typer.Argument(..., help="An episode directory."),
    out: Path = typer.Option(
        None, help="PNG to write (default: ./<episode name>_sheet.png; episodes stay untouched)."
    ),
    columns: int = typer.Option(8, min=1, help="Frames per row (evenly spaced over the episode)."),
    scale: int = typer.Option(2, min=1, help="Pixel upscaling of each tile."),
) -> None:
    """Write a PNG contact sheet: frames of every view with the rendered action images on top."""
    from aimg.robot.sim.show import contact_sheet

    target = out or Path(f"{episode.resolve().name}_sheet.png")
    try:
        contact_sheet(episode, target, columns=columns, scale=scale)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(str(target))


@app.command()
def verify(
    task: str = typer.Option("pick", help="Task whose expert episodes are measured."),
    episodes: int = typer.Option(10, min=1, help="Episodes to roll out (not written)."),
    views: int = typer.Option(2, min=1, max=4),
    size: int = typer.Option(128, min=16),
    seed: int = typer.Option(0),
) -> None:
    """Print JSON: pixel distance between the reported TCP, projected, and the rendered TCP.

    Also the fraction of frames where the projected TCP lies between the rendered fingers, and
    the expert's success rate over the rolled-out episodes.
    """
    from aimg.robot.sim.collect import RolloutSettings, episode_seed, run_episode
    from aimg.robot.sim.verify import TcpProjectionCheck
    from aimg.robot.sim.world import SimWorld

    settings = RolloutSettings(task=task, views=views, height=size, width=size)
    check = TcpProjectionCheck()
    successes = 0
    with SimWorld() as world:
        for index in range(episodes):
            data = run_episode(world, settings, episode_seed(seed, index), on_frame=check)
            successes += int(data.success)
    typer.echo(
        json.dumps({"task": task, "episodes": episodes, "successes": successes, **check.summary()})
    )


@app.command("xarm-emulator")
def xarm_emulator(
    host: str = typer.Option("127.0.0.1", help="Loopback address to listen on (127.x.y.z)."),
    uds: bool = typer.Option(
        False, help="Also serve /tmp/xarmcontroller_uds_{502,30001,30002} (no root needed)."
    ),
    tcp: bool = typer.Option(True, help="Serve TCP ports 502, 30001, 30002 (502 needs root)."),
    report_hz: float = typer.Option(100.0, min=1.0, help="Report push rate (a real box: 5 Hz)."),
    seed: int = typer.Option(0, help="Seed of the simulated cell."),
) -> None:
    """Run a loopback xArm controller whose arm is the PyBullet cell, until Ctrl-C.

    The unmodified xarm-python-sdk connects with XArmAPI("<host>"): TCP port 502
    for commands, 30002 for the rich report (30001: the normal one). The SDK
    cannot be given other ports, and binding 502 needs root or
    CAP_NET_BIND_SERVICE. Without either, use --uds --no-tcp: on Linux the SDK
    first tries the unix sockets /tmp/xarmcontroller_uds_<port> whenever they
    exist, for ANY address it is given (unless forbid_uds=True; aimg's XArm
    sets that unless XArmConfig.use_uds). So one UDS emulator per machine; its
    files are removed on exit. Prints one JSON line with where it listens.
    """
    from aimg.robot.sim.world import SimWorld
    from aimg.robot.xarm.emulator import XArmEmulator

    if not (tcp or uds):
        raise typer.BadParameter("nothing to serve: drop --no-tcp or add --uds")
    world = SimWorld(seed=seed)
    world.start_real_time()
    try:
        emulator = XArmEmulator(
            world, host=host, uds=uds, tcp=tcp, report_hz=report_hz, owns_world=True
        )
    except (OSError, ValueError) as exc:
        world.close()
        raise typer.BadParameter(str(exc)) from exc
    with emulator:
        where = [f"tcp {emulator.host}:502,30001,30002"] if tcp else []
        where += ["uds /tmp/xarmcontroller_uds_{502,30001,30002}"] if uds else []
        typer.echo(json.dumps({"xarm_emulator": where, "report_hz": report_hz}))
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass

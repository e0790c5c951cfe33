"""`aimg realsense ...`: list connected RealSense cameras, record them, replay a recording."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import typer

app = typer.Typer(
    help="Intel RealSense cameras: list them, record them, replay a recording.",
    no_args_is_help=True,
)

NO_DEVICE = (
    "No RealSense camera found. Plug one into a USB 3 port, install the udev rules "
    "(docs/hardware.md), then run `aimg realsense list` again."
)


@app.command("list")
def list_cameras(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    profiles: int = typer.Option(
        6, min=0, help="Colour profiles shown per camera (largest first)."
    ),
) -> None:
    """Show the connected cameras: name, serial, firmware, USB type and colour profiles."""
    from aimg.robot.realsense.sources import list_devices

    devices = list_devices()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(d) for d in devices], indent=2))
        return
    if not devices:
        typer.echo(NO_DEVICE)
        return
    for dev in devices:
        shown = ", ".join(dev.color_profiles[:profiles]) or "none"
        more = len(dev.color_profiles) - min(profiles, len(dev.color_profiles))
        typer.echo(
            f"{dev.name}  serial {dev.serial}  firmware {dev.firmware}  USB {dev.usb_type}\n"
            f"  colour: {shown}" + (f" (+{more} more)" if more > 0 else "")
        )


def _parse_cameras(serials: list[str], width: int, height: int, fps: int) -> list:
    from aimg.robot.realsense.rig import RealSenseCamera

    cameras = []
    for index, item in enumerate(serials):
        name, _, serial = item.rpartition("=")
        try:
            cameras.append(RealSenseCamera(name or f"cam{index}", serial, width, height, fps))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--serial") from exc
    return cameras


@app.command()
def record(
    serial: list[str] = typer.Option(
        ..., "--serial", help="A camera's serial, or VIEW=SERIAL to name its view; repeat."
    ),
    seconds: float = typer.Option(..., min=0.1, help="How long to record."),
    out: Path = typer.Option(..., help="New directory for the files and manifest.json."),
    width: int = typer.Option(640, min=1),
    height: int = typer.Option(480, min=1),
    fps: int = typer.Option(30, min=1),
    depth: bool = typer.Option(False, help="Record depth as well as colour."),
    exposure: float = typer.Option(None, help="Lock the colour exposure (sensor units)."),
    white_balance: float = typer.Option(None, help="Lock the colour white balance (kelvin)."),
) -> None:
    """Record cameras into DIR (one librealsense file per camera) for replay by the rig."""
    from aimg.robot.realsense.recording import record as record_rig
    from aimg.robot.realsense.rig import RealSenseError

    cameras = _parse_cameras(serial, width, height, fps)
    try:
        manifest = record_rig(
            cameras, out, seconds, depth=depth, exposure=exposure, white_balance=white_balance
        )
    except (RealSenseError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(manifest.to_json(), indent=2))


@app.command()
def replay(
    directory: Path = typer.Argument(..., help="A directory written by `aimg realsense record`."),
    reads: int = typer.Option(0, min=0, help="Rig reads to make (0 = until the recording ends)."),
    real_time: bool = typer.Option(True, help="At the recorded pace, or as fast as possible."),
) -> None:
    """Play a recording through `RealSenseRig` and print what the rig saw, as JSON."""
    from aimg.robot.realsense.rig import RealSenseRig, RecordingEndedError

    try:
        rig = RealSenseRig.from_recording(directory, real_time=real_time, loop=False)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    count, start = 0, time.monotonic()
    with rig:
        try:
            while reads == 0 or count < reads:
                rig.read()
                count += 1
        except RecordingEndedError:
            pass
        stats = rig.stats()
        intrinsics = rig.intrinsics
    summary = {
        "reads": count,
        "seconds": round(time.monotonic() - start, 3),
        "cameras": {
            view: {**dataclasses.asdict(s), "intrinsics": intrinsics[view].as_dict()}
            for view, s in stats.items()
        },
    }
    typer.echo(json.dumps(summary, indent=2))

"""`aimg calib intrinsics`: camera intrinsics from ChArUco images (`--images`, `--sim`) or from
the RealSense factory calibration (`--recording`, `--config`), written to an intrinsics file
with a coverage map per ChArUco-calibrated camera beside it, and a JSON report on stdout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from aimg.atomic_files import write_png_atomic

if TYPE_CHECKING:
    import numpy as np
    from rich.progress import Progress

    from aimg.calib.board import BoardSpec
    from aimg.calib.intrinsics import IntrinsicsRecord, IntrinsicsResult, IntrinsicsSettings
    from aimg.robot.realsense.rig import RealSenseRig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _progress() -> Progress:
    from aimg.calib.cli import _progress as progress

    return progress()


def _fail(message: str) -> typer.Exit:
    typer.echo(f"intrinsics failed: {message}", err=True)
    return typer.Exit(1)


def _load_images(folder: Path) -> list[np.ndarray]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder of board images", param_hint="--images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise typer.BadParameter(
            f"{folder} holds no PNG or JPG images: put 15-30 pictures of the ChArUco board "
            "there, taken with the camera to calibrate",
            param_hint="--images",
        )
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise typer.BadParameter(f"{path} cannot be read as an image ({exc})") from exc
    return images


def _charuco_report(
    out: Path, name: str, result: IntrinsicsResult, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write `<stem>.<name>.coverage.png` beside `out`; the camera's JSON report entry."""
    from aimg.calib.intrinsics import draw_coverage_map

    coverage_png = out.parent / f"{out.stem}.{name}.coverage.png"
    write_png_atomic(coverage_png, draw_coverage_map(result))
    return {**result.to_dict(), "coverage_map": str(coverage_png), **(extra or {})}


def _calibrate_images(
    images: list[np.ndarray],
    name: str,
    board: BoardSpec,
    settings: IntrinsicsSettings,
    progress: Progress,
) -> IntrinsicsResult:
    from aimg.calib.handeye import CalibrationError
    from aimg.calib.intrinsics import calibrate_intrinsics

    bar = progress.add_task(f"detect the board ({name})", total=len(images))
    try:
        return calibrate_intrinsics(
            images,
            board,
            settings,
            on_progress=lambda done, _: progress.update(bar, completed=done),
        )
    except CalibrationError as exc:
        raise _fail(f"camera '{name}': {exc}") from exc


def _factory(make_rig: Callable[[], RealSenseRig]) -> dict[str, IntrinsicsRecord]:
    """Factory intrinsics of every camera of the rig `make_rig` builds (live or recorded)."""
    from aimg.calib.calibration_file import now_iso
    from aimg.calib.handeye import CalibrationError
    from aimg.calib.intrinsics import read_factory_intrinsics
    from aimg.robot.realsense.rig import RealSenseError

    try:
        return read_factory_intrinsics(make_rig(), now_iso())
    except ImportError as exc:
        raise _fail(f"{exc} (the RealSense driver: `pip install aimg[realsense]`)") from exc
    except (RealSenseError, CalibrationError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc


def _config_rig(config: Path) -> Callable[[], RealSenseRig]:
    """The cell's cameras as in `devices:` of its config. Only that section is read: intrinsics
    come before the hand-eye calibration the rest of a real cell's config requires."""
    from aimg.config import ConfigError, from_dict, load_yaml
    from aimg.runtime.cell_config import Devices

    try:
        data = load_yaml(config)
        devices = from_dict(Devices, data.get("devices") or {}, where=f"{config}: devices")
    except (ConfigError, ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    if devices.cameras:

        def live() -> RealSenseRig:
            from aimg.robot.realsense.rig import RealSenseRig

            return RealSenseRig(devices.cameras)

        return live
    if devices.camera_recording is not None:
        recording = devices.camera_recording.expanduser()
        return lambda: _recording_rig(recording)
    raise typer.BadParameter(
        f"{config} lists no RealSense cameras under devices.cameras: add them (name, serial, "
        "width, height; see `aimg realsense list`), or use --sim for the simulated cell",
        param_hint="--config",
    )


def _recording_rig(directory: Path) -> RealSenseRig:
    from aimg.robot.realsense.rig import RealSenseRig

    return RealSenseRig.from_recording(directory, real_time=False, loop=False)


def intrinsics(
    images: Path = typer.Option(
        None, "--images", help="Folder of ChArUco images (PNG/JPG) of one camera."
    ),
    camera: str = typer.Option(None, help="--images: the camera's name in the file."),
    serial: str = typer.Option(None, help="--images: the camera's serial (default: its name)."),
    recording: Path = typer.Option(
        None, "--recording", help="An `aimg realsense record` folder: its factory intrinsics."
    ),
    config: Path = typer.Option(
        None, "--config", help="Cell config: factory intrinsics of its RealSense cameras."
    ),
    sim: bool = typer.Option(False, "--sim", help="Calibrate the simulated cell's cameras."),
    seed: int = typer.Option(0, help="Sim: cell seed (camera placements)."),
    cameras: int = typer.Option(1, min=1, max=4, help="Sim: number of random cameras."),
    views: int = typer.Option(27, min=6, help="Sim: board poses per camera."),
    save_images: Path = typer.Option(
        None, help="Sim: write the captured images to DIR/<camera>/ (try --images on them)."
    ),
    out: Path = typer.Option(Path("intrinsics.yaml"), help="Intrinsics file to write / update."),
    squares_x: int = typer.Option(7, help="Board: squares along x."),
    squares_y: int = typer.Option(5, help="Board: squares along y."),
    square_m: float = typer.Option(0.035, help="Board: square size (m)."),
    marker_m: float = typer.Option(0.026, help="Board: marker size (m)."),
    dictionary: str = typer.Option("DICT_4X4_50", help="Board: ArUco dictionary."),
    distortion: int = typer.Option(5, help="Distortion coefficients solved: 0, 4, 5 or 8."),
    min_views: int = typer.Option(6, min=3, help="Fewest usable board views per camera."),
) -> None:
    """Intrinsics (K, distortion) from ChArUco images (--images DIR --camera NAME, or --sim) or
    the RealSense factory calibration (--recording DIR, --config CELL); writes --out and a
    coverage map per ChArUco camera beside it, prints a JSON report."""
    modes = [
        flag
        for flag, given in (
            ("--images", images is not None),
            ("--recording", recording is not None),
            ("--config", config is not None),
            ("--sim", sim),
        )
        if given
    ]
    if len(modes) != 1:
        raise typer.BadParameter(
            "give exactly one of --images DIR --camera NAME, --recording DIR, --config CELL or "
            f"--sim (got {', '.join(modes) or 'none'})"
        )
    if recording is not None or config is not None:
        from aimg.calib.intrinsics import write_intrinsics

        make_rig = _config_rig(config) if config is not None else lambda: _recording_rig(recording)
        records = _factory(make_rig)
        write_intrinsics(out, records)
        report = {
            "out": str(out),
            "method": "factory",
            "cameras": {
                name: {
                    k: v
                    for k, v in r.to_dict().items()
                    if k in ("serial", "width", "height", "K", "distortion", "details")
                }
                for name, r in records.items()
            },
        }
        typer.echo(json.dumps(report))
        return

    from aimg.calib.board import BoardSpec
    from aimg.calib.calibration_file import now_iso
    from aimg.calib.intrinsics import IntrinsicsSettings, record_from_result, write_intrinsics

    try:
        board = BoardSpec(squares_x, squares_y, square_m, marker_m, dictionary)
        board.cv_board()
        settings = IntrinsicsSettings(distortion=distortion, min_views=min_views)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    date = now_iso()
    entries: dict[str, dict[str, Any]] = {}
    records = {}
    if images is not None:
        if not camera:
            raise typer.BadParameter("--images needs --camera NAME (the camera's name in --out)")
        loaded = _load_images(images)
        with _progress() as progress:
            result = _calibrate_images(loaded, camera, board, settings, progress)
        records[camera] = record_from_result(
            camera, serial or camera, result, date, {"images": str(images)}
        )
        entries[camera] = _charuco_report(out, camera, result, {"images": len(loaded)})
    else:
        entries, records = _sim(seed, cameras, views, save_images, out, board, settings, date)
    write_intrinsics(out, records, board)
    typer.echo(
        json.dumps(
            {"out": str(out), "method": "charuco", "board": board.to_dict(), "cameras": entries}
        )
    )


def _sim(
    seed: int,
    cameras: int,
    views: int,
    save_images: Path | None,
    out: Path,
    board: BoardSpec,
    settings: IntrinsicsSettings,
    date: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, IntrinsicsRecord]]:
    """Calibrate every camera of a seeded sim cell from images of the board moved by the arm;
    each report entry carries the error against the true K."""
    from aimg.calib.intrinsics import (
        SimIntrinsicsMotion,
        capture_sim_images,
        intrinsics_error,
        record_from_result,
    )
    from aimg.calib.sim import SimCalibrationCell

    entries: dict[str, dict[str, Any]] = {}
    records = {}
    motion = SimIntrinsicsMotion(views=views, seed=seed)
    cell = SimCalibrationCell(seed=seed, num_cameras=cameras, board=board)
    with cell, _progress() as progress:
        for name in cell.rig.view_names:
            bar = progress.add_task(f"board poses for {name}", total=views)

            def advance(done: int, total: int, bar: int = bar) -> None:
                progress.update(bar, completed=done, total=total)

            captured = capture_sim_images(cell, name, motion, on_progress=advance)
            if save_images is not None:
                for k, image in enumerate(captured):
                    write_png_atomic(save_images / name / f"view{k:03d}.png", image)
            result = _calibrate_images(captured, name, board, settings, progress)
            truth = cell.true_cameras[name].K
            records[name] = record_from_result(
                name, name, result, date, {"sim_seed": seed, "images": len(captured)}
            )
            entries[name] = _charuco_report(
                out,
                name,
                result,
                {
                    "images": len(captured),
                    "truth": {
                        "fx": float(truth[0, 0]),
                        "fy": float(truth[1, 1]),
                        "cx": float(truth[0, 2]),
                        "cy": float(truth[1, 2]),
                    },
                    "error": intrinsics_error(result.K, truth),
                },
            )
    return entries, records

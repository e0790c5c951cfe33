"""The `aimg` command: core commands plus the stage commands registered as entry points.

Stages register typer apps in the `aimg.commands` entry-point group (see pyproject.toml), so
the core never imports a stage. Benchmarks are sub-commands of `aimg bench` and print JSON.
"""

from __future__ import annotations

import importlib.metadata
import json

import typer

from aimg import __version__

app = typer.Typer(
    name="aimg",
    help=(
        "Action Images world action models from training to a real robot: "
        "train and distil, export to TensorRT, run closed-loop on an xArm, calibrate cameras."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks. Each prints one JSON object; compare ratios measured in one run.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@app.command()
def version() -> None:
    """Print the aimg version."""
    typer.echo(__version__)


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the installation: Python, torch, numba, onnxruntime, extras, CUDA and TensorRT."""
    from aimg.doctor import collect_report, format_report

    report = collect_report()
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@bench_app.command("codec")
def bench_codec(
    as_json: bool = typer.Option(True, "--json/--no-json", help="Print JSON (default)."),
    frames: int = typer.Option(41, help="Frames of the action video."),
    views: int = typer.Option(2, help="Camera views."),
    size: int = typer.Option(512, help="Image height and width in pixels."),
    repeats: int = typer.Option(5, help="Timed repetitions (the median is reported)."),
) -> None:
    """Time action-image decoding against the reference decoder and the memory-bound floor."""
    from aimg.codec.bench import run_codec_benchmark

    result = run_codec_benchmark(frames=frames, views=views, size=size, repeats=repeats)
    typer.echo(json.dumps(result, indent=2) if as_json else str(result))


@bench_app.command("episodes")
def bench_episodes(
    episodes: int = typer.Option(200, help="Episodes to write and read back."),
    views: int = typer.Option(2, help="Camera views per episode."),
    frames: int = typer.Option(60, help="Frames per episode."),
    size: int = typer.Option(128, help="Image height and width in pixels."),
    samples: int = typer.Option(5000, help="Random single-frame reads to time."),
    directory: str = typer.Option(None, "--dir", help="Where to create the temporary root."),
) -> None:
    """Time writing, listing, validating and random-frame reading of episodes."""
    from aimg.episodes.bench import run_episodes_benchmark

    result = run_episodes_benchmark(episodes, views, frames, size, samples, directory)
    typer.echo(json.dumps(result, indent=2))


@bench_app.command("model")
def bench_model(
    preset: str = typer.Option("configs/sim-tiny.yaml", help="Model preset YAML."),
    batch: int = typer.Option(8, help="Batch size."),
    repeats: int = typer.Option(5, help="Timed repetitions (the median is reported)."),
    threads: int = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Time one training step and one inference forward of a model preset."""
    from aimg.model.bench import run_model_benchmark

    typer.echo(json.dumps(run_model_benchmark(preset, batch, repeats, threads, device), indent=2))


@app.command("convert-reference")
def convert_reference(
    checkpoint: str = typer.Argument(..., help="Reference ActionImages .ckpt (DiT state dict)."),
    output_dir: str = typer.Argument(..., help="Directory for model.safetensors + config.json."),
    preset: str = typer.Option("configs/official-5b.yaml", help="Preset the checkpoint matches."),
    dtype: str = typer.Option(None, help="fp32 or bf16 (default: keep the file's dtype)."),
) -> None:
    """Convert the released reference checkpoint into an aimg checkpoint directory.

    The .ckpt holds the reference DiT's weights under the original Wan key names.
    It is read with torch.load(weights_only=True) and its keys are renamed to aimg's.
    Unexpected or missing keys are listed, so a wrong file never converts half-way.
    """
    from aimg.model.official import convert_checkpoint_file

    typer.echo(str(convert_checkpoint_file(checkpoint, output_dir, preset, dtype)))


def _register_stage_commands() -> None:
    for entry in importlib.metadata.entry_points(group="aimg.commands"):
        sub_app = entry.load()
        if isinstance(sub_app, typer.Typer):
            app.add_typer(sub_app, name=entry.name)
        else:
            app.command(name=entry.name)(sub_app)
    for entry in importlib.metadata.entry_points(group="aimg.bench"):
        bench_app.command(name=entry.name)(entry.load())


def main() -> None:
    """Entry point of the `aimg` console script."""
    _register_stage_commands()
    app()


if __name__ == "__main__":
    main()

"""`aimg export`: checkpoint -> ONNX artifact -> checks -> parity -> TensorRT engines.

Each step is its own restartable command working on an artifact directory on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help=(
        "Compile a checkpoint for the robot: `onnx` writes an artifact directory (static-shape "
        "ONNX graphs + manifest.json), `check` says whether TensorRT 10.3 can parse it, "
        "`verify` compares onnxruntime with torch, `engine` builds TensorRT engines."
    ),
    no_args_is_help=True,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("onnx")
def onnx_command(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint directory (config.json + model.safetensors), e.g. assets/sim-tiny."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    profile: str = typer.Option(
        None,
        help="Static shapes and precision, e.g. 'views=2,frames=5,height=64,width=64,"
        "precision=fp16,batch=1'. Unset keys take the checkpoint's shapes, fp32, and batch 2 "
        "when it samples with classifier-free guidance (both branches in one call).",
    ),
    opset: int = typer.Option(
        20,
        help="ONNX opset. 20 (default) decomposes RMSNorm and attention into plain ops that "
        "TensorRT 10.3 (Jetson) parses; 23 emits native RMSNormalization/Attention nodes.",
    ),
    instructions: Path = typer.Option(
        None,
        help="Text file, one instruction per line, whose text embeddings are precomputed into "
        "the artifact (the robot computer never runs umT5). Models with the built-in text "
        "encoder also embed other instructions at run time.",
    ),
    graphs: str = typer.Option(
        "denoiser,frame_encoder,video_encoder,action_decoder",
        help="Comma-separated graphs to export (the runtime needs all four; only 'denoiser' "
        "checks a large model without its VAE).",
    ),
) -> None:
    """Export a checkpoint to an artifact directory of static-shape ONNX graphs.

    Writes the denoiser step, the frame encoder, the camera-video encoder and the action
    decoder, the text embeddings of --instructions, and manifest.json.
    """
    from tqdm import tqdm

    from aimg.artifacts import manifest_summary
    from aimg.config import ConfigError
    from aimg.export.onnx_export import ExportError, export_artifact
    from aimg.model.checkpoint import CheckpointError

    names = [g.strip() for g in graphs.split(",") if g.strip()]
    bar = tqdm(total=len(names), desc="export", unit="graph")

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        if name != names[0]:
            bar.update(1)

    try:
        manifest = export_artifact(
            checkpoint, out, profile, opset, instructions, progress=step, graphs=names
        )
    except (ExportError, CheckpointError, ConfigError) as exc:
        bar.close()
        _fail(str(exc))
    bar.update(bar.total - bar.n)
    bar.close()
    typer.echo(json.dumps({"artifact": str(out), **manifest_summary(manifest)}, indent=2))


@app.command("check")
def check_command(
    artifact: Path = typer.Argument(..., help="Artifact directory from `aimg export onnx`."),
) -> None:
    """Check that TensorRT 10.3 can parse every graph of an artifact.

    No complex/double/ScatterND, only ops its ONNX parser supports, opset <= 20, shapes and
    dtypes as in the manifest. Prints JSON with each graph's op histogram; exits 1 when a
    problem is found.
    """
    from aimg.artifacts import ArtifactError
    from aimg.export.check import check_artifact

    try:
        report = check_artifact(artifact)
    except ArtifactError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report, indent=2))
    if not report["passed"]:
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    artifact: Path = typer.Argument(..., help="Artifact directory from `aimg export onnx`."),
    checkpoint: Path = typer.Option(
        None, help="The source checkpoint (default: the path recorded in the manifest)."
    ),
    episode: Path = typer.Option(
        None,
        help="Episode whose frame 0 conditions the whole-plan comparison (default: a synthetic "
        "observation, which compares numbers but is no meaningful scene).",
    ),
    instruction: str = typer.Option(None, help="Instruction (default: the episode's)."),
    seed: int = typer.Option(0, help="Noise seed of the plan."),
    threads: int = typer.Option(None, help="CPU threads for torch and onnxruntime."),
    out: Path = typer.Option(None, help="Also write the JSON report to this file."),
) -> None:
    """Compare onnxruntime (CPU) with torch, graph by graph and for a whole plan.

    Every graph on the same inputs (max abs, max rel, cosine), then a whole plan from the same
    noise (latents, action images, decoded actions). Exits 1 when a figure is outside the
    tolerance of the artifact's precision.
    """
    from aimg.artifacts import ArtifactError
    from aimg.export.verify import verify_artifact

    try:
        report = verify_artifact(artifact, checkpoint, episode, instruction, seed, threads)
    except ArtifactError as exc:
        _fail(str(exc))
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    typer.echo(text)
    if not report["passed"]:
        raise typer.Exit(1)


def _register_engine() -> None:
    from aimg.export.engine import engine_command

    app.command("engine")(engine_command)


_register_engine()

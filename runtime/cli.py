"""Runtime commands: `aimg bench policy` (plan latency per backend)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench_policy(
    checkpoint: Path = typer.Option(
        Path("assets/sim-tiny"), help="Checkpoint directory (the torch backend runs it)."
    ),
    artifact: Path = typer.Option(
        None,
        help="Artifact directory exported from the checkpoint (`aimg export onnx CHECKPOINT "
        "--out DIR`); needed by onnxruntime and tensorrt.",
    ),
    backend: list[str] = typer.Option(
        None,
        "--backend",
        help="torch, onnxruntime or tensorrt; repeat to time several in one run (default: "
        "torch, plus onnxruntime when --artifact is given).",
    ),
    repeats: int = typer.Option(5, min=1, help="Timed plans per backend (medians reported)."),
    threads: int = typer.Option(None, min=1, help="CPU threads per backend (default: torch's)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    official_5b: bool = typer.Option(
        False,
        "--official-5b",
        help="On a GPU, also time one bf16 denoiser evaluation of configs/official-5b.yaml at "
        "its real shapes with random weights (about 13 GB).",
    ),
    preset: Path = typer.Option(
        Path("configs/official-5b.yaml"), help="The preset --official-5b builds."
    ),
    as_json: bool = typer.Option(True, "--json/--no-json", help="Print JSON (default)."),
) -> None:
    """Time whole plans (text, cameras, encode, each denoiser call, decode) per backend."""
    from aimg.runtime.bench import official_step_benchmark, run_policy_benchmark

    backends = list(backend or (["torch", "onnxruntime"] if artifact else ["torch"]))
    try:
        result = run_policy_benchmark(checkpoint, artifact, backends, repeats, threads, device)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if official_5b:
        result["official_5b_step"] = official_step_benchmark(preset)
    typer.echo(json.dumps(result, indent=2) if as_json else str(result))

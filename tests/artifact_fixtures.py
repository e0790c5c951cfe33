"""The bundled sim-tiny model and its export, shared by the export and runtime tests."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SIM_TINY = REPO_ROOT / "assets" / "sim-tiny"
INSTRUCTIONS = ("reach the red cube", "pick up the blue cube")


def export_sim_tiny(out: Path, profile: str | None = None, opset: int = 20) -> Path:
    """Export the bundled sim-tiny model to an artifact directory (ONNX, CPU, ~10 s)."""
    from aimg.export.onnx_export import export_artifact

    out.mkdir(parents=True, exist_ok=True)
    instructions = out.parent / f"{out.name}-instructions.txt"
    instructions.write_text("\n".join(INSTRUCTIONS) + "\n")
    export_artifact(SIM_TINY, out, profile, opset, instructions)
    return out

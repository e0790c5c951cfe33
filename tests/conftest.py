"""Shared pytest setup: where the reference fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


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


@pytest.fixture(scope="session")
def sim_tiny_artifact(tmp_path_factory) -> Path:
    """sim-tiny exported at its own shapes, fp32, opset 20 (shared by export and runtime tests;
    treat it as read-only)."""
    return export_sim_tiny(tmp_path_factory.mktemp("artifacts") / "sim-tiny-fp32")

"""Shared pytest setup: where the reference fixtures live, and the exported sim-tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sim_tiny_artifact(tmp_path_factory) -> Path:
    """sim-tiny exported at its own shapes, fp32, opset 20 (shared by export and runtime tests;
    treat it as read-only)."""
    from artifact_fixtures import export_sim_tiny

    return export_sim_tiny(tmp_path_factory.mktemp("artifacts") / "sim-tiny-fp32")

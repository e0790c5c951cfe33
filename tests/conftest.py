"""Shared pytest setup: where the reference fixtures live, and the exported sim-tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xarm_fixtures import port_502  # noqa: F401 (a fixture every xArm test may ask for)

# `make test` runs two xdist workers on a 2-core machine: one math thread each (before torch
# loads), so a worker exporting models cannot starve the other's real-time cell of its core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

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

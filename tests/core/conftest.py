"""Shared pytest fixtures of the core tests: the reference codec fixture and its cameras."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aimg.geometry import Camera

CODEC_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "codec.npz"


@pytest.fixture(scope="module")
def ref() -> dict:
    """Every array of the reference codec fixture (`tests/fixtures/reference/codec.npz`)."""
    with np.load(CODEC_FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def ref_cameras(ref: dict) -> Callable[[int], list[Camera]]:
    """The fixture's two cameras at a square image size the fixture stores (64 or 512)."""

    def cameras(size: int) -> list[Camera]:
        return [Camera(ref[f"K_{size}"][v], ref["c2w"][v], size, size) for v in range(2)]

    return cameras

"""`aimg bench codec` runs end to end and reports the documented fields (speed is not asserted)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aimg.cli import app
from aimg.codec.bench import run_codec_benchmark

FIELDS = {
    "floor_max_ms",
    "floor_sum_ms",
    "decode_ms",
    "decode_reference_ms",
    "decode_over_floor_max",
    "reference_over_decode",
    "render_ms",
    "render_megapixels_per_s",
    "decode_max_position_error_mm",
}


def test_benchmark_reports_timings_and_a_correct_decode():
    result = run_codec_benchmark(frames=3, views=2, size=64, repeats=1)
    assert result.keys() >= FIELDS
    assert result["shape"] == [3, 2, 64, 64, 3]
    assert result["bytes"] == 3 * 2 * 64 * 64 * 3
    assert all(result[key] > 0 for key in FIELDS - {"decode_max_position_error_mm"})
    assert result["decode_max_position_error_mm"] < 1.0


def test_benchmark_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="positive"):
        run_codec_benchmark(frames=0)


def test_cli_prints_the_benchmark_as_json():
    out = CliRunner().invoke(
        app, ["bench", "codec", "--frames", "2", "--size", "64", "--repeats", "1"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output).keys() >= FIELDS

"""The `aimg` command answers --help, version and doctor, and carries the stage commands."""

from __future__ import annotations

import json
import subprocess
import sys

import aimg


def _aimg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aimg", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_core_and_stage_commands():
    result = _aimg("--help")
    assert result.returncode == 0, result.stderr
    for command in ("version", "doctor", "bench", "sim", "train"):
        assert command in result.stdout


def test_version_prints_the_package_version():
    result = _aimg("version")
    assert result.returncode == 0
    assert result.stdout.strip() == aimg.__version__


def test_doctor_reports_every_check_as_json():
    result = _aimg("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    names = {pkg["name"] for pkg in report["packages"]}
    assert {"torch", "numba", "onnxruntime", "pybullet", "tensorrt"} <= names
    torch_entry = next(pkg for pkg in report["packages"] if pkg["name"] == "torch")
    assert torch_entry["ok"] is True
    assert all(pkg["install"] for pkg in report["packages"])
    assert "ok" in report["cuda"]


def test_doctor_text_says_how_to_install_what_is_missing():
    from aimg.doctor import format_report

    report = {
        "python": {"ok": True, "version": "3.11.0"},
        "platform": "test",
        "packages": [
            {
                "name": "tensorrt",
                "purpose": "engines",
                "install": "pip install 'aimg[gpu]'",
                "ok": False,
                "version": None,
                "error": "ModuleNotFoundError",
            },
        ],
        "cuda": {"ok": False, "error": "no CUDA device"},
    }
    text = format_report(report)
    assert "missing tensorrt" in text
    assert "-> pip install 'aimg[gpu]'" in text

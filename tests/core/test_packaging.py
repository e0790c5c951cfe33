"""The folder-to-namespace mapping works for editable and normal (wheel) installs."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile

import pytest

STAGES = ("training", "export", "runtime", "robot", "calib")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_as_aimg_subpackage_with_a_docstring(stage):
    module = importlib.import_module(f"aimg.{stage}")
    assert module.__doc__ and f"aimg.{stage}" in module.__doc__


def test_core_imports_no_stage():
    code = (
        "import sys, aimg, aimg.geometry, aimg.config, aimg.cli\n"
        f"bad = [m for m in sys.modules if m.split('.')[:2] in "
        f"[['aimg', s] for s in {STAGES!r}]]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_wheel_maps_stage_folders_into_the_aimg_namespace(repo_root, tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo_root),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("aimg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stage in STAGES:
        assert f"aimg/{stage}/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    # -S keeps the editable install (a site-packages hook) from answering, so only the wheel's
    # files can be imported; find_spec locates every stage without importing its dependencies.
    code = (
        "import aimg.runtime, importlib.util as u; "
        f"print(*(u.find_spec('aimg.' + s).origin for s in {STAGES!r}), sep='\\n')"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(target)!r}); {code}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    origins = out.stdout.split()
    assert len(origins) == len(STAGES)
    for stage, origin in zip(STAGES, origins, strict=True):
        assert origin == str(target / "aimg" / stage / "__init__.py")

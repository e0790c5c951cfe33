"""`aimg doctor`: what is installed, what is missing, and the command that installs it."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import platform
import sys
from typing import Any

# (import name, distribution name, what it is for, how to install it)
_CHECKS: list[tuple[str, str, str, str]] = [
    ("torch", "torch", "models and training", "pip install torch==2.13.0 (CPU) or a CUDA build"),
    ("numba", "numba", "the action-image decoder", "pip install aimg"),
    ("onnxruntime", "onnxruntime", "ONNX parity and the CPU backend", "pip install aimg"),
    ("diffusers", "diffusers", "the Wan transformer and VAE", "pip install aimg"),
    ("pybullet", "pybullet", "the simulated cell", "pip install 'aimg[sim]'"),
    ("xarm", "xarm-python-sdk", "the real xArm", "pip install 'aimg[robot]'"),
    (
        "pyrealsense2",
        "pyrealsense2",
        "RealSense cameras",
        "pip install 'aimg[robot]' (and `apt-get install libusb-1.0-0` for the system libusb)",
    ),
    ("cv2", "opencv-python-headless", "calibration", "pip install 'aimg[robot]'"),
    ("tensorboard", "tensorboard", "training logs", "pip install 'aimg[train]'"),
    ("transformers", "transformers", "the umT5 text encoder", "pip install 'aimg[train]'"),
    ("onnx", "onnx", "ONNX export", "pip install 'aimg[gpu]' (or pip install onnx)"),
    ("tensorrt", "tensorrt", "TensorRT engines", "pip install 'aimg[gpu]' on a CUDA machine"),
]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check(module: str, dist: str, purpose: str, install: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": dist, "purpose": purpose, "install": install}
    try:
        # Some SDKs print banners on import (xarm, pybullet); keep the report clean.
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(module)
    except Exception as exc:  # a broken install reports why, it does not crash the doctor
        entry.update(ok=False, version=_version(dist), error=f"{type(exc).__name__}: {exc}")
        return entry
    entry.update(ok=True, version=_version(dist))
    return entry


def _cuda() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"ok": False, "error": "torch is not installed"}
    if not torch.cuda.is_available():
        return {
            "ok": False,
            "torch_cuda_build": torch.version.cuda,
            "error": "no CUDA device visible to torch (CPU-only machine or CPU build of torch)",
            "install": "install a CUDA build of torch on a machine with an NVIDIA GPU",
        }
    props = torch.cuda.get_device_properties(0)
    return {
        "ok": True,
        "device": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch_cuda_build": torch.version.cuda,
    }


def collect_report() -> dict[str, Any]:
    """Everything `aimg doctor` knows, as plain data."""
    return {
        "python": {"ok": sys.version_info >= (3, 10), "version": platform.python_version()},
        "platform": platform.platform(),
        "packages": [_check(*row) for row in _CHECKS],
        "cuda": _cuda(),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report: one line per check, with the fix for each missing piece."""
    mark = {True: "ok     ", False: "missing"}
    py = report["python"]
    lines = [f"{mark[py['ok']]} python {py['version']} ({report['platform']})"]
    for pkg in report["packages"]:
        version = pkg.get("version") or ""
        line = f"{mark[pkg['ok']]} {pkg['name']} {version}".rstrip() + f"  [{pkg['purpose']}]"
        if not pkg["ok"]:
            line += f"\n          -> {pkg['install']}"
            if pkg.get("version"):
                line += f" (installed but failed to import: {pkg['error']})"
        lines.append(line)
    cuda = report["cuda"]
    if cuda["ok"]:
        lines.append(
            f"ok      cuda {cuda['device']} (sm {cuda['compute_capability']}, "
            f"{cuda['memory_gib']} GiB)"
        )
    else:
        lines.append(f"missing cuda: {cuda['error']}")
    return "\n".join(lines)

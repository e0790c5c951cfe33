"""Inference backends behind one interface (`PlanBackend`): torch, onnxruntime, tensorrt.

`load(path, backend=...)` takes a checkpoint directory (config.json + model.safetensors) or an
artifact directory (manifest.json, from `aimg export onnx`) and returns a backend that encodes
frames, samples a plan on the checkpoint's step grid and decodes the action segments. Same seed,
same plan on every backend, within the tolerance of its precision.
"""

from __future__ import annotations

from pathlib import Path

from aimg.artifacts import ArtifactError, check_source, is_artifact, read_manifest
from aimg.runtime.backends.base import BackendError, PlanBackend, PlanOutput

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

__all__ = ["BACKENDS", "BackendError", "PlanBackend", "PlanOutput", "load"]


def load(
    path: str | Path,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    provider: str | None = None,
    checkpoint: str | Path | None = None,
) -> PlanBackend:
    """Open a checkpoint or an artifact with a backend.

    backend "auto": an artifact with an engine for this GPU -> tensorrt, another artifact ->
    onnxruntime, a checkpoint -> torch. `device` ("cpu", "cuda", "cuda:1") and `precision`
    apply to the torch backend; `provider` ("cpu", "cuda", "tensorrt") to onnxruntime (default:
    "cuda" when device is CUDA). `checkpoint`: when given with an artifact, the artifact must
    have been exported from it. torch on an artifact runs the checkpoint it was exported from.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    artifact = is_artifact(path)
    if not artifact and not (path / "config.json").is_file():
        raise ArtifactError(
            f"{path} is neither a checkpoint (config.json + model.safetensors) nor an artifact "
            "(manifest.json): train with `aimg train` or export with `aimg export onnx`"
        )
    manifest = read_manifest(path) if artifact else None
    if manifest is not None and checkpoint is not None:
        check_source(manifest, checkpoint, path)
    if backend == "auto":
        if manifest is None:
            backend = "torch"
        elif manifest.engines and device.startswith("cuda"):
            backend = "tensorrt"
        else:
            backend = "onnxruntime"
    if backend == "torch":
        from aimg.runtime.backends.torch_backend import TorchBackend

        source = path
        if manifest is not None:
            source = Path(checkpoint or manifest.source.checkpoint)
            if not (source / "config.json").is_file():
                raise ArtifactError(
                    f"the torch backend runs the checkpoint {path} was exported from, "
                    f"{source}, which is not here: pass checkpoint=... (--checkpoint)"
                )
            check_source(manifest, source, path)
        return TorchBackend(source, device=device, precision=precision, threads=threads)
    if manifest is None:
        raise ArtifactError(
            f"backend {backend!r} runs compiled graphs; {path} is a checkpoint: export it first "
            f"with `aimg export onnx {path} --out DIR`"
        )
    if backend == "onnxruntime":
        from aimg.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        chosen = provider or ("cuda" if device.startswith("cuda") else "cpu")
        device_id = int(device.split(":")[1]) if ":" in device else 0
        return OnnxRuntimeBackend(
            path, chosen, threads=threads, manifest=manifest, device_id=device_id
        )
    from aimg.runtime.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(path, manifest=manifest, device=device)

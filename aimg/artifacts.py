"""Compiled-model artifact directories and their `manifest.json`: schema, writer, checks.

An artifact directory is what `aimg export` writes and what the runtime loads: ONNX graphs
(denoiser step, frame encoder, video encoder for camera latents, action-segment decoder),
precomputed text embeddings, optional TensorRT engines, and `manifest.json`, which describes
all of them (file hashes, tensor shapes and dtypes, precision, opset, the source checkpoint's
hash and its whole config.json, the deployment profile, exporter versions, and for engines the
TensorRT version and the GPU they were built on). The schema and its checks live in the core
so that the runtime reads artifacts without importing `aimg.export`.

Every load checks what can go wrong on a robot computer: a file changed after export (hash), a
manifest copied from another export (hash), an artifact from another checkpoint than the one
the caller expects, an engine built for another GPU or TensorRT version. Each error says how to
rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimg.config import ConfigError, from_dict, to_dict

MANIFEST_NAME = "manifest.json"
FORMAT = "aimg-artifact"
FORMAT_VERSION = 1
GRAPH_NAMES = ("denoiser", "frame_encoder", "video_encoder", "action_decoder")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
TEXT_FILE = "text_embeddings.safetensors"
TEXT_KEY = "embeddings"  # the [N, L, D] tensor in TEXT_FILE; row i embeds instructions[i]


class ArtifactError(ValueError):
    """An artifact directory is missing, altered or built for something else."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, static shape and dtype name ("float32", ...)."""

    name: str
    shape: list[int]
    dtype: str


@dataclass(frozen=True)
class FileSpec:
    """A file of the artifact, relative to its directory, with its SHA-256."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class GraphSpec:
    """An exported ONNX graph. `external_data` lists the weight files of graphs over 2 GB."""

    file: FileSpec
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str
    opset: int
    external_data: list[FileSpec] = field(default_factory=list)


@dataclass(frozen=True)
class EngineSpec:
    """A TensorRT engine built from one graph, for one GPU and one TensorRT version."""

    file: FileSpec
    graph: str
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: list[int]
    workspace_bytes: int = 0
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    """The static shapes one artifact is built for (a deployment profile).

    batch: denoiser batch (2 = conditional and unconditional branches of classifier-free
    guidance in one call). views/frames/height/width: pixel sizes of the sample.
    """

    views: int
    frames: int
    height: int
    width: int
    precision: str = "fp32"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("views", "frames", "height", "width", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"profile {name} must be positive, got {getattr(self, name)}")

    @property
    def tag(self) -> str:
        """A file-name-safe description, e.g. 'v2-f5-64x64-b1-fp32'."""
        return (
            f"v{self.views}-f{self.frames}-{self.height}x{self.width}-b{self.batch}-"
            f"{self.precision}"
        )


@dataclass(frozen=True)
class TextEmbeddingsSpec:
    """Precomputed text embeddings (safetensors, key = index in `instructions`)."""

    file: FileSpec
    instructions: list[str]
    negative_prompt: str
    shape: list[int]


@dataclass(frozen=True)
class SourceSpec:
    """The checkpoint the artifact came from: its path then, its fingerprint, its config."""

    checkpoint: str
    checkpoint_sha256: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """The whole `manifest.json`; see the module docstring."""

    source: SourceSpec
    profile: Profile
    opset: int
    graphs: dict[str, GraphSpec]
    exporter: dict[str, str]
    text_embeddings: TextEmbeddingsSpec | None = None
    engines: dict[str, EngineSpec] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def sampling(self) -> dict[str, Any]:
        """The checkpoint's `sampling` block (the step grid every backend follows)."""
        return self.source.config["sampling"]

    @property
    def model(self) -> dict[str, Any]:
        """The checkpoint's `model` section."""
        return self.source.config["model"]

    def effective_config(self) -> dict[str, Any]:
        """The checkpoint's config.json with the model sizes the graphs were exported at."""
        config = json.loads(json.dumps(self.source.config))
        for key in ("views", "frames", "height", "width"):
            config["model"][key] = getattr(self.profile, key)
        return config


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_spec(directory: str | Path, relative: str) -> FileSpec:
    """FileSpec of `directory/relative` (hash and size read now)."""
    path = Path(directory) / relative
    return FileSpec(relative, sha256_file(path), path.stat().st_size)


def checkpoint_fingerprint(checkpoint_dir: str | Path) -> str:
    """SHA-256 over a checkpoint's weights file and the model/sampling part of its config.

    Training metadata (`extra`) is left out, so re-saving the same weights with other notes
    keeps the fingerprint; a different model, step grid or weights changes it.
    """
    directory = Path(checkpoint_dir)
    config = json.loads((directory / "config.json").read_text())
    digest = hashlib.sha256()
    digest.update(sha256_file(directory / "model.safetensors").encode())
    core = {k: config.get(k) for k in ("model", "sampling")}
    digest.update(json.dumps(core, sort_keys=True).encode())
    return digest.hexdigest()


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically (a temporary file renamed into place)."""
    directory = Path(directory)
    text = json.dumps(to_dict(manifest), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the service may run as another user
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / MANIFEST_NAME


def is_artifact(path: str | Path) -> bool:
    """Whether `path` is a directory with a manifest.json."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Parse and validate `manifest.json`; with `verify`, also hash every file it lists."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not an aimg artifact (no {MANIFEST_NAME}): create one with "
            f"`aimg export onnx CHECKPOINT --out {directory}`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the artifact") from exc
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an aimg artifact manifest")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {raw['format_version']}; this aimg reads up to "
            f"{FORMAT_VERSION}: update aimg"
        )
    try:
        manifest = from_dict(Manifest, raw, str(path))
    except ConfigError as exc:
        raise ArtifactError(f"{exc}; re-export the artifact with `aimg export onnx`") from exc
    if verify:
        verify_files(directory, manifest)
    return manifest


def _all_files(manifest: Manifest) -> list[tuple[str, FileSpec]]:
    files = []
    for name, graph in manifest.graphs.items():
        files.append((f"graph {name!r}", graph.file))
        files += [(f"graph {name!r} weights", extra) for extra in graph.external_data]
    if manifest.text_embeddings is not None:
        files.append(("text embeddings", manifest.text_embeddings.file))
    files += [(f"engine {name!r}", engine.file) for name, engine in manifest.engines.items()]
    return files


def verify_files(directory: str | Path, manifest: Manifest) -> None:
    """Every listed file exists with the recorded size and SHA-256, else ArtifactError."""
    directory = Path(directory)
    source = manifest.source.checkpoint
    rebuild = f"re-export it: `aimg export onnx {source} --out {directory}`"
    for what, spec in _all_files(manifest):
        path = directory / spec.file
        if not path.is_file():
            raise ArtifactError(f"{what}: {path} is missing; {rebuild}")
        if path.stat().st_size != spec.size or sha256_file(path) != spec.sha256:
            raise ArtifactError(
                f"{what}: {path} does not match {MANIFEST_NAME} (changed after export, or the "
                f"manifest belongs to another export); {rebuild}"
            )


def check_source(manifest: Manifest, checkpoint_dir: str | Path, directory: str | Path) -> None:
    """The artifact was exported from `checkpoint_dir`, else ArtifactError."""
    fingerprint = checkpoint_fingerprint(checkpoint_dir)
    if fingerprint != manifest.source.checkpoint_sha256:
        raise ArtifactError(
            f"{directory} was exported from {manifest.source.checkpoint} (fingerprint "
            f"{manifest.source.checkpoint_sha256[:12]}), not from {checkpoint_dir} "
            f"({fingerprint[:12]}): export this checkpoint with "
            f"`aimg export onnx {checkpoint_dir} --out DIR`"
        )


def check_engine(
    engine: EngineSpec,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | list[int],
    directory: str | Path,
) -> None:
    """An engine runs only on the GPU architecture and TensorRT version it was built with."""
    built = (
        f"{engine.gpu_name} (sm{_cc(engine.compute_capability)}), "
        f"TensorRT {engine.tensorrt_version}"
    )
    here = f"{gpu_name} (sm{_cc(compute_capability)}), TensorRT {tensorrt_version}"
    same_gpu = list(engine.compute_capability) == list(compute_capability)
    if engine.tensorrt_version != tensorrt_version or not same_gpu:
        raise ArtifactError(
            f"engine {engine.file.file} in {directory} was built for {built}, but this machine "
            f"has {here}: rebuild it here with `aimg export engine {directory} --precision "
            f"{engine.precision}`"
        )


def engine_file_name(graph: str, precision: str, compute_capability, tensorrt_version: str) -> str:
    """Engines are named by what they were built for: denoiser.fp16.sm90.trt10.3.0.engine."""
    return f"{graph}.{precision}.sm{_cc(compute_capability)}.trt{tensorrt_version}.engine"


def _cc(compute_capability) -> str:
    major, minor = compute_capability
    return f"{major}{minor}"


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """A short JSON-able description (for CLI output and logs)."""
    return {
        "checkpoint": manifest.source.checkpoint,
        "checkpoint_sha256": manifest.source.checkpoint_sha256[:12],
        "profile": to_dict(manifest.profile),
        "opset": manifest.opset,
        "graphs": {
            name: {
                "inputs": {t.name: t.shape for t in graph.inputs},
                "outputs": {t.name: t.shape for t in graph.outputs},
                "precision": graph.precision,
            }
            for name, graph in manifest.graphs.items()
        },
        "instructions": len(manifest.text_embeddings.instructions)
        if manifest.text_embeddings
        else 0,
        "engines": sorted(e.file.file for e in manifest.engines.values()),
    }

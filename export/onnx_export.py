"""`aimg export onnx`: a checkpoint -> a self-describing artifact directory of ONNX graphs.

Writes, for one deployment profile (static shapes): `denoiser.onnx` (one transformer
evaluation), `frame_encoder.onnx` (one frame per image: the current frames and action images),
`video_encoder.onnx` (the Plücker camera videos, run once per calibration),
`action_decoder.onnx` (the action segments only, fixed latent length), `text_embeddings.
safetensors` (the listed instructions and the negative prompt, so the robot never runs umT5)
and `manifest.json` (`aimg.artifacts`). Each file is written under a temporary name first; the
manifest comes last, so a crashed export never looks complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aimg.artifacts import (
    GRAPH_NAMES,
    MANIFEST_NAME,
    TEXT_FILE,
    TEXT_KEY,
    GraphSpec,
    Manifest,
    Profile,
    SourceSpec,
    TensorSpec,
    TextEmbeddingsSpec,
    checkpoint_fingerprint,
    file_spec,
    write_manifest,
)
from aimg.model.build import build_latent_codec, build_text_encoder, cast_model, precision_dtype
from aimg.model.checkpoint import load_checkpoint, read_checkpoint_config
from aimg.model.config import ModelConfig

PROFILE_KEYS = ("views", "frames", "height", "width", "precision", "batch")
ONNX_PRECISIONS = ("fp32", "fp16", "bf16")


class ExportError(ValueError):
    """The export cannot run as asked; the message says what to do."""


def parse_profile(text: str | None, config: dict[str, Any]) -> Profile:
    """'views=2,frames=5,height=64,width=64,precision=fp32,batch=1' -> Profile.

    Missing keys default to the checkpoint's shapes, fp32, and batch 2 when the checkpoint
    samples with classifier-free guidance (both branches in one call), else 1.
    """
    model = config["model"]
    values: dict[str, Any] = {k: model[k] for k in ("views", "frames", "height", "width")}
    values["precision"] = "fp32"
    values["batch"] = 2 if config["sampling"]["cfg_scale"] != 1.0 else 1
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in PROFILE_KEYS:
            raise ExportError(
                f"profile entry {item!r}: expected key=value with key one of {list(PROFILE_KEYS)}"
            )
        if key == "precision":
            values[key] = value.strip()
        else:
            try:
                values[key] = int(value)
            except ValueError as exc:
                raise ExportError(f"profile {key} must be an integer, got {value!r}") from exc
    if values["precision"] not in ONNX_PRECISIONS:
        raise ExportError(
            f"ONNX graphs are exported in {list(ONNX_PRECISIONS)}; got {values['precision']!r}. "
            "fp8 is a TensorRT build precision: export fp16, then "
            "`aimg export engine DIR --precision fp8`"
        )
    try:
        return Profile(**values)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc


def profile_model_config(cfg: ModelConfig, profile: Profile) -> ModelConfig:
    """The checkpoint's ModelConfig at the profile's sizes (validated like a preset)."""
    try:
        return dataclasses.replace(
            cfg,
            views=profile.views,
            frames=profile.frames,
            height=profile.height,
            width=profile.width,
        )
    except ValueError as exc:
        raise ExportError(f"profile {profile.tag} does not fit this model: {exc}") from exc


def read_instructions(path: str | Path | None) -> list[str]:
    """Instructions, one per line (blank lines and lines starting with # skipped)."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"instructions file {path} does not exist (one instruction per line)")
    lines = [line.strip() for line in path.read_text().splitlines()]
    return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


def export_artifact(
    checkpoint: str | Path,
    out_dir: str | Path,
    profile_text: str | None = None,
    opset: int = 20,
    instructions: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    graphs: Sequence[str] = GRAPH_NAMES,
) -> Manifest:
    """Export `checkpoint` into `out_dir` (see the module docstring); returns the manifest.

    `graphs` limits the export to some graphs (e.g. only the denoiser, to check a large model
    without its VAE); the runtime needs all four.
    """
    from aimg.export.graphs import (
        GraphModule,
        denoiser_graph,
        export_graph,
        export_mode,
        tensor_specs,
    )

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    unknown = sorted(set(graphs) - set(GRAPH_NAMES))
    if unknown or not graphs:
        raise ExportError(f"graphs must be among {list(GRAPH_NAMES)}, got {list(graphs)}")
    config = read_checkpoint_config(checkpoint)
    profile = parse_profile(profile_text, config)
    loaded = load_checkpoint(checkpoint)
    cfg = profile_model_config(loaded.model_config, profile)
    dtype = precision_dtype(profile.precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete until written again

    model = cast_model(loaded.model, dtype).eval()
    modules: dict[str, GraphModule] = {"denoiser": denoiser_graph(model, cfg, profile, dtype)}
    if set(graphs) - {"denoiser"}:
        modules.update(_codec_graphs(cfg, dtype))

    specs: dict[str, GraphSpec] = {}
    for name in (g for g in GRAPH_NAMES if g in graphs):
        graph = modules[name]
        if progress is not None:
            progress(name)
        path = out_dir / f"{name}.onnx"
        with export_mode(model, opset):
            external = export_graph(graph, path, opset)
        specs[name] = GraphSpec(
            file=file_spec(out_dir, path.name),
            inputs=tensor_specs(graph.input_names, graph.inputs),
            outputs=_output_specs(path),
            precision=profile.precision,
            opset=opset,
            external_data=[file_spec(out_dir, e) for e in external],
        )

    text_spec = _write_text_embeddings(out_dir, cfg, loaded.sampling.negative_prompt, instructions)
    source_config = json.loads((checkpoint / "config.json").read_text())
    manifest = Manifest(
        source=SourceSpec(
            checkpoint=str(checkpoint.resolve()),
            checkpoint_sha256=checkpoint_fingerprint(checkpoint),
            config=source_config,
        ),
        profile=profile,
        opset=opset,
        graphs=specs,
        exporter=exporter_versions(),
        text_embeddings=text_spec,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_manifest(out_dir, manifest)
    return manifest


def _codec_graphs(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """Frame encoder (2V images: frames and action images), video encoder (2V Plücker videos:
    direction and moment per view) and action decoder (V segments) with example inputs."""
    from aimg.export.codec_graphs import codec_modules
    from aimg.export.graphs import GraphModule

    codec = build_latent_codec(cfg)
    if dtype != torch.float32:
        codec.to(dtype=dtype)
    modules = codec_modules(codec, cfg.frames, cfg.latent_frames)
    generator = torch.Generator().manual_seed(0)
    batches = {"frame_encoder": 2 * cfg.views, "video_encoder": 2 * cfg.views}
    io_names = {
        "frame_encoder": (["pixels"], ["latents"]),
        "video_encoder": (["videos"], ["latents"]),
        "action_decoder": (["latents"], ["pixels"]),
    }
    out = {}
    for name, module in modules.items():
        n = batches.get(name, cfg.views)
        example = module.example_inputs(n, cfg.height, cfg.width, generator)
        out[name] = GraphModule(module, tuple(x.to(dtype) for x in example), *io_names[name])
    return out


def _output_specs(path: Path) -> list[TensorSpec]:
    """Output names, shapes and dtypes as the saved graph declares them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {
        onnx.TensorProto.FLOAT: "float32",
        onnx.TensorProto.FLOAT16: "float16",
        onnx.TensorProto.BFLOAT16: "bfloat16",
    }
    out = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        shape = [d.dim_value for d in tensor.shape.dim]
        out.append(
            TensorSpec(value.name, shape, names.get(tensor.elem_type, str(tensor.elem_type)))
        )
    return out


def _write_text_embeddings(
    out_dir: Path, cfg: ModelConfig, negative_prompt: str, instructions: str | Path | None
) -> TextEmbeddingsSpec:
    """Encode the instructions (plus the negative prompt) once, here, with the real encoder."""
    prompts = list(dict.fromkeys([negative_prompt, *read_instructions(instructions)]))
    encoder = build_text_encoder(cfg)
    embeddings = encoder(prompts).float().contiguous()
    tmp = out_dir / f".{TEXT_FILE}.tmp"
    save_file({TEXT_KEY: embeddings}, str(tmp))
    os.replace(tmp, out_dir / TEXT_FILE)
    return TextEmbeddingsSpec(
        file=file_spec(out_dir, TEXT_FILE),
        instructions=prompts,
        negative_prompt=negative_prompt,
        shape=list(embeddings.shape),
    )


def exporter_versions() -> dict[str, str]:
    """Versions of what produced the graphs."""
    import onnx

    import aimg

    versions = {"aimg": aimg.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - the dynamo exporter needs it
        pass
    return versions

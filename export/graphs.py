"""Torch modules with static shapes for each exported graph, and the ONNX export of one graph.

The denoiser graph is one transformer evaluation: (latents [B, C, F, h, w], timestep [B] or
[B, F], text [B, L, D_text], cameras [B, F, C_cam, h, w]) -> velocity [B, C, F, h, w]. The
sampling loop, classifier-free guidance and the Euler update stay outside (one loop for every
backend, `aimg.model.sampler.flow_sample`). The codec graphs come from
`aimg.export.codec_graphs`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aimg.artifacts import Profile, TensorSpec
from aimg.model.config import ModelConfig
from aimg.model.transformer import WorldActionModel

# Graphs whose weights exceed this go to external data (protobuf files stop at 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
DEFAULT_OPSET = 20
SUPPORTED_OPSETS = (17, 18, 19, 20, 21, 22, 23)

DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
}


@dataclass
class GraphModule:
    """A module to export with its example inputs and the names of its inputs and outputs."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]


class Denoiser(nn.Module):
    """One evaluation of the world action model with named, fixed-shape inputs."""

    def __init__(self, model: WorldActionModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        cameras: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(latents, timestep, text, cameras)


def denoiser_inputs(
    cfg: ModelConfig, profile: Profile, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Example inputs of the denoiser for `profile` (random; timesteps mid-range)."""
    frames = 2 * profile.views * cfg.latent_frames
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    batch = profile.batch
    per_token = cfg.transformer.timestep_mode == "per_token"
    t_shape = (batch, frames) if per_token else (batch,)
    timestep = torch.rand(t_shape, generator=generator).mul(1000.0).to(dtype)
    h, w = cfg.latent_height, cfg.latent_width
    return (
        randn(batch, cfg.latent_channels, frames, h, w),
        timestep,
        randn(batch, cfg.text.max_length, cfg.transformer.text_dim),
        randn(batch, frames, cfg.cam_channels, h, w),
    )


def denoiser_graph(
    model: WorldActionModel, cfg: ModelConfig, profile: Profile, dtype: torch.dtype
) -> GraphModule:
    """The denoiser module and example inputs for `profile`."""
    return GraphModule(
        Denoiser(model),
        denoiser_inputs(cfg, profile, dtype),
        ["latents", "timestep", "text", "cameras"],
        ["velocity"],
    )


@contextlib.contextmanager
def export_mode(model: WorldActionModel, opset: int) -> Iterator[None]:
    """Below opset 23 RMSNorm and attention are written as elementary ops (no RMSNormalization
    or Attention node, which TensorRT 10.3 cannot parse); restored afterwards."""
    model.set_decomposed_attention(opset < 23)
    try:
        yield
    finally:
        model.set_decomposed_attention(False)


def tensor_specs(names: list[str], tensors: tuple[torch.Tensor, ...] | list) -> list[TensorSpec]:
    """Manifest entries for tensors (static shapes)."""
    return [
        TensorSpec(name, list(t.shape), DTYPE_NAMES[t.dtype])
        for name, t in zip(names, tensors, strict=True)
    ]


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what the ONNX file will hold)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def export_graph(graph: GraphModule, path: Path, opset: int = DEFAULT_OPSET) -> list[str]:
    """Export one graph with static shapes to `path` (dynamo exporter, constant folding).

    Returns the external-data file names written beside it (empty for graphs under ~2 GB).
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} is not supported; use one of {list(SUPPORTED_OPSETS)}")
    path = Path(path)
    external = parameter_bytes(graph.module) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module.eval(),
            graph.inputs,
            input_names=graph.input_names,
            output_names=graph.output_names,
            opset_version=opset,
            dynamo=True,
            external_data=external,
            optimize=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    for old in path.parent.glob(f"{path.name}.data*"):
        old.unlink()
    program.save(str(path), external_data=external)
    return sorted(p.name for p in path.parent.glob(f"{path.name}.data*")) if external else []


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's step-by-step prints off the user's terminal (we show a bar)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

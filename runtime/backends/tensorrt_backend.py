"""The TensorRT backend: the artifact's engines built for this GPU (`aimg export engine`).

Every graph runs with `execute_async_v3` on torch CUDA tensors bound by address, on the
backend's own CUDA stream (ordered against the caller's stream both ways). The denoiser, called
once per sampling step with static shapes, is captured once in a CUDA graph and replayed: a
step is a copy into its static input buffers, one graph launch and a copy of the velocity out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aimg.artifacts import ArtifactError, EngineSpec, Manifest, check_engine, read_manifest
from aimg.optional import require
from aimg.runtime.backends.base import BackendError, PlanBackend
from aimg.runtime.backends.text import ArtifactText

log = logging.getLogger(__name__)

# TensorRT DataType member names -> torch dtypes.
TRT_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
    "FP8": torch.float8_e4m3fn,
}

_LOGGERS: dict[int, Any] = {}


def _logger(trt: Any) -> Any:
    """One TensorRT logger per process (TensorRT expects a single one)."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]


def cuda_device(device: str | torch.device) -> torch.device:
    """'cuda' / 'cuda:1' -> a torch CUDA device with its index; anything else: BackendError."""
    device = torch.device(device)
    if device.type != "cuda":
        raise BackendError(
            f"the tensorrt backend runs on a CUDA GPU, not {device}: pass device='cuda' "
            "(--device cuda), or use the onnxruntime backend on the CPU"
        )
    if not torch.cuda.is_available():
        raise BackendError(
            "the tensorrt backend needs a CUDA GPU, and torch sees none (CPU-only torch, or no "
            "driver): install the CUDA build of torch on the GPU machine"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.device("cuda", index)


def suggested_precision(manifest: Manifest) -> str:
    """The precision a rebuild command should name: the built engines', else the export's."""
    for spec in manifest.engines.values():
        return spec.precision
    return manifest.profile.precision


def select_engines(
    manifest: Manifest,
    artifact: str | Path,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int],
) -> dict[str, EngineSpec]:
    """The engine of every graph, each built here, for this GPU and TensorRT; else ArtifactError."""
    precision = suggested_precision(manifest)
    missing = [graph for graph in manifest.graphs if graph not in manifest.engines]
    if missing:
        raise ArtifactError(
            f"{artifact} has no TensorRT engine for {', '.join(missing)}: build them on this "
            f"machine with `aimg export engine {artifact} --precision {precision}`"
        )
    engines = {}
    for graph in manifest.graphs:
        spec = manifest.engines[graph]
        check_engine(spec, tensorrt_version, gpu_name, compute_capability, artifact)
        if spec.onnx_sha256 != manifest.graphs[graph].file.sha256:
            raise ArtifactError(
                f"engine {spec.file.file} in {artifact} was built from another {graph}.onnx than "
                f"the artifact's (re-exported since?): rebuild it with `aimg export engine "
                f"{artifact} --precision {spec.precision}`"
            )
        engines[graph] = spec
    return engines


@dataclass(frozen=True)
class _Io:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


class _Engine:
    """One deserialised engine with its execution context and static I/O description."""

    def __init__(
        self, trt: Any, runtime: Any, path: Path, graph: str, input_order: Sequence[str]
    ) -> None:
        self.trt = trt
        self.graph = graph
        self.path = path
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"TensorRT could not load {path} (see its log above): rebuild it with "
                f"`aimg export engine {path.parent} --precision ...`"
            )
        inputs, outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            dtype_name = self.engine.get_tensor_dtype(name).name
            if dtype_name not in TRT_TORCH_DTYPES:
                raise BackendError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
            if any(d < 0 for d in shape):
                raise BackendError(
                    f"{path}: tensor {name!r} has dynamic shape {shape}; engines of an artifact "
                    "are static: rebuild it with `aimg export engine`"
                )
            io = _Io(name, shape, TRT_TORCH_DTYPES[dtype_name])
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(io)
        rank = {name: i for i, name in enumerate(input_order)}
        if {io.name for io in inputs} == set(rank):
            inputs.sort(key=lambda io: rank[io.name])  # the graph's argument order
        self.inputs: list[_Io] = inputs
        self.outputs: list[_Io] = outputs
        self.new_context()

    def new_context(self) -> None:
        """A fresh execution context (also after a failed CUDA-graph capture)."""
        self.context = self.engine.create_execution_context()
        for io in self.inputs:
            self.context.set_input_shape(io.name, io.shape)

    def check(self, values: Sequence[torch.Tensor]) -> None:
        if len(values) != len(self.inputs):
            raise ValueError(f"{self.graph} takes {len(self.inputs)} inputs, got {len(values)}")
        for io, value in zip(self.inputs, values, strict=True):
            if tuple(value.shape) != io.shape:
                raise ValueError(
                    f"{self.graph} input {io.name!r} must be {list(io.shape)} (the export "
                    f"profile), got {list(value.shape)}; re-export with a matching --profile"
                )

    def empty(self, ios: Sequence[_Io], device: torch.device) -> list[torch.Tensor]:
        return [torch.empty(io.shape, dtype=io.dtype, device=device) for io in ios]

    def bind(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> None:
        for io, tensor in zip(self.inputs + self.outputs, [*inputs, *outputs], strict=True):
            if not self.context.set_tensor_address(io.name, tensor.data_ptr()):
                raise BackendError(f"{self.path}: TensorRT refused the buffer of {io.name!r}")

    def execute(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run {self.path} (see its log above)")


class _CapturedStep:
    """Static buffers of an engine and a CUDA graph of one run on them."""

    def __init__(self, engine: _Engine, stream: torch.cuda.Stream, device: torch.device) -> None:
        self.inputs = [torch.zeros(io.shape, dtype=io.dtype, device=device) for io in engine.inputs]
        self.outputs = engine.empty(engine.outputs, device)
        engine.bind(self.inputs, self.outputs)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            engine.execute(stream)  # warm-up: TensorRT finishes its lazy setup outside capture
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            engine.execute(stream)
        stream.synchronize()


class TensorRTBackend(PlanBackend):
    """Runs the four engines of an artifact on one CUDA GPU; see the module docstring."""

    name = "tensorrt"

    def __init__(
        self,
        artifact: str | Path,
        manifest: Manifest | None = None,
        device: str | torch.device = "cuda",
        cuda_graph: bool = True,
    ) -> None:
        trt = require("tensorrt", "gpu")
        self.artifact = Path(artifact)
        self.manifest = manifest or read_manifest(self.artifact)
        device = cuda_device(device)
        self.gpu_name = torch.cuda.get_device_name(device)
        self.compute_capability = tuple(torch.cuda.get_device_capability(device))
        self.engine_specs = select_engines(
            self.manifest, self.artifact, trt.__version__, self.gpu_name, self.compute_capability
        )
        self.trt = trt
        runtime = trt.Runtime(_logger(trt))
        with torch.cuda.device(device):
            self.engines = {
                graph: _Engine(
                    trt,
                    runtime,
                    self.artifact / spec.file.file,
                    graph,
                    [t.name for t in self.manifest.graphs[graph].inputs],
                )
                for graph, spec in self.engine_specs.items()
            }
            self.stream = torch.cuda.Stream(device)
        dtype = self.engines["denoiser"].inputs[0].dtype
        super().__init__(
            self.manifest.effective_config(), device, dtype, self.manifest.profile.batch
        )
        self.text = ArtifactText(self.artifact, self.manifest, self.model_config)
        self._step: _CapturedStep | None = None
        if cuda_graph:
            self._capture_denoiser()

    def _capture_denoiser(self) -> None:
        """Capture the denoiser in a CUDA graph; on failure keep running it without one."""
        engine = self.engines["denoiser"]
        try:
            with torch.cuda.device(self.device):
                self._step = _CapturedStep(engine, self.stream, self.device)
        except Exception as exc:  # capture is an optimisation: never fatal
            log.warning("CUDA-graph capture of the denoiser failed (%s); running it without", exc)
            self._step = None
            torch.cuda.synchronize(self.device)
            engine.new_context()

    @property
    def cuda_graph(self) -> bool:
        """Whether denoiser steps replay a captured CUDA graph."""
        return self._step is not None

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        major, minor = self.compute_capability
        out.update(
            artifact=str(self.artifact),
            tensorrt=self.trt.__version__,
            gpu=f"{self.gpu_name} (sm{major}{minor})",
            engines={graph: spec.file.file for graph, spec in self.engine_specs.items()},
            engine_precision={g: spec.precision for g, spec in self.engine_specs.items()},
            cuda_graph=self.cuda_graph,
        )
        return out

    def synchronize(self) -> None:
        self.stream.synchronize()
        torch.cuda.current_stream(self.device).synchronize()

    def _run(self, graph: str, *values: torch.Tensor) -> torch.Tensor:
        """Run one engine on fresh buffers; returns its first output (on the caller's stream)."""
        engine = self.engines[graph]
        engine.check(values)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs = [
                value.to(self.device, io.dtype).contiguous()
                for io, value in zip(engine.inputs, values, strict=True)
            ]
            outputs = engine.empty(engine.outputs, self.device)
            engine.bind(inputs, outputs)
            engine.execute(self.stream)
        caller.wait_stream(self.stream)
        outputs[0].record_stream(caller)
        return outputs[0]

    def _replay(self, *values: torch.Tensor) -> torch.Tensor:
        """One denoiser step through the captured graph; returns a copy of the velocity."""
        step = self._step
        assert step is not None
        self.engines["denoiser"].check(values)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for buffer, value in zip(step.inputs, values, strict=True):
                buffer.copy_(value)  # casts to the engine's dtype
            step.graph.replay()
            # A copy: the static output is overwritten by the next step (CFG calls twice).
            out = step.outputs[0].clone()
        caller.wait_stream(self.stream)
        out.record_stream(caller)
        return out

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run("frame_encoder", pixels).float()

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        return self._run("video_encoder", videos).float()

    def denoise(self, latents, timestep, text, cams) -> torch.Tensor:
        if self._step is not None:
            return self._replay(latents, timestep, text, cams)
        return self._run("denoiser", latents, timestep, text, cams)

    def decode_segments(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("action_decoder", latents).float()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text(prompts)

"""The onnxruntime backend: an artifact's ONNX graphs on the CPU, CUDA or TensorRT providers.

On the CPU, inputs go in as NumPy arrays. On CUDA (the CUDA or TensorRT execution provider)
the denoiser is fed through IO binding: inputs and outputs stay torch CUDA tensors, bound by
pointer, so the step loop never copies latents to the host. The TensorRT provider caches its
engines in `<artifact>/ort-trt-cache` (built on first use, reused afterwards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimg.artifacts import Manifest, read_manifest
from aimg.optional import require
from aimg.runtime.backends.base import BackendError, PlanBackend
from aimg.runtime.backends.text import ArtifactText

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(PlanBackend):
    """Runs the four graphs of an artifact directory; see the module docstring."""

    name = "onnxruntime"

    def __init__(
        self,
        artifact: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        manifest: Manifest | None = None,
        device_id: int = 0,
        trt_fp16: bool = True,
        spin: bool = True,
    ) -> None:
        ort = require("onnxruntime", "gpu" if provider != "cpu" else "dev", "onnxruntime")
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {list(PROVIDERS)}, got {provider!r}")
        self.artifact = Path(artifact)
        self.manifest = manifest or read_manifest(self.artifact)
        available = set(ort.get_available_providers())
        if PROVIDERS[provider][0] not in available:
            raise BackendError(
                f"onnxruntime here has no {PROVIDERS[provider][0]} (it has {sorted(available)}): "
                "install onnxruntime-gpu (`pip install 'aimg[gpu]'`) on a CUDA machine, or use "
                "provider 'cpu'"
            )
        device = torch.device("cuda", device_id) if provider != "cpu" else torch.device("cpu")
        denoiser = self.manifest.graphs["denoiser"]
        dtype = TORCH_DTYPES[denoiser.inputs[0].dtype]
        super().__init__(
            self.manifest.effective_config(), device, dtype, self.manifest.profile.batch
        )
        self.provider = provider
        self.threads = threads
        if provider == "cpu":
            check_onnxruntime_cpu_precision(self.manifest)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin between ops (fast for graphs of many small ops); turn it off when
        # the planner shares its cores with other busy processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers: list[Any] = []
        for name in PROVIDERS[provider]:
            if name == "TensorrtExecutionProvider":
                cache = self.artifact / "ort-trt-cache"
                cache.mkdir(exist_ok=True)
                opts = {
                    "device_id": device_id,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache),
                    "trt_fp16_enable": trt_fp16,
                }
                providers.append((name, opts))
            elif name == "CUDAExecutionProvider":
                providers.append((name, {"device_id": device_id}))
            else:
                providers.append(name)
        self.sessions = {}
        for name, graph in self.manifest.graphs.items():
            path = str(self.artifact / graph.file.file)
            self.sessions[name] = ort.InferenceSession(path, options, providers=providers)
        self.graphs = self.manifest.graphs
        self.text = ArtifactText(self.artifact, self.manifest, self.model_config)
        self._ort = ort

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(provider=self.provider, artifact=str(self.artifact))
        return out

    def _run(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        """Run graph `name` on host tensors; inputs cast to the graph's dtypes."""
        graph = self.graphs[name]
        feeds = {}
        for spec, value in zip(graph.inputs, inputs, strict=True):
            array = value.detach().cpu().numpy().astype(NUMPY_DTYPES[spec.dtype], copy=False)
            if list(array.shape) != spec.shape:
                raise ValueError(
                    f"{name} input {spec.name!r} must be {spec.shape} (the export profile), got "
                    f"{list(array.shape)}; re-export with a matching --profile"
                )
            feeds[spec.name] = np.ascontiguousarray(array)
        (out,) = self.sessions[name].run([graph.outputs[0].name], feeds)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def _run_bound(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        """Run graph `name` on CUDA tensors through IO binding (no host copies)."""
        graph = self.graphs[name]
        session = self.sessions[name]
        binding = session.io_binding()
        keep = []
        for spec, value in zip(graph.inputs, inputs, strict=True):
            tensor = value.to(self.device, TORCH_DTYPES[spec.dtype]).contiguous()
            keep.append(tensor)
            binding.bind_input(
                spec.name,
                "cuda",
                self.device.index or 0,
                NUMPY_DTYPES[spec.dtype],
                spec.shape,
                tensor.data_ptr(),
            )
        out_spec = graph.outputs[0]
        output = torch.empty(out_spec.shape, dtype=TORCH_DTYPES[out_spec.dtype], device=self.device)
        binding.bind_output(
            out_spec.name,
            "cuda",
            self.device.index or 0,
            NUMPY_DTYPES[out_spec.dtype],
            out_spec.shape,
            output.data_ptr(),
        )
        session.run_with_iobinding(binding)
        return output

    def _call(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_bound(name, *inputs).float()
        return self._run(name, *inputs)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._call("frame_encoder", pixels)

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        return self._call("video_encoder", videos)

    def denoise(self, latents, timestep, text, cams) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_bound("denoiser", latents, timestep, text, cams)
        return self._run("denoiser", latents, timestep, text, cams)

    def decode_segments(self, latents: torch.Tensor) -> torch.Tensor:
        return self._call("action_decoder", latents)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text(prompts)


def check_onnxruntime_cpu_precision(manifest: Manifest) -> None:
    """onnxruntime's CPU provider runs fp32 and fp16 graphs, not bf16 ones."""
    if manifest.profile.precision == "bf16":
        raise BackendError(
            "onnxruntime's CPU provider cannot run bf16 graphs: export an fp32 or fp16 profile "
            "for the CPU, or build a TensorRT engine from this one (`aimg export engine`)"
        )

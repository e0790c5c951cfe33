"""The TensorRT backend: engine selection and its error messages here; running engines (CUDA
graph replay, parity with onnxruntime, a whole plan) on a GPU with TensorRT."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorrt_standin import StandInEngine

from aimg.artifacts import (
    ArtifactError,
    EngineSpec,
    GraphSpec,
    Manifest,
    Profile,
    SourceSpec,
    TensorSpec,
    engine_file_name,
    file_spec,
    write_manifest,
)
from aimg.optional import MissingDependencyError
from aimg.runtime.backends import BackendError, load
from aimg.runtime.backends.tensorrt_backend import (
    TRT_TORCH_DTYPES,
    TensorRTBackend,
    _Engine,
    cuda_device,
    select_engines,
    suggested_precision,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU_REASON = "needs a CUDA GPU and TensorRT (pip install 'aimg[gpu]')"
requires_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TENSORRT), reason=GPU_REASON
)
GRAPHS = ("denoiser", "frame_encoder", "video_encoder", "action_decoder")
H100 = ("NVIDIA H100 80GB HBM3", (9, 0))


def fake_artifact(directory: Path, engines: tuple[str, ...] = GRAPHS) -> Manifest:
    """Placeholder graph and engine files with a valid manifest (hashes match)."""
    graphs, specs = {}, {}
    for name in GRAPHS:
        (directory / f"{name}.onnx").write_bytes(f"onnx {name}".encode())
        graphs[name] = GraphSpec(
            file=file_spec(directory, f"{name}.onnx"),
            inputs=[TensorSpec("x", [1, 4], "float16")],
            outputs=[TensorSpec("y", [1, 4], "float32")],
            precision="fp16",
            opset=20,
        )
    for name in engines:
        engine = engine_file_name(name, "fp16", H100[1], "10.3.0")
        (directory / engine).write_bytes(f"plan {name}".encode())
        specs[name] = EngineSpec(
            file=file_spec(directory, engine),
            graph=name,
            onnx_sha256=graphs[name].file.sha256,
            precision="fp16",
            tensorrt_version="10.3.0",
            gpu_name=H100[0],
            compute_capability=list(H100[1]),
        )
    manifest = Manifest(
        source=SourceSpec("/ckpt", "cd" * 32, {"model": {}, "sampling": {}}),
        profile=Profile(2, 5, 64, 64, "fp16"),
        opset=20,
        graphs=graphs,
        exporter={"aimg": "0.1.0"},
        engines=specs,
    )
    write_manifest(directory, manifest)
    return manifest


# -- engine selection ------------------------------------------------------------------------------
def test_engines_built_here_are_selected(tmp_path):
    manifest = fake_artifact(tmp_path)
    engines = select_engines(manifest, tmp_path, "10.3.0", "NVIDIA H100 PCIe", (9, 0))
    assert list(engines) == list(GRAPHS)
    assert engines["denoiser"].file.file == "denoiser.fp16.sm90.trt10.3.0.engine"


def test_a_graph_without_an_engine_names_the_build_command(tmp_path):
    manifest = fake_artifact(tmp_path, engines=("denoiser",))
    with pytest.raises(ArtifactError) as info:
        select_engines(manifest, tmp_path, "10.3.0", *H100)
    message = str(info.value)
    assert "frame_encoder, video_encoder, action_decoder" in message
    assert f"aimg export engine {tmp_path} --precision fp16" in message


def test_an_artifact_without_engines_suggests_the_export_precision(tmp_path):
    manifest = fake_artifact(tmp_path, engines=())
    assert suggested_precision(manifest) == "fp16"
    with pytest.raises(ArtifactError, match="--precision fp16"):
        select_engines(manifest, tmp_path, "10.3.0", *H100)


@pytest.mark.parametrize(
    ("version", "gpu", "cc"),
    [("10.3.0", "NVIDIA GeForce RTX 4090", (8, 9)), ("10.8.0", "NVIDIA H100 PCIe", (9, 0))],
)
def test_engines_of_another_gpu_or_tensorrt_are_refused_with_the_rebuild_command(
    tmp_path, version, gpu, cc
):
    manifest = fake_artifact(tmp_path)
    with pytest.raises(ArtifactError) as info:
        select_engines(manifest, tmp_path, version, gpu, cc)
    assert f"rebuild it here with `aimg export engine {tmp_path} --precision fp16`" in str(
        info.value
    )


def test_an_engine_of_an_older_export_is_refused(tmp_path):
    manifest = fake_artifact(tmp_path)
    graphs = dict(manifest.graphs)
    (tmp_path / "denoiser.onnx").write_bytes(b"re-exported")
    graphs["denoiser"] = GraphSpec(
        file_spec(tmp_path, "denoiser.onnx"),
        graphs["denoiser"].inputs,
        graphs["denoiser"].outputs,
        "fp16",
        20,
    )
    stale = dataclasses.replace(manifest, graphs=graphs)
    with pytest.raises(ArtifactError, match="another denoiser.onnx"):
        select_engines(stale, tmp_path, "10.3.0", *H100)


# -- devices and dtypes ----------------------------------------------------------------------------
def test_the_backend_runs_only_on_cuda():
    with pytest.raises(BackendError, match="device='cuda'"):
        cuda_device("cpu")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_without_cuda_the_message_says_so():
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        cuda_device("cuda")


def test_engine_dtypes_agree_with_the_manifest_names():
    from aimg.export.engine import tensor_dtype_name

    for trt_name, dtype in TRT_TORCH_DTYPES.items():
        assert tensor_dtype_name(trt_name) == str(dtype).removeprefix("torch.")


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_without_tensorrt_the_error_names_the_extra(tmp_path):
    fake_artifact(tmp_path)
    with pytest.raises(MissingDependencyError, match=r"aimg\[gpu\]"):
        TensorRTBackend(tmp_path, device="cuda")
    with pytest.raises(MissingDependencyError, match=r"aimg\[gpu\]"):
        load(tmp_path, backend="tensorrt", device="cuda")


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines_artifact(tmp_path_factory, repo_root) -> Path:
    """sim-tiny exported at fp16 with engines built for this GPU."""
    if not (torch.cuda.is_available() and HAS_TENSORRT):
        pytest.skip(GPU_REASON)
    from aimg.export.engine import build_engines
    from aimg.export.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("artifact")
    export_artifact(repo_root / "assets" / "sim-tiny", out, "precision=fp16")
    build_engines(out, "fp16", workspace_gib=2, progress=False)
    return out


@pytest.fixture(scope="module")
def backend(engines_artifact) -> TensorRTBackend:
    return TensorRTBackend(engines_artifact, device="cuda")


def _denoiser_inputs(backend: TensorRTBackend, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [io.shape for io in backend.engines["denoiser"].inputs]
    values = [torch.randn(shape, generator=generator) for shape in shapes]
    values[1] = torch.rand(shapes[1], generator=generator) * 1000  # timesteps
    return [v.to("cuda", backend.dtype) for v in values]


@pytest.mark.gpu
@requires_gpu
def test_backend_loads_its_engines_and_describes_them(backend, engines_artifact):
    info = backend.describe()
    assert info["backend"] == "tensorrt" and info["dtype"] == "float16"
    assert set(info["engines"]) == set(GRAPHS) and info["cuda_graph"] is True
    assert info["tensorrt"] and "sm" in info["gpu"]
    auto = load(engines_artifact, device="cuda")
    assert isinstance(auto, TensorRTBackend)


@pytest.mark.gpu
@requires_gpu
def test_cuda_graph_replay_equals_a_plain_run_and_returns_fresh_tensors(backend):
    first_in, second_in = _denoiser_inputs(backend, 0), _denoiser_inputs(backend, 1)
    first = backend.denoise(*first_in)
    kept = first.clone()
    second = backend.denoise(*second_in)
    backend.synchronize()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # not overwritten by the next step
    torch.testing.assert_close(first, backend._run("denoiser", *first_in), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(second, backend._run("denoiser", *second_in), rtol=1e-3, atol=1e-3)
    assert not torch.equal(first, second)


@pytest.mark.gpu
@requires_gpu
def test_without_cuda_graph_the_denoiser_gives_the_same_velocity(backend, engines_artifact):
    plain = TensorRTBackend(engines_artifact, device="cuda", cuda_graph=False)
    assert plain.describe()["cuda_graph"] is False
    inputs = _denoiser_inputs(backend, 2)
    torch.testing.assert_close(
        plain.denoise(*inputs), backend.denoise(*inputs), rtol=1e-3, atol=1e-3
    )


@pytest.mark.gpu
@requires_gpu
def test_denoiser_matches_onnxruntime_on_the_cpu(backend, engines_artifact):
    from aimg.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(engines_artifact, "cpu")
    inputs = _denoiser_inputs(backend, 3)
    ours = backend.denoise(*inputs).float().cpu()
    theirs = reference.denoise(*[v.cpu() for v in inputs]).float()
    error = (ours - theirs).norm() / theirs.norm()
    assert error < 2e-2, f"relative L2 error {error:.4f}"


@pytest.mark.gpu
@requires_gpu
def test_a_whole_plan_runs_and_follows_onnxruntime(backend, engines_artifact):
    from aimg.observation import synthetic_observation
    from aimg.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    obs = synthetic_observation(backend.spec, seed=0)
    out = backend.plan(obs, "reach the red cube", seed=7)
    cfg = backend.model_config
    assert out.action_images.shape == (cfg.frames, cfg.views, cfg.height, cfg.width, 3)
    assert torch.isfinite(out.latents).all()
    assert len(out.timings["steps"]) == out.model_calls == backend.sampling.num_steps
    reference = OnnxRuntimeBackend(engines_artifact, "cpu").plan(obs, "reach the red cube", seed=7)
    error = (out.latents - reference.latents).norm() / reference.latents.norm()
    assert error < 5e-2, f"relative L2 error of the sampled latents {error:.4f}"


# -- engine I/O, read through a stand-in for TensorRT's engine -------------------------------------
def _engine(tmp_path: Path, io: list[tuple[str, tuple, str, str]]) -> _Engine:
    fake_trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"))
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda plan: StandInEngine(io))
    path = tmp_path / "denoiser.fp16.sm90.trt10.3.0.engine"
    path.write_bytes(b"plan")
    return _Engine(fake_trt, runtime, path, "denoiser", ["latents", "timestep", "text", "cameras"])


def test_engine_inputs_follow_the_graph_argument_order_and_set_static_shapes(tmp_path):
    engine = _engine(
        tmp_path,
        [
            ("text", (1, 16, 64), "HALF", "in"),
            ("velocity", (1, 192, 20, 8, 8), "HALF", "out"),
            ("latents", (1, 192, 20, 8, 8), "HALF", "in"),
            ("cameras", (1, 20, 384, 8, 8), "HALF", "in"),
            ("timestep", (1, 20), "HALF", "in"),
        ],
    )
    assert [io.name for io in engine.inputs] == ["latents", "timestep", "text", "cameras"]
    assert [io.name for io in engine.outputs] == ["velocity"]
    assert engine.inputs[0].dtype == torch.float16
    assert engine.engine.shapes["timestep"] == (1, 20)
    wrong = [torch.zeros(io.shape) for io in engine.inputs]
    wrong[0] = torch.zeros(1, 192, 10, 8, 8)
    with pytest.raises(ValueError, match=r"'latents' must be \[1, 192, 20, 8, 8\].*--profile"):
        engine.check(wrong)


def test_engines_with_dynamic_shapes_are_refused(tmp_path):
    with pytest.raises(BackendError, match="dynamic shape"):
        _engine(tmp_path, [("latents", (-1, 4), "FLOAT", "in"), ("y", (-1, 4), "FLOAT", "out")])

"""`aimg export engine`: the TensorRT 10.3 op table, build flags for TensorRT 10 and 11, engine
names, the fp8 Q/DQ check, timing-cache files and the manifest update; engine builds on a GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import onnx
import pytest
import torch
import torch.nn.functional as F
import typer
from onnx import TensorProto, helper
from tensorrt_standin import StandInEngine
from torch import nn
from typer.testing import CliRunner

from aimg.artifacts import (
    ArtifactError,
    GraphSpec,
    Manifest,
    Profile,
    SourceSpec,
    TensorSpec,
    check_engine,
    file_spec,
    read_manifest,
    write_manifest,
)
from aimg.export.engine import (
    EngineBuildError,
    TensorRTFeatures,
    build_engines,
    check_fp8_graph,
    engine_command,
    engine_path,
    make_engine_spec,
    parse_graphs,
    plan_build,
    quantize_node_count,
    read_timing_cache,
    record_engines,
    tensor_dtype_name,
    tensorrt_features,
    write_bytes_atomic,
)
from aimg.export.tensorrt_ops import (
    op_restrictions,
    op_types,
    opset_range,
    source,
    supported_ops,
    unsupported_ops,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU_REASON = "needs a CUDA GPU and TensorRT (pip install 'aimg[gpu]')"
requires_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TENSORRT), reason=GPU_REASON
)

TRT10 = TensorRTFeatures(
    "10.3.0",
    frozenset({"FP16", "BF16", "FP8", "INT8", "TF32", "STRICT_TYPES", "REFIT"}),
    frozenset({"EXPLICIT_BATCH", "STRONGLY_TYPED"}),
    progress_monitor=True,
)
TRT11 = TensorRTFeatures(
    "11.1.0", frozenset({"TF32", "REFIT"}), frozenset({"STRONGLY_TYPED"}), progress_monitor=True
)
HOPPER = (9, 0)


# -- the op table ----------------------------------------------------------------------------------
TRANSFORMER_OPS = {
    "MatMul", "Gemm", "Softmax", "LayerNormalization", "Gelu", "Erf", "Reshape", "Transpose",
    "Add", "Mul", "Sub", "Div", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "Cast", "Concat",
    "Slice", "Split", "Gather", "Unsqueeze", "Squeeze", "Expand", "Where", "Sigmoid", "Sin",
    "Cos", "Conv", "Clip", "Constant", "Shape", "QuantizeLinear", "DequantizeLinear",
}  # fmt: skip


def test_op_table_loads_with_its_source_and_opset_range():
    ops = supported_ops()
    assert isinstance(ops, frozenset) and len(ops) == 150
    assert opset_range() == (9, 20)
    text = source()
    assert "onnx/onnx-tensorrt" in text and "10.1-GA" in text and "docs/operators.md" in text
    assert "opset 9-20" in text
    assert not ops & unsupported_ops()


def test_op_table_has_the_ops_of_a_transformer_export():
    missing = TRANSFORMER_OPS - supported_ops()
    assert not missing, missing
    assert "BF16" in op_types("MatMul") and "FP16" in op_types("LayerNormalization")


def test_opset_23_ops_are_absent_from_the_op_table():
    # Native RMSNormalization and Attention (opset 23) cannot be parsed by TensorRT 10.3: the
    # exporter decomposes them below opset 23 (`aimg.export.graphs.export_mode`).
    ops = supported_ops() | unsupported_ops()
    for op in ("RMSNormalization", "Attention", "RotaryEmbedding"):
        assert op not in ops
    assert {"NonMaxSuppression", "GridSample"} <= supported_ops()
    assert {"Col2Im", "MatMulInteger", "DFT", "STFT"} <= unsupported_ops()


def test_op_restrictions_are_short_sentences():
    restrictions = op_restrictions()
    assert "first output" in restrictions["LayerNormalization"]
    assert "axes" in restrictions["ReduceMean"]
    assert "Slice" not in restrictions  # 10.3 parses tensor axes (changelog)
    assert set(restrictions) <= supported_ops()
    assert all(0 < len(text) <= 400 for text in restrictions.values())


class _Block(nn.Module):
    """A pre-norm transformer block written like the model's (RMSNorm by hand, tanh GELU)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32, elementwise_affine=False)
        self.qkv = nn.Linear(32, 96)
        self.ff = nn.Linear(32, 64)
        self.out = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).unflatten(-1, (3, 4, 8)).permute(2, 0, 3, 1, 4)
        x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x + self.out(F.gelu(self.ff(rms), approximate="tanh"))


def test_a_transformer_block_exported_at_opset_20_uses_only_supported_ops(tmp_path):
    from aimg.export.graphs import GraphModule, export_graph

    path = tmp_path / "block.onnx"
    export_graph(GraphModule(_Block(), (torch.randn(1, 6, 32),), ["x"], ["y"]), path, 20)
    model = onnx.load(str(path))
    used = {node.op_type for node in model.graph.node}
    assert used <= supported_ops(), used - supported_ops()
    low, high = opset_range()
    assert low <= model.opset_import[0].version <= high


# -- build flags -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "graph_precision", "flags"),
    [
        ("fp32", "fp32", ()),
        ("fp16", "fp32", ("FP16",)),
        ("bf16", "fp32", ("BF16",)),
        ("fp16", "fp16", ("FP16",)),
        ("bf16", "bf16", ("BF16",)),
    ],
)
def test_tensorrt_10_builds_weakly_typed_with_precision_flags(precision, graph_precision, flags):
    plan = plan_build("denoiser", precision, graph_precision, TRT10, HOPPER)
    assert not plan.strongly_typed and plan.network_flags == ()
    assert plan.builder_flags == flags


def test_tensorrt_10_fp8_needs_qdq_and_keeps_fp16_for_the_rest():
    plan = plan_build("denoiser", "fp8", "fp16", TRT10, HOPPER, quantized=True)
    assert plan.builder_flags == ("FP8", "FP16")
    with pytest.raises(EngineBuildError, match=r"quantized \(Q/DQ\).*fp16 or bf16"):
        plan_build("denoiser", "fp8", "fp16", TRT10, HOPPER, quantized=False)


def test_tensorrt_10_refuses_to_widen_a_reduced_precision_export():
    with pytest.raises(EngineBuildError, match="--profile precision=fp32"):
        plan_build("denoiser", "fp32", "fp16", TRT10, HOPPER)
    with pytest.raises(EngineBuildError, match="--profile precision=fp16"):
        plan_build("denoiser", "fp16", "bf16", TRT10, HOPPER)


def test_reduced_precisions_need_a_recent_enough_gpu():
    with pytest.raises(EngineBuildError, match="compute capability 8.0"):
        plan_build("denoiser", "bf16", "fp32", TRT10, (7, 5))
    with pytest.raises(EngineBuildError, match="compute capability 8.9"):
        plan_build("denoiser", "fp8", "fp16", TRT10, (8, 6), quantized=True)
    assert plan_build("denoiser", "fp8", "fp16", TRT10, (8, 9), quantized=True)


def test_tensorrt_11_is_strongly_typed_and_takes_the_precision_of_the_onnx():
    plan = plan_build("denoiser", "fp16", "fp16", TRT11, HOPPER)
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == ()
    with pytest.raises(EngineBuildError, match="(?i)export with --profile precision=fp16 first"):
        plan_build("denoiser", "fp16", "fp32", TRT11, HOPPER)
    with pytest.raises(EngineBuildError, match="precision=bf16"):
        plan_build("denoiser", "bf16", "fp16", TRT11, HOPPER)
    assert plan_build("denoiser", "fp8", "fp16", TRT11, HOPPER, quantized=True).strongly_typed


def test_strong_typing_is_detected_by_feature_not_only_by_version():
    no_flags = dataclasses.replace(TRT10, version="10.99.0", builder_flags=frozenset({"TF32"}))
    assert no_flags.strongly_typed_only
    eleven_with_flags = dataclasses.replace(TRT10, version="11.0.0")
    assert eleven_with_flags.strongly_typed_only
    assert not TRT10.strongly_typed_only
    bare = dataclasses.replace(TRT11, network_flags=frozenset())
    assert plan_build("denoiser", "fp16", "fp16", bare, HOPPER).network_flags == ()


def test_features_are_read_from_a_tensorrt_module():
    class Enum:
        def __init__(self, *names: str) -> None:
            self.__members__ = {name: i for i, name in enumerate(names)}

    fake = SimpleNamespace(
        __version__="10.3.0.26",
        BuilderFlag=Enum("FP16", "BF16", "FP8", "TF32"),
        NetworkDefinitionCreationFlag=Enum("EXPLICIT_BATCH", "STRONGLY_TYPED"),
        IProgressMonitor=object,
    )
    features = tensorrt_features(fake)
    assert features.major == 10 and features.progress_monitor
    assert {"FP16", "BF16", "FP8"} <= features.builder_flags
    assert not features.strongly_typed_only


def test_unknown_precision_is_refused():
    with pytest.raises(EngineBuildError, match="fp16"):
        plan_build("denoiser", "int8", "fp32", TRT10, HOPPER)


# -- names, dtypes, graphs -------------------------------------------------------------------------
def test_engines_are_named_by_graph_precision_gpu_and_tensorrt(tmp_path):
    path = engine_path(tmp_path, "denoiser", "fp16", (9, 0), "10.3.0")
    assert path == tmp_path / "denoiser.fp16.sm90.trt10.3.0.engine"
    assert engine_path(tmp_path, "frame_encoder", "bf16", [8, 7], "11.1.0.4").name == (
        "frame_encoder.bf16.sm87.trt11.1.0.4.engine"
    )


def test_tensorrt_dtypes_map_to_manifest_names():
    assert tensor_dtype_name("FLOAT") == "float32"
    assert tensor_dtype_name("HALF") == "float16"
    assert tensor_dtype_name("BF16") == "bfloat16"
    assert tensor_dtype_name("INT64") == "int64"


def test_graph_lists_are_checked_against_the_artifact():
    names = ("denoiser", "frame_encoder", "video_encoder", "action_decoder")
    assert parse_graphs(" denoiser, frame_encoder,denoiser", names) == ("denoiser", "frame_encoder")
    with pytest.raises(EngineBuildError, match="--graphs"):
        parse_graphs("denoiser,unet", names)
    with pytest.raises(EngineBuildError, match="--graphs"):
        parse_graphs(",", names)


# -- fp8: quantized graphs only --------------------------------------------------------------------
def _save(path: Path, nodes: list, initializers: list | None = None) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=initializers or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_fp8_check_rejects_a_plain_onnx(tmp_path):
    path = _save(tmp_path / "plain.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    assert quantize_node_count(path) == 0
    with pytest.raises(EngineBuildError, match=r"Q/DQ.*fp16"):
        check_fp8_graph("denoiser", path)


def test_fp8_check_accepts_an_onnx_with_quantize_linear(tmp_path):
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])
    zero = helper.make_tensor("zero", TensorProto.FLOAT8E4M3FN, [], [0.0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    path = _save(tmp_path / "qdq.onnx", nodes, [scale, zero])
    assert quantize_node_count(path) == 1
    check_fp8_graph("denoiser", path)


def test_quantize_nodes_inside_subgraphs_count(tmp_path):
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])
    zero = helper.make_tensor("zero", TensorProto.FLOAT8E4M3FN, [], [0.0])
    branch = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["b"]),
        ],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["c"])],
        "other",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 4])],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)
    path = _save(tmp_path / "if.onnx", [node], [scale, zero, cond])
    assert quantize_node_count(path) == 1


# -- timing cache files ----------------------------------------------------------------------------
def test_timing_cache_file_is_read_if_present_and_written_atomically(tmp_path):
    path = tmp_path / "timing.cache"
    assert read_timing_cache(path) == b""
    assert read_timing_cache(None) == b""
    write_bytes_atomic(path, memoryview(b"first"))
    assert read_timing_cache(path) == b"first"
    write_bytes_atomic(path, b"second, longer")
    assert read_timing_cache(path) == b"second, longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]  # no temporaries
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "timing.cache"
    write_bytes_atomic(path, b"old")

    with pytest.raises(TypeError):
        write_bytes_atomic(path, object())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]


# -- the manifest ----------------------------------------------------------------------------------
def fake_artifact(directory: Path, precision: str = "fp16", write_graphs: bool = True) -> Manifest:
    """An artifact directory whose graph files are placeholders (enough for the manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    graphs = {}
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    for name in ("denoiser", "frame_encoder", "video_encoder", "action_decoder"):
        if write_graphs:
            (directory / f"{name}.onnx").write_bytes(f"onnx graph {name}".encode())
        graphs[name] = GraphSpec(
            file=file_spec(directory, f"{name}.onnx"),
            inputs=[TensorSpec("x", [1, 4], dtype)],
            outputs=[TensorSpec("y", [1, 4], "float32")],
            precision=precision,
            opset=20,
        )
    manifest = Manifest(
        source=SourceSpec("/ckpt", "ab" * 32, {"model": {}, "sampling": {}}),
        profile=Profile(2, 5, 64, 64, precision),
        opset=20,
        graphs=graphs,
        exporter={"aimg": "0.1.0"},
    )
    write_manifest(directory, manifest)
    return manifest


def add_fake_engine(
    directory: Path,
    manifest: Manifest,
    graph: str,
    gpu: tuple[str, tuple[int, int]] = ("NVIDIA H100 80GB HBM3", (9, 0)),
    version: str = "10.3.0",
) -> Manifest:
    """Write a placeholder engine file and record it like `build_engines` does."""
    name, cc = gpu
    path = engine_path(directory, graph, "fp16", cc, version)
    write_bytes_atomic(path, f"plan of {graph}".encode())
    spec = make_engine_spec(
        directory,
        path.name,
        graph,
        manifest.graphs[graph],
        "fp16",
        version,
        name,
        cc,
        1 << 30,
        [TensorSpec("x", [1, 4], "float16")],
        [TensorSpec("y", [1, 4], "float32")],
    )
    return record_engines(manifest, {graph: spec})


def test_engine_specs_round_trip_through_the_manifest(tmp_path):
    manifest = fake_artifact(tmp_path)
    for graph in manifest.graphs:
        manifest = add_fake_engine(tmp_path, manifest, graph)
    write_manifest(tmp_path, manifest)
    again = read_manifest(tmp_path)  # hashes every graph and engine file
    assert again == manifest
    spec = again.engines["denoiser"]
    assert spec.file.file == "denoiser.fp16.sm90.trt10.3.0.engine"
    assert spec.onnx_sha256 == again.graphs["denoiser"].file.sha256
    assert spec.compute_capability == [9, 0] and spec.workspace_bytes == 1 << 30
    check_engine(spec, "10.3.0", "NVIDIA H100 PCIe", (9, 0), tmp_path)  # same sm and TensorRT


def test_record_engines_copies_and_replaces(tmp_path):
    manifest = fake_artifact(tmp_path)
    first = add_fake_engine(tmp_path, manifest, "denoiser")
    assert manifest.engines == {} and set(first.engines) == {"denoiser"}
    second = add_fake_engine(tmp_path, first, "denoiser", ("NVIDIA L4", (8, 9)))
    assert second.engines["denoiser"].gpu_name == "NVIDIA L4"
    assert len(second.engines) == 1


def test_record_engines_rejects_an_engine_of_another_graph_file(tmp_path):
    manifest = fake_artifact(tmp_path)
    spec = add_fake_engine(tmp_path, manifest, "denoiser").engines["denoiser"]
    with pytest.raises(ArtifactError, match="another denoiser.onnx"):
        record_engines(manifest, {"denoiser": dataclasses.replace(spec, onnx_sha256="0" * 64)})
    with pytest.raises(ArtifactError, match="not a graph"):
        record_engines(manifest, {"frame_encoder": spec})


@pytest.mark.parametrize(
    ("version", "gpu", "cc"),
    [("10.3.0", "NVIDIA L4", (8, 9)), ("10.7.0", "NVIDIA H100 80GB HBM3", (9, 0))],
)
def test_check_engine_rejects_another_gpu_or_tensorrt_with_the_rebuild_command(
    tmp_path, version, gpu, cc
):
    manifest = add_fake_engine(tmp_path, fake_artifact(tmp_path), "denoiser")
    with pytest.raises(ArtifactError) as info:
        check_engine(manifest.engines["denoiser"], version, gpu, cc, tmp_path)
    message = str(info.value)
    assert f"aimg export engine {tmp_path} --precision fp16" in message
    assert "sm90" in message and "TensorRT 10.3.0" in message


# -- the command -----------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("engine")(engine_command)
    return app


def test_engine_command_help_explains_every_option():
    result = CliRunner().invoke(_app(), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--precision", "--workspace-gib", "--graphs", "--timing-cache", "--device"):
        assert option in result.output
    assert "strongly typed" in result.output and "Q/DQ" in result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_engine_command_without_tensorrt_says_what_to_install(tmp_path):
    fake_artifact(tmp_path)
    result = CliRunner().invoke(_app(), [str(tmp_path), "--precision", "fp16"])
    assert result.exit_code == 2
    assert "aimg[gpu]" in result.output


def test_engine_command_reports_a_changed_graph_before_building(tmp_path):
    fake_artifact(tmp_path)
    (tmp_path / "denoiser.onnx").write_bytes(b"changed")
    result = CliRunner().invoke(_app(), [str(tmp_path), "--graphs", "denoiser"])
    assert result.exit_code == 2
    assert "does not match manifest.json" in result.output


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_tiny_artifact(tmp_path_factory, repo_root) -> Path:
    """sim-tiny exported at fp16 (static shapes, ~10 MB of graphs)."""
    if not (torch.cuda.is_available() and HAS_TENSORRT):
        pytest.skip(GPU_REASON)
    from aimg.export.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("artifact")
    export_artifact(repo_root / "assets" / "sim-tiny", out, "precision=fp16")
    return out


@pytest.mark.gpu
@requires_gpu
def test_build_engines_on_this_gpu_records_them_and_reuses_the_timing_cache(sim_tiny_artifact):
    import tensorrt as trt

    from aimg.export.engine import gpu_info

    directory = sim_tiny_artifact
    name, cc = gpu_info(0)
    manifest = build_engines(directory, "fp16", workspace_gib=2, progress=False)
    assert set(manifest.engines) == set(manifest.graphs)
    assert (directory / "timing.cache").stat().st_size > 0
    for graph, spec in manifest.engines.items():
        assert spec.file.file == engine_path(directory, graph, "fp16", cc, trt.__version__).name
        assert spec.gpu_name == name and spec.compute_capability == list(cc)
        assert [t.name for t in spec.inputs] == [t.name for t in manifest.graphs[graph].inputs]
        assert [t.shape for t in spec.outputs] == [t.shape for t in manifest.graphs[graph].outputs]
    assert read_manifest(directory) == manifest  # every hash checks out
    assert json.loads((directory / "manifest.json").read_text())["engines"]

    again = build_engines(directory, "fp16", graphs=("action_decoder",), progress=False)
    assert again.engines["denoiser"] == manifest.engines["denoiser"]
    assert read_manifest(directory) == again


@pytest.mark.gpu
@requires_gpu
def test_fp8_build_of_an_unquantized_export_fails_before_building(sim_tiny_artifact):
    with pytest.raises(EngineBuildError, match="Q/DQ|compute capability"):
        build_engines(sim_tiny_artifact, "fp8", graphs=("denoiser",), progress=False)


# -- the build loop, driven through a stand-in for the tensorrt module ----------------------------
class _Enum:
    """A pybind11-like enum: attributes and `__members__`."""

    def __init__(self, **members: int) -> None:
        self.__members__ = members
        for name, value in members.items():
            setattr(self, name, value)


class _FakeTensorRT(ModuleType):
    """Records what `build_engines` asks of TensorRT; builds 'plans' that are JSON."""

    def __init__(self, version: str = "10.3.0", weak_typing: bool = True) -> None:
        super().__init__("tensorrt")
        fake = self
        self.__version__ = version
        self.calls: list[tuple] = []
        flags = {"TF32": 0, "REFIT": 1}
        if weak_typing:
            flags.update(FP16=2, BF16=3, FP8=4)
        self.BuilderFlag = _Enum(**flags)
        self.NetworkDefinitionCreationFlag = _Enum(EXPLICIT_BATCH=0, STRONGLY_TYPED=5)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.reject: set[str] = set()

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                self.level = level

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data)

            def serialize(self) -> bytes:
                return self.data

            def combine(self, other: Cache, ignore_mismatch: bool) -> bool:
                self.data = b"|".join(sorted(set(self.data.split(b"|") + other.data.split(b"|"))))
                return True

        class Config:
            def __init__(self) -> None:
                self.flags: list[int] = []
                self.cache: Cache | None = None
                self.progress_monitor = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag: int) -> None:
                self.flags.append(flag)

            def create_timing_cache(self, data: bytes) -> Cache:
                fake.calls.append(("load cache", bytes(data)))
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> Cache | None:
                return self.cache

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.path = ""

        class ParserError:
            def desc(self) -> str:
                return "No importer registered for op: RMSNormalization"

            def node(self) -> int:
                return 7

            def node_name(self) -> str:
                return "/blocks.0/norm"

            def node_operator(self) -> str:
                return "RMSNormalization"

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                self.network.path = path
                if Path(path).stem in fake.reject:
                    self.num_errors = 1
                    return False
                return True

            def get_error(self, index: int) -> ParserError:
                return ParserError()

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                monitor = config.progress_monitor
                if monitor is not None:
                    monitor.phase_start("Building", None, 2)
                    monitor.phase_start("Tactics", "Building", 3)
                    for step in range(3):
                        assert monitor.step_complete("Tactics", step) is True
                    monitor.phase_finish("Tactics")
                    monitor.step_complete("Building", 1)
                    monitor.phase_finish("Building")
                graph = Path(network.path).stem
                config.cache.data += f"|{graph}".encode()
                fake.calls.append(("build", graph, network.flags, tuple(config.flags)))
                return json.dumps({"graph": graph}).encode()

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, plan) -> StandInEngine:
                return StandInEngine(
                    [("x", (1, 4), "HALF", "INPUT"), ("y", (1, 4), "FLOAT", "OUTPUT")]
                )

        self.Logger, self.IProgressMonitor, self.Builder = Logger, IProgressMonitor, Builder
        self.OnnxParser, self.Runtime = OnnxParser, Runtime


@pytest.fixture()
def fake_trt(monkeypatch) -> Callable[..., _FakeTensorRT]:
    """Install a stand-in tensorrt module and an H100 as this machine's GPU."""
    import aimg.export.engine as engine_module

    def install(version: str = "10.3.0", weak_typing: bool = True) -> _FakeTensorRT:
        fake = _FakeTensorRT(version, weak_typing)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    monkeypatch.setattr(engine_module, "gpu_info", lambda device=0: ("NVIDIA H100 PCIe", (9, 0)))
    monkeypatch.setattr(engine_module, "_device_context", lambda device: contextlib.nullcontext())
    return install


def test_build_engines_records_every_engine_and_keeps_a_timing_cache(tmp_path, fake_trt):
    fake_artifact(tmp_path)
    trt = fake_trt()
    manifest = build_engines(tmp_path, "fp16", workspace_gib=1.5, progress=True)
    builds = [call for call in trt.calls if call[0] == "build"]
    assert [b[1] for b in builds] == list(manifest.graphs)
    assert all(b[2] == 0 and b[3] == (trt.BuilderFlag.FP16,) for b in builds)  # weakly typed
    assert ("pool", "WORKSPACE", int(1.5 * 2**30)) in trt.calls
    assert read_manifest(tmp_path) == manifest
    for graph, spec in manifest.engines.items():
        assert spec.file.file == f"{graph}.fp16.sm90.trt10.3.0.engine"
        assert json.loads((tmp_path / spec.file.file).read_text()) == {"graph": graph}
        assert spec.inputs == [TensorSpec("x", [1, 4], "float16")]
        assert spec.outputs == [TensorSpec("y", [1, 4], "float32")]
        assert spec.gpu_name == "NVIDIA H100 PCIe" and spec.workspace_bytes == int(1.5 * 2**30)
    cache = (tmp_path / "timing.cache").read_bytes()
    assert all(graph.encode() in cache for graph in manifest.graphs)
    loads = [call[1] for call in trt.calls if call[0] == "load cache"]
    assert loads[0] == b"" and loads[1] != b""  # the second build starts from the first's cache


def test_a_rebuild_replaces_the_old_engine_file(tmp_path, fake_trt):
    fake_artifact(tmp_path)
    fake_trt()
    build_engines(tmp_path, "fp16", graphs=("denoiser",), progress=False)
    fake_trt("10.8.0")
    manifest = build_engines(tmp_path, "fp16", graphs="denoiser", progress=False)
    assert manifest.engines["denoiser"].file.file == "denoiser.fp16.sm90.trt10.8.0.engine"
    assert not (tmp_path / "denoiser.fp16.sm90.trt10.3.0.engine").exists()
    assert read_manifest(tmp_path) == manifest


def test_tensorrt_11_builds_strongly_typed_networks(tmp_path, fake_trt):
    fake_artifact(tmp_path, "fp16")
    trt = fake_trt("11.1.0", weak_typing=False)
    build_engines(tmp_path, "fp16", graphs=("denoiser",), progress=False)
    (build,) = [call for call in trt.calls if call[0] == "build"]
    assert build[2] == 1 << 5 and build[3] == ()  # STRONGLY_TYPED, no precision flags


def test_tensorrt_11_refuses_a_precision_the_export_does_not_have(tmp_path, fake_trt):
    fake_artifact(tmp_path, "fp32")
    trt = fake_trt("11.1.0", weak_typing=False)
    with pytest.raises(EngineBuildError, match="export with --profile precision=fp16 first"):
        build_engines(tmp_path, "fp16", progress=False)
    assert not [call for call in trt.calls if call[0] == "build"]


def test_parser_errors_are_listed_with_their_nodes(tmp_path, fake_trt):
    fake_artifact(tmp_path)
    trt = fake_trt()
    trt.reject.add("denoiser")
    with pytest.raises(EngineBuildError) as info:
        build_engines(tmp_path, "fp16", graphs=("denoiser",), progress=False)
    message = str(info.value)
    assert "No importer registered for op: RMSNormalization" in message
    assert "/blocks.0/norm" in message and "node #7" in message
    assert "opset <= 20" in message


def test_fp8_on_an_unquantized_export_fails_before_any_build(tmp_path, fake_trt):
    for name in ("denoiser", "frame_encoder", "video_encoder", "action_decoder"):
        _save(tmp_path / f"{name}.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    fake_artifact(tmp_path, write_graphs=False)
    trt = fake_trt()
    with pytest.raises(EngineBuildError, match=r"quantized \(Q/DQ\)"):
        build_engines(tmp_path, "fp8", progress=False)
    assert not [call for call in trt.calls if call[0] == "build"]

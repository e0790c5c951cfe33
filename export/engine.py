"""`aimg export engine DIR --precision fp16|bf16|fp8|fp32`: TensorRT engines from an artifact.

Each ONNX graph of the artifact is built into `<graph>.<precision>.sm<cc>.trt<version>.engine`
beside it (an engine runs only on the GPU architecture and TensorRT version it was built with)
and recorded in `manifest.json` (`EngineSpec`: the graph's hash, the GPU, the engine's tensors).

TensorRT 10 builds weakly typed networks whose precision comes from builder flags (FP16, BF16;
FP8 only for graphs quantized with Q/DQ nodes). TensorRT 11 removed those flags: networks are
strongly typed and run at the ONNX graph's precision, so the artifact must have been exported at
the asked precision. Which rule applies is read from the installed TensorRT's features, not only
its version. A timing cache (`timing.cache` in the artifact) makes rebuilds fast.

Everything that can be decided without TensorRT (flags, names, the Q/DQ check, cache files,
the manifest update) is a plain function here, tested on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from aimg.artifacts import (
    GRAPH_NAMES,
    ArtifactError,
    EngineSpec,
    GraphSpec,
    Manifest,
    TensorSpec,
    engine_file_name,
    file_spec,
    read_manifest,
    verify_files,
    write_manifest,
)
from aimg.atomic_files import write_bytes_atomic
from aimg.optional import MissingDependencyError, require

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
TIMING_CACHE_NAME = "timing.cache"
DEFAULT_WORKSPACE_GIB = 8.0
# Lowest compute capability with tensor-core support for the precision.
MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}
# Weakly typed builds (TensorRT 10): the flags that let TensorRT pick kernels of a precision.
# FP8 covers only the quantized layers; the rest run in FP16.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "fp8": ("FP8", "FP16")}
GRAPH_DTYPE_FLAGS = {"fp16": "FP16", "bf16": "BF16"}
QUANTIZE_OPS = frozenset({"QuantizeLinear", "TRT_FP8QuantizeLinear", "TRT_INT4QuantizeLinear"})
TRT_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
    "INT4": "int4",
    "FP4": "float4_e2m1fn",
}


class EngineBuildError(ValueError):
    """An engine cannot be built as asked; the message says what to do instead."""


# -- what the installed TensorRT offers ------------------------------------------------------------
@dataclass(frozen=True)
class TensorRTFeatures:
    """What a TensorRT module offers (read by `tensorrt_features`, or written out in tests)."""

    version: str
    builder_flags: frozenset[str]
    network_flags: frozenset[str]
    progress_monitor: bool = False

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT >= 11, or any build without the weak-typing precision flags."""
        return self.major >= 11 or "FP16" not in self.builder_flags


def _enum_names(enum: Any) -> frozenset[str]:
    members = getattr(enum, "__members__", None)
    if members is not None:
        return frozenset(members)
    return frozenset(name for name in dir(enum) if name.isupper())


def tensorrt_features(trt: Any) -> TensorRTFeatures:
    """Read the features of an imported `tensorrt` module."""
    return TensorRTFeatures(
        version=trt.__version__,
        builder_flags=_enum_names(trt.BuilderFlag),
        network_flags=_enum_names(trt.NetworkDefinitionCreationFlag),
        progress_monitor=hasattr(trt, "IProgressMonitor"),
    )


# -- what to build ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How one graph is built: network creation flags and builder flags (TensorRT enum names)."""

    graph: str
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]


def plan_build(
    graph: str,
    precision: str,
    graph_precision: str,
    features: TensorRTFeatures,
    compute_capability: Sequence[int],
    quantized: bool = False,
) -> BuildPlan:
    """Choose the flags for building `graph` at `precision`, or say why it cannot be built.

    graph_precision: the ONNX graph's precision (manifest); quantized: it has Q/DQ nodes.
    """
    if precision not in ENGINE_PRECISIONS:
        raise EngineBuildError(
            f"precision must be one of {list(ENGINE_PRECISIONS)}, got {precision!r}"
        )
    cc = tuple(compute_capability)
    needed = MIN_COMPUTE_CAPABILITY.get(precision)
    if needed is not None and cc < needed:
        raise EngineBuildError(
            f"{precision} needs a GPU of compute capability {needed[0]}.{needed[1]} or newer; this "
            f"one is {cc[0]}.{cc[1]}: build with --precision fp16"
        )
    if precision == "fp8" and not quantized:
        raise EngineBuildError(_fp8_message(graph))
    if features.strongly_typed_only:
        if precision != "fp8" and graph_precision != precision:
            raise EngineBuildError(
                f"TensorRT {features.version} builds strongly typed networks, which run at the "
                f"ONNX graph's precision: {graph}.onnx is {graph_precision}, not {precision}; "
                f"export with --profile precision={precision} first (`aimg export onnx CHECKPOINT "
                f"--out DIR --profile precision={precision}`), or build --precision "
                f"{graph_precision}"
            )
        typed = ("STRONGLY_TYPED",) if "STRONGLY_TYPED" in features.network_flags else ()
        return BuildPlan(graph, precision, True, typed, ())
    if graph_precision in GRAPH_DTYPE_FLAGS and precision not in (graph_precision, "fp8"):
        raise EngineBuildError(
            f"{graph}.onnx was exported in {graph_precision}; a {precision} engine needs a graph "
            f"exported at {precision} or fp32: export with --profile precision={precision} "
            f"first, or build --precision {graph_precision}"
        )
    flags = list(PRECISION_FLAGS[precision])
    own = GRAPH_DTYPE_FLAGS.get(graph_precision)
    if own is not None and own not in flags:
        flags.append(own)  # the graph's own tensors are in this type
    missing = [flag for flag in flags if flag not in features.builder_flags]
    if missing:
        raise EngineBuildError(
            f"TensorRT {features.version} has no BuilderFlag {', '.join(missing)}: "
            f"{precision} engines need another TensorRT version"
        )
    return BuildPlan(graph, precision, False, (), tuple(flags))


def quantize_node_count(onnx_path: str | Path) -> int:
    """QuantizeLinear nodes in an ONNX file (subgraphs and local functions included)."""
    onnx = require("onnx", "gpu")
    model = onnx.load(str(onnx_path), load_external_data=False)

    def count(nodes: Iterable[Any]) -> int:
        total = 0
        for node in nodes:
            total += node.op_type in QUANTIZE_OPS
            for attr in node.attribute:
                if attr.HasField("g"):
                    total += count(attr.g.node)
                for sub in attr.graphs:
                    total += count(sub.node)
        return total

    return count(model.graph.node) + sum(count(f.node) for f in model.functions)


def check_fp8_graph(graph: str, onnx_path: str | Path) -> None:
    """fp8 engines are built only from quantized (Q/DQ) graphs; else EngineBuildError."""
    if quantize_node_count(onnx_path) == 0:
        raise EngineBuildError(_fp8_message(graph))


def _fp8_message(graph: str) -> str:
    return (
        f"fp8 needs a quantized (Q/DQ) ONNX graph, and {graph}.onnx has no QuantizeLinear "
        "nodes: quantize it first (e.g. with TensorRT Model Optimizer), or build it with "
        "--precision fp16 or bf16, which work on this export as is"
    )


def engine_path(
    directory: str | Path, graph: str, precision: str, compute_capability, tensorrt_version: str
) -> Path:
    """Where the engine of `graph` built here goes (named by what it was built for)."""
    name = engine_file_name(graph, precision, compute_capability, tensorrt_version)
    return Path(directory) / name


def tensor_dtype_name(trt_dtype_name: str) -> str:
    """TensorRT DataType member name ('HALF') -> the manifest's dtype name ('float16')."""
    return TRT_DTYPE_NAMES.get(trt_dtype_name, trt_dtype_name.lower())


# -- files -----------------------------------------------------------------------------------------


def read_timing_cache(path: str | Path | None) -> bytes:
    """The serialized timing cache at `path`, or b'' (start a new one) when there is none."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


# -- the manifest ----------------------------------------------------------------------------------
def make_engine_spec(
    directory: str | Path,
    engine_file: str,
    graph: str,
    graph_spec: GraphSpec,
    precision: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int],
    workspace_bytes: int,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> EngineSpec:
    """The manifest entry of an engine file just written into the artifact directory."""
    return EngineSpec(
        file=file_spec(directory, engine_file),
        graph=graph,
        onnx_sha256=graph_spec.file.sha256,
        precision=precision,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=list(compute_capability),
        workspace_bytes=workspace_bytes,
        inputs=inputs,
        outputs=outputs,
    )


def record_engines(manifest: Manifest, engines: dict[str, EngineSpec]) -> Manifest:
    """A copy of `manifest` with these engines (one per graph, replacing older ones)."""
    for graph, spec in engines.items():
        if graph not in manifest.graphs or spec.graph != graph:
            raise ArtifactError(f"engine {spec.file.file} is for {spec.graph!r}, not a graph here")
        if spec.onnx_sha256 != manifest.graphs[graph].file.sha256:
            raise ArtifactError(
                f"engine {spec.file.file} was built from another {graph}.onnx than this "
                "artifact's; rebuild it with `aimg export engine`"
            )
    return dataclasses.replace(manifest, engines={**manifest.engines, **engines})


def parser_error_message(graph: str, onnx_path: str | Path, errors: list[str]) -> str:
    """One message for every error the ONNX parser reported."""
    lines = "\n".join(f"  - {error}" for error in errors) or "  (no error description)"
    return (
        f"TensorRT's ONNX parser rejected {onnx_path} ({graph}):\n{lines}\n"
        "Check the graph's ops with `aimg export check`; TensorRT 10.3 parses opset <= 20 "
        "(export with --opset 20)."
    )


def _describe_parser_error(error: Any) -> str:
    parts = [str(error.desc())]
    name = getattr(error, "node_name", None)
    op = getattr(error, "node_operator", None)
    where = [str(f()) for f in (op, name) if f is not None and f()]
    if error.node() >= 0:
        where.append(f"node #{error.node()}")
    if where:
        parts.append(f"({', '.join(where)})")
    return " ".join(parts)


# -- the GPU ---------------------------------------------------------------------------------------
def gpu_info(device: int = 0) -> tuple[str, tuple[int, int]]:
    """Name and compute capability of CUDA device `device` (torch, else cuda-python)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), (major, minor)
    try:
        return _cuda_python_gpu_info(device)
    except ImportError as exc:
        raise EngineBuildError(
            "no CUDA GPU visible to torch, and cuda-python is not installed: building TensorRT "
            "engines needs the GPU they will run on"
        ) from exc


def _cuda_python_gpu_info(device: int) -> tuple[str, tuple[int, int]]:
    try:
        from cuda.bindings import driver
    except ImportError:
        from cuda import cuda as driver

    def check(result: tuple) -> Any:
        err, *values = result
        if err != driver.CUresult.CUDA_SUCCESS:
            raise EngineBuildError(f"CUDA driver error {err} while looking up GPU {device}")
        return values[0] if values else None

    check(driver.cuInit(0))
    handle = check(driver.cuDeviceGet(device))
    name = check(driver.cuDeviceGetName(256, handle))
    attr = driver.CUdevice_attribute
    major, minor = (
        check(driver.cuDeviceGetAttribute(getattr(attr, f"CU_DEVICE_ATTRIBUTE_{key}"), handle))
        for key in ("COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR")
    )
    return bytes(name).split(b"\0", 1)[0].decode(), (int(major), int(minor))


# -- TensorRT --------------------------------------------------------------------------------------
def _progress_monitor(trt: Any, first_position: int) -> Any:
    """An IProgressMonitor drawing one tqdm bar per build phase (nested phases indented)."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._bars: dict[str, Any] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                with self._lock:
                    depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self._depth[phase_name] = depth
                    self._bars[phase_name] = tqdm(
                        total=num_steps,
                        desc="  " * depth + phase_name,
                        position=first_position + depth,
                        leave=False,
                        dynamic_ncols=True,
                    )
            except Exception:  # never let a display error cross into TensorRT
                pass

        def step_complete(self, phase_name, step):
            try:
                with self._lock:
                    bar = self._bars.get(phase_name)
                    if bar is not None:
                        bar.update(max(0, step + 1 - bar.n))
            except Exception:
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            try:
                with self._lock:
                    bar = self._bars.pop(phase_name, None)
                    self._depth.pop(phase_name, None)
                    if bar is not None:
                        bar.close()
            except Exception:
                pass

    return TqdmProgressMonitor()


def _network_flag_bits(trt: Any, names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return bits


def _attach_timing_cache(config: Any, data: bytes, path: Path) -> None:
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s is for another GPU or TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timings into the file (another build may have written it)."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    existing = read_timing_cache(path)
    if existing:
        merged = config.create_timing_cache(existing)
        if merged is not None and merged.combine(cache, False):
            cache = merged
    write_bytes_atomic(path, memoryview(cache.serialize()))


def engine_io(trt: Any, engine: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs (name, shape, dtype name) of a deserialised engine."""
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        spec = TensorSpec(
            name,
            [int(d) for d in engine.get_tensor_shape(name)],
            tensor_dtype_name(engine.get_tensor_dtype(name).name),
        )
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(spec)
    return inputs, outputs


def _build_one(
    trt: Any,
    logger: Any,
    directory: Path,
    graph_spec: GraphSpec,
    plan: BuildPlan,
    gpu: tuple[str, tuple[int, int]],
    workspace_bytes: int,
    cache_path: Path,
    monitor: Any,
) -> EngineSpec:
    onnx_path = directory / graph_spec.file.file
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flag_bits(trt, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(parser_error_message(plan.graph, onnx_path, errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    _attach_timing_cache(config, read_timing_cache(cache_path), cache_path)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build {plan.graph} at {plan.precision} (its log above says why); "
            f"a larger --workspace-gib (now {workspace_bytes / 2**30:g}) often helps"
        )
    _save_timing_cache(config, cache_path)
    gpu_name, cc = gpu
    path = engine_path(directory, plan.graph, plan.precision, cc, trt.__version__)
    write_bytes_atomic(path, memoryview(serialized))
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineBuildError(f"TensorRT cannot load the engine it just built: {path}")
    inputs, outputs = engine_io(trt, engine)
    return make_engine_spec(
        directory,
        path.name,
        plan.graph,
        graph_spec,
        plan.precision,
        trt.__version__,
        gpu_name,
        cc,
        workspace_bytes,
        inputs,
        outputs,
    )


def _device_context(device: int):
    import contextlib

    import torch

    if torch.cuda.is_available():
        return torch.cuda.device(device)
    if device != 0:
        raise EngineBuildError(
            f"building on GPU {device} without torch CUDA: set CUDA_VISIBLE_DEVICES={device} "
            "and build on device 0"
        )
    return contextlib.nullcontext()


def parse_graphs(text: str | Sequence[str], available: Iterable[str]) -> tuple[str, ...]:
    """'denoiser,frame_encoder' -> the graph names, each one the artifact has."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n for n in names if n))
    have = list(available)
    unknown = [n for n in names if n not in have]
    if unknown or not names:
        raise EngineBuildError(f"--graphs must name graphs of the artifact {have}, got {names}")
    return tuple(names)


def build_engines(
    artifact_dir: str | Path,
    precision: str,
    graphs: Sequence[str] = GRAPH_NAMES,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    progress: bool = True,
    device: int = 0,
) -> Manifest:
    """Build engines for `graphs` of the artifact on this GPU; returns the updated manifest."""
    from tqdm import tqdm

    directory = Path(artifact_dir)
    manifest = read_manifest(directory, verify=False)
    graphs = parse_graphs(graphs, manifest.graphs)
    subset = {g: manifest.graphs[g] for g in graphs}
    verify_files(directory, dataclasses.replace(manifest, graphs=subset, engines={}))
    if workspace_gib <= 0:
        raise EngineBuildError(f"--workspace-gib must be positive, got {workspace_gib}")
    trt = require("tensorrt", "gpu")
    features = tensorrt_features(trt)
    gpu_name, cc = gpu_info(device)
    plans = {}
    for graph, spec in subset.items():  # every check before the first (long) build
        quantized = precision == "fp8" and quantize_node_count(directory / spec.file.file) > 0
        plans[graph] = plan_build(graph, precision, spec.precision, features, cc, quantized)
    cache_path = Path(timing_cache) if timing_cache else directory / TIMING_CACHE_NAME
    logger = trt.Logger(trt.Logger.WARNING)
    workspace = int(workspace_gib * 2**30)
    monitor = _progress_monitor(trt, 1) if progress and features.progress_monitor else None
    bar = tqdm(plans.values(), desc="engines", unit="graph", disable=not progress)
    with _device_context(device):
        for plan in bar:
            bar.set_postfix_str(f"{plan.graph} ({plan.precision})")
            spec = _build_one(
                trt,
                logger,
                directory,
                subset[plan.graph],
                plan,
                (gpu_name, cc),
                workspace,
                cache_path,
                monitor,
            )
            old = manifest.engines.get(plan.graph)
            manifest = record_engines(manifest, {plan.graph: spec})
            write_manifest(directory, manifest)
            if old is not None and old.file.file != spec.file.file:
                (directory / old.file.file).unlink(missing_ok=True)
                log.info("replaced %s with %s", old.file.file, spec.file.file)
    return manifest


# -- CLI -------------------------------------------------------------------------------------------
def engine_command(
    artifact: Path = typer.Argument(
        ..., help="Artifact directory written by `aimg export onnx` (has manifest.json)."
    ),
    precision: str = typer.Option(
        "fp16",
        "--precision",
        help="fp16, bf16, fp8 or fp32. TensorRT 10 lowers an fp32 export to fp16/bf16 as "
        "asked; TensorRT 11 (strongly typed) needs the export at this precision "
        "(--profile precision=...). fp8 needs graphs quantized with Q/DQ nodes.",
    ),
    workspace_gib: float = typer.Option(
        DEFAULT_WORKSPACE_GIB,
        "--workspace-gib",
        help="GPU memory TensorRT may use for scratch space while choosing kernels (GiB); "
        "more lets it try faster tactics.",
    ),
    graphs: str = typer.Option(
        ",".join(GRAPH_NAMES),
        "--graphs",
        help="Comma-separated graphs to build (default: all four).",
    ),
    timing_cache: Path | None = typer.Option(
        None,
        "--timing-cache",
        help="Timing cache file, read if present and updated after each build; reuse one "
        "across artifacts to make rebuilds fast. Default: DIR/timing.cache.",
    ),
    device: int = typer.Option(0, "--device", min=0, help="CUDA device index to build on."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm bars."),
) -> None:
    """Build TensorRT engines for this GPU from an artifact's ONNX graphs.

    Engines are named by what they were built for (denoiser.fp16.sm90.trt10.3.0.engine), placed
    in the artifact and recorded in its manifest; an engine runs only on the GPU architecture and
    TensorRT version it was built with. Prints the engines as JSON when done.
    """
    try:
        manifest = build_engines(
            artifact, precision, graphs, workspace_gib, timing_cache, progress, device
        )
    except (ArtifactError, EngineBuildError, MissingDependencyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = {
        graph: {
            "file": spec.file.file,
            "precision": spec.precision,
            "tensorrt": spec.tensorrt_version,
            "gpu": spec.gpu_name,
            "size_mib": round(spec.file.size / 2**20, 1),
        }
        for graph, spec in manifest.engines.items()
    }
    typer.echo(json.dumps(summary, indent=2))

"""`aimg export check`: will TensorRT 10.3 (Jetson) parse these graphs, and do they match the
manifest?

Per graph: no complex or double tensors (inputs, outputs, initializers, inferred intermediates,
Cast targets), no ScatterND (strided slice assignment exported as a scatter: slow in TensorRT
and a sign that model code should be fixed), every op in the default ONNX domain and in the set
TensorRT 10.3's ONNX parser supports (`aimg.export.tensorrt_ops`), an opset the parser reads,
and inputs/outputs with the names, shapes and dtypes the manifest records. The report carries
each graph's op histogram.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from aimg.artifacts import GraphSpec, Manifest, read_manifest

FORBIDDEN_OPS = {"ScatterND": "strided slice assignment; rewrite the model code without it"}
MAX_TENSORRT_OPSET = 20  # TensorRT 10.3's parser reads opsets 9-20


def _dtype_names() -> dict[int, str]:
    import onnx

    return {
        value: onnx.helper.tensor_dtype_to_np_dtype(value).name
        if value not in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.STRING)
        else onnx.TensorProto.DataType.Name(value).lower()
        for value in onnx.TensorProto.DataType.values()
        if value != onnx.TensorProto.UNDEFINED
    }


def _bad_types() -> dict[int, str]:
    import onnx

    return {
        onnx.TensorProto.DOUBLE: "double",
        onnx.TensorProto.COMPLEX64: "complex64",
        onnx.TensorProto.COMPLEX128: "complex128",
    }


def check_graph(path: Path, spec: GraphSpec | None = None) -> dict[str, Any]:
    """Problems and op histogram of one ONNX file (weights are not loaded)."""
    import onnx

    from aimg.export.tensorrt_ops import supported_ops

    model = onnx.load(str(path), load_external_data=False)
    problems: list[str] = []
    ops = Counter(node.op_type for node in model.graph.node)
    domains = {node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")}
    if domains:
        problems.append(f"ops from non-standard domains {sorted(domains)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > MAX_TENSORRT_OPSET:
        problems.append(
            f"opset {opset}: TensorRT 10.3 parses up to opset {MAX_TENSORRT_OPSET}; export with "
            "--opset 20"
        )
    for op, why in FORBIDDEN_OPS.items():
        if ops.get(op):
            problems.append(f"{ops[op]} {op} node(s): {why}")
    unsupported = sorted(op for op in ops if op not in supported_ops())
    if unsupported:
        problems.append(f"ops TensorRT 10.3's ONNX parser does not support: {unsupported}")

    bad = _bad_types()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        problems.append(f"shape inference failed ({exc}); intermediate dtypes unchecked")
        inferred = model
    values = [
        *inferred.graph.input,
        *inferred.graph.output,
        *inferred.graph.value_info,
    ]
    typed = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    typed.update({init.name: init.data_type for init in model.graph.initializer})
    found = Counter(bad[t] for t in typed.values() if t in bad)
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in bad:
                found[bad[to]] += 1
    for kind, count in sorted(found.items()):
        problems.append(f"{count} {kind} tensor(s) or cast(s)")

    names = _dtype_names()
    io = {
        "inputs": _io(model.graph.input, names),
        "outputs": _io(model.graph.output, names),
    }
    if spec is not None:
        for side in ("inputs", "outputs"):
            expected = [
                {"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in getattr(spec, side)
            ]
            if io[side] != expected:
                problems.append(f"{side} {io[side]} differ from the manifest's {expected}")
    return {
        "file": path.name,
        "opset": opset,
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        **io,
        "problems": problems,
    }


def _io(values, names: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for value in values:
        tensor = value.type.tensor_type
        out.append(
            {
                "name": value.name,
                "shape": [
                    d.dim_value if d.HasField("dim_value") else d.dim_param
                    for d in tensor.shape.dim
                ],
                "dtype": names.get(tensor.elem_type, str(tensor.elem_type)),
            }
        )
    return out


def check_artifact(directory: str | Path) -> dict[str, Any]:
    """`check_graph` for every graph of an artifact (files verified against the manifest)."""
    from aimg.export.tensorrt_ops import source

    directory = Path(directory)
    manifest: Manifest = read_manifest(directory)
    graphs = {
        name: check_graph(directory / spec.file.file, spec)
        for name, spec in manifest.graphs.items()
    }
    problems = [f"{name}: {p}" for name, r in graphs.items() for p in r["problems"]]
    return {
        "artifact": str(directory),
        "op_list": source(),
        "graphs": graphs,
        "problems": problems,
        "passed": not problems,
    }

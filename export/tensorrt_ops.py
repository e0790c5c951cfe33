"""The ONNX operators TensorRT 10.3's ONNX parser imports (the oldest TensorRT we deploy to:
Jetson Orin), read from `data/tensorrt_10_3_onnx_ops.json`; `source()` says where it came from."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

DATA_FILE = "tensorrt_10_3_onnx_ops.json"


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    """The packaged op table (read once)."""
    text = resources.files("aimg.export").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def supported_ops() -> frozenset[str]:
    """Op types (default ONNX domain) the TensorRT 10.3 parser imports."""
    return frozenset(_data()["supported"])


def unsupported_ops() -> frozenset[str]:
    """Op types the operator matrix lists as not supported (others are simply not listed)."""
    return frozenset(_data()["unsupported"])


def op_restrictions() -> dict[str, str]:
    """Per supported op, the parser's restriction in a sentence (ops without one left out)."""
    return {
        name: entry["restriction"]
        for name, entry in _data()["supported"].items()
        if entry.get("restriction")
    }


def op_types(op: str) -> tuple[str, ...]:
    """Data types ('FP32', 'FP16', 'BF16', ...) TensorRT 10.3 accepts for a supported op."""
    return tuple(_data()["supported"][op]["types"])


def opset_range() -> tuple[int, int]:
    """The inclusive ONNX opset range the parser supports."""
    opset = _data()["opset"]
    return int(opset["min"]), int(opset["max"])


def source() -> str:
    """Where the table was read: repository, ref, commit, file, date, and notes."""
    src = _data()["source"]
    low, high = opset_range()
    return (
        f"TensorRT {src['tensorrt']} ONNX operators (opset {low}-{high}) from "
        f"{src['repository']} {src['ref']} ({src['commit'][:12]}) {src['file']}, read "
        f"{src['read']}. {src['note']}"
    )

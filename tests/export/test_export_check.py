"""`aimg export check` flags what TensorRT 10.3 cannot take, and passes the reference
architecture (reduced width and depth, real token layout) exported at opset 20."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from aimg.export.check import check_artifact, check_graph
from aimg.export.onnx_export import export_artifact
from aimg.model.build import build_model
from aimg.model.checkpoint import save_checkpoint
from aimg.model.config import SamplingConfig, load_preset


def _save(tmp_path, name: str, nodes, inputs, outputs, initializers=(), opset: int = 20):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _value(name: str, dtype=TensorProto.FLOAT, shape=(4,)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_a_scatternd_node_is_reported_with_its_cause(tmp_path):
    indices = helper.make_tensor("i", TensorProto.INT64, [1, 1], [0])
    updates = helper.make_tensor("u", TensorProto.FLOAT, [1], [1.0])
    node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"])
    path = _save(tmp_path, "scatter", [node], [_value("x")], [_value("y")], [indices, updates])
    problems = check_graph(path)["problems"]
    assert any("ScatterND" in p and "slice assignment" in p for p in problems)


def test_double_tensors_and_casts_are_reported(tmp_path):
    cast = helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE)
    back = helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)
    path = _save(tmp_path, "double", [cast, back], [_value("x")], [_value("y")])
    assert any("double" in p for p in check_graph(path)["problems"])


def test_an_op_outside_the_parser_and_a_foreign_domain_are_reported(tmp_path):
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], axis=-1)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], np.ones(4, np.float32))
    path = _save(
        tmp_path,
        "rms",
        [node],
        [_value("x", shape=(2, 4))],
        [_value("y", shape=(2, 4))],
        [weight],
        23,
    )
    problems = check_graph(path)["problems"]
    assert any("RMSNormalization" in p for p in problems)
    assert any("opset 23" in p for p in problems)
    custom = helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft")
    path = _save(tmp_path, "custom", [custom], [_value("x")], [_value("y")])
    assert any("non-standard domains" in p for p in check_graph(path)["problems"])


def test_a_clean_graph_passes(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    assert (
        check_graph(_save(tmp_path, "relu", [node], [_value("x")], [_value("y")]))["problems"] == []
    )


@pytest.mark.slow
def test_the_reference_architecture_at_reduced_size_exports_at_opset_20_and_passes(
    tmp_path, repo_root
):
    """official-5b's graph family (scalar timestep, velocity prediction, 48 latent channels,
    cam pool (48, 16, 16) on 96 camera channels, 2 views x 41 frames at 512x512 = 11,264
    tokens, CFG batch 2) with 2 blocks of width 256 instead of 30 of 3072."""
    cfg, _, _ = load_preset(repo_root / "configs" / "official-5b.yaml")
    small = cfg.transformer.__class__(
        **{
            **cfg.transformer.__dict__,
            "num_layers": 2,
            "num_heads": 2,
            "ffn_dim": 512,
            "text_dim": 64,
        }
    )
    text = cfg.text.__class__(kind="builtin", max_length=cfg.text.max_length)
    cfg = cfg.__class__(**{**cfg.__dict__, "transformer": small, "text": text})
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpoint = save_checkpoint(tmp_path / "official-reduced", model, cfg, SamplingConfig())
    artifact = tmp_path / "artifact"
    manifest = export_artifact(checkpoint, artifact, graphs=("denoiser",))
    denoiser = manifest.graphs["denoiser"]
    assert denoiser.inputs[0].shape == [2, 48, 44, 32, 32]  # CFG batch, 44 latent frames
    assert denoiser.inputs[1].shape == [2]  # one scalar timestep per sample (reference)
    assert cfg.num_tokens() == 11264
    report = check_artifact(artifact)
    assert report["passed"], report["problems"]
    ops = report["graphs"]["denoiser"]["ops"]
    assert ops["Softmax"] == 4 and "ScatterND" not in ops

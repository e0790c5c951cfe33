"""`aimg export onnx` / `check` / `verify` on the bundled sim-tiny model, on the CPU."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from artifact_fixtures import INSTRUCTIONS, SIM_TINY, export_sim_tiny
from safetensors.torch import load_file

from aimg.artifacts import GRAPH_NAMES, ArtifactError, read_manifest
from aimg.export.check import check_artifact
from aimg.export.onnx_export import ExportError, export_artifact, parse_profile
from aimg.export.verify import verify_artifact

pytestmark = pytest.mark.xdist_group("sim_tiny_export")


def test_the_artifact_holds_four_static_graphs_text_and_the_checkpoint_config(sim_tiny_artifact):
    manifest = read_manifest(sim_tiny_artifact)
    assert set(manifest.graphs) == set(GRAPH_NAMES)
    config = json.loads((SIM_TINY / "config.json").read_text())
    assert manifest.source.config == config
    assert manifest.sampling == config["sampling"]
    denoiser = manifest.graphs["denoiser"]
    assert [t.name for t in denoiser.inputs] == ["latents", "timestep", "text", "cameras"]
    # sim-tiny: 2 views x 2 modalities x 5 latent frames of 8x8, 192 channels, per-token t
    assert denoiser.inputs[0].shape == [1, 192, 20, 8, 8]
    assert denoiser.inputs[1].shape == [1, 20]
    assert denoiser.outputs[0].shape == [1, 192, 20, 8, 8]
    assert manifest.graphs["frame_encoder"].inputs[0].shape == [4, 3, 64, 64]
    assert manifest.graphs["video_encoder"].inputs[0].shape == [4, 3, 5, 64, 64]
    assert manifest.graphs["action_decoder"].outputs[0].shape == [2, 3, 5, 64, 64]
    for graph in manifest.graphs.values():
        model = onnx.load(str(sim_tiny_artifact / graph.file.file))
        dims = [d for v in model.graph.input for d in v.type.tensor_type.shape.dim]
        assert all(d.HasField("dim_value") for d in dims), "every input dimension is static"
    text = manifest.text_embeddings
    assert text.instructions == ["", *INSTRUCTIONS]
    table = load_file(str(sim_tiny_artifact / text.file.file))["embeddings"]
    assert list(table.shape) == [3, 16, 64] and float(table[0].abs().max()) == 0.0


def test_sim_tiny_passes_the_tensorrt_10_3_checks(sim_tiny_artifact):
    report = check_artifact(sim_tiny_artifact)
    assert report["passed"], report["problems"]
    ops = report["graphs"]["denoiser"]["ops"]
    assert "ScatterND" not in ops and "RMSNormalization" not in ops and "Attention" not in ops
    assert ops["Softmax"] == 8  # 4 blocks x (self + cross attention), decomposed


def test_fp32_graphs_and_the_whole_plan_match_torch(sim_tiny_artifact):
    report = verify_artifact(sim_tiny_artifact, seed=3, threads=1)
    assert report["passed"], report["failures"]
    assert report["graphs"]["denoiser"]["max_rel"] <= 1e-4
    assert report["graphs"]["frame_encoder"]["max_abs"] == 0.0  # a pure reshape
    assert report["plan"]["latents"]["max_rel"] <= 1e-4
    assert report["plan"]["model_calls"] == 20


def test_fp16_graphs_verify_within_half_precision(tmp_path):
    artifact = export_sim_tiny(tmp_path / "fp16", "precision=fp16")
    assert read_manifest(artifact).graphs["denoiser"].inputs[0].dtype == "float16"
    report = verify_artifact(artifact, seed=3, threads=1)
    assert report["passed"], report["failures"]
    assert 1e-5 < report["graphs"]["denoiser"]["max_rel"] < 2e-2  # really half precision
    assert check_artifact(artifact)["passed"]


def test_opset_23_emits_native_nodes_that_tensorrt_10_3_cannot_parse(tmp_path):
    artifact = export_sim_tiny(tmp_path / "opset23", opset=23)
    report = check_artifact(artifact)
    ops = report["graphs"]["denoiser"]["ops"]
    assert ops["RMSNormalization"] == 16 and ops["Attention"] == 8
    assert not report["passed"]
    assert any("opset 23" in p for p in report["problems"])
    assert any("RMSNormalization" in p for p in report["problems"])


def test_a_tampered_artifact_fails_at_load_and_at_verify(sim_tiny_artifact, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(sim_tiny_artifact, copy)
    with open(copy / "action_decoder.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match manifest.json"):
        check_artifact(copy)
    with pytest.raises(ArtifactError, match="re-export"):
        verify_artifact(copy)


def test_profiles_default_to_the_checkpoint_and_refuse_what_cannot_export():
    config = json.loads((SIM_TINY / "config.json").read_text())
    profile = parse_profile(None, config)
    assert (profile.views, profile.frames, profile.height, profile.width) == (2, 5, 64, 64)
    assert (profile.precision, profile.batch) == ("fp32", 1)
    assert parse_profile("precision=fp16,batch=2", config).batch == 2
    with pytest.raises(ExportError, match="fp8 is a TensorRT build precision"):
        parse_profile("precision=fp8", config)
    with pytest.raises(ExportError, match="key one of"):
        parse_profile("resolution=64", config)
    guided = {**config, "sampling": {**config["sampling"], "cfg_scale": 3.0}}
    assert parse_profile(None, guided).batch == 2


def test_graphs_over_the_protobuf_limit_keep_their_weights_beside_them(tmp_path, monkeypatch):
    import onnxruntime as ort

    import aimg.export.graphs as graphs

    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 0)  # treat sim-tiny as a 2 GB model
    artifact = tmp_path / "external"
    export_artifact(SIM_TINY, artifact, graphs=("denoiser",))
    denoiser = read_manifest(artifact).graphs["denoiser"]
    assert [f.file for f in denoiser.external_data] == ["denoiser.onnx.data"]
    assert (artifact / "denoiser.onnx").stat().st_size < denoiser.external_data[0].size
    session = ort.InferenceSession(str(artifact / "denoiser.onnx"))
    assert [i.name for i in session.get_inputs()] == ["latents", "timestep", "text", "cameras"]
    with open(artifact / "denoiser.onnx.data", "r+b") as handle:
        handle.write(b"\1\2\3\4")
    with pytest.raises(ArtifactError, match="weights"):
        read_manifest(artifact)

"""Artifact manifests: round trip, and clear failures for altered, foreign or stale files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aimg.artifacts import (
    ArtifactError,
    EngineSpec,
    GraphSpec,
    Manifest,
    Profile,
    SourceSpec,
    TensorSpec,
    check_engine,
    check_source,
    checkpoint_fingerprint,
    engine_file_name,
    file_spec,
    read_manifest,
    write_manifest,
)


def _checkpoint(directory, weights: bytes = b"weights", steps: int = 20):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(weights)
    config = {"model": {"views": 2, "frames": 5, "height": 64, "width": 64}}
    config["sampling"] = {"num_steps": steps, "cfg_scale": 1.0}
    config["extra"] = {"step": 100}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture()
def artifact(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "denoiser.onnx").write_bytes(b"graph bytes")
    graph = GraphSpec(
        file=file_spec(out, "denoiser.onnx"),
        inputs=[TensorSpec("latents", [1, 192, 20, 8, 8], "float32")],
        outputs=[TensorSpec("velocity", [1, 192, 20, 8, 8], "float32")],
        precision="fp32",
        opset=20,
    )
    manifest = Manifest(
        source=SourceSpec(
            str(ckpt), checkpoint_fingerprint(ckpt), json.loads((ckpt / "config.json").read_text())
        ),
        profile=Profile(2, 5, 64, 64),
        opset=20,
        graphs={"denoiser": graph},
        exporter={"aimg": "test"},
    )
    write_manifest(out, manifest)
    return out, ckpt, manifest


def test_manifest_round_trips(artifact):
    out, _, manifest = artifact
    assert read_manifest(out) == manifest


def test_a_file_changed_after_export_fails_with_the_rebuild_command(artifact):
    out, ckpt, _ = artifact
    (out / "denoiser.onnx").write_bytes(b"graph bytez")
    with pytest.raises(ArtifactError, match=r"does not match manifest.json.*aimg export onnx"):
        read_manifest(out)


def test_a_missing_file_is_named(artifact):
    out, _, _ = artifact
    (out / "denoiser.onnx").unlink()
    with pytest.raises(ArtifactError, match="denoiser.onnx is missing"):
        read_manifest(out)


def test_an_artifact_from_another_checkpoint_is_refused(artifact, tmp_path):
    out, ckpt, manifest = artifact
    check_source(manifest, ckpt, out)
    other = _checkpoint(tmp_path / "other", weights=b"other weights")
    with pytest.raises(ArtifactError, match="was exported from"):
        check_source(manifest, other, out)


def test_the_fingerprint_follows_weights_and_sampling_not_training_notes(tmp_path):
    base = checkpoint_fingerprint(_checkpoint(tmp_path / "a"))
    notes = _checkpoint(tmp_path / "b")
    config = json.loads((notes / "config.json").read_text())
    config["extra"] = {"step": 999}
    (notes / "config.json").write_text(json.dumps(config))
    assert checkpoint_fingerprint(notes) == base
    assert checkpoint_fingerprint(_checkpoint(tmp_path / "c", steps=16)) != base


def test_an_engine_for_another_gpu_or_tensorrt_fails_with_how_to_rebuild(artifact):
    out, _, manifest = artifact
    name = engine_file_name("denoiser", "fp16", (8, 7), "10.3.0")
    assert name == "denoiser.fp16.sm87.trt10.3.0.engine"
    (out / name).write_bytes(b"engine")
    engine = EngineSpec(
        file=file_spec(out, name),
        graph="denoiser",
        onnx_sha256=manifest.graphs["denoiser"].file.sha256,
        precision="fp16",
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability=[8, 7],
    )
    write_manifest(out, dataclasses.replace(manifest, engines={"denoiser": engine}))
    engine = read_manifest(out).engines["denoiser"]
    check_engine(engine, "10.3.0", "Orin", (8, 7), out)
    with pytest.raises(ArtifactError, match=r"sm90.*aimg export engine .* --precision fp16"):
        check_engine(engine, "10.3.0", "NVIDIA H200", (9, 0), out)
    with pytest.raises(ArtifactError, match="TensorRT 10.7"):
        check_engine(engine, "10.7.0", "Orin", (8, 7), out)


def test_not_an_artifact_and_newer_formats_are_explained(artifact, tmp_path):
    with pytest.raises(ArtifactError, match="aimg export onnx"):
        read_manifest(tmp_path / "nothing")
    out, _, _ = artifact
    raw = json.loads((out / "manifest.json").read_text())
    raw["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="update aimg"):
        read_manifest(out)
    (out / "manifest.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(out)


def test_profiles_validate_and_name_themselves():
    assert Profile(2, 41, 512, 512, "fp16", 2).tag == "v2-f41-512x512-b2-fp16"
    with pytest.raises(ValueError, match="precision"):
        Profile(2, 5, 64, 64, "int4")

"""Every backend plans the same thing from the same observation, seed and step grid."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from artifact_fixtures import SIM_TINY

from aimg.artifacts import ArtifactError, read_manifest, write_manifest
from aimg.model.build import build_latent_codec
from aimg.model.camera_latents import encode_cameras
from aimg.model.config import TextConfig
from aimg.model.packing import pack_camera_latents
from aimg.observation import synthetic_observation
from aimg.runtime.backends import BackendError, load
from aimg.runtime.backends.text import ArtifactText

pytestmark = pytest.mark.xdist_group("sim_tiny_export")


@pytest.fixture(scope="module")
def torch_backend():
    return load(SIM_TINY, "torch", threads=1)


def test_onnxruntime_plans_what_torch_plans(sim_tiny_artifact, torch_backend):
    compiled = load(sim_tiny_artifact, threads=1)
    assert compiled.name == "onnxruntime"
    obs = synthetic_observation(compiled.spec, seed=1)
    ours = compiled.plan(obs, "reach the red cube", seed=5)
    theirs = torch_backend.plan(obs, "reach the red cube", seed=5)
    assert ours.model_calls == theirs.model_calls == 20
    torch.testing.assert_close(ours.latents, theirs.latents, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(ours.action_images, theirs.action_images, atol=1e-4)
    assert ours.action_images.shape == (5, 2, 64, 64, 3)
    assert len(ours.timings["steps"]) == 20 and ours.timings["total"] > 0


def test_another_seed_gives_another_plan(torch_backend):
    obs = synthetic_observation(torch_backend.spec)
    a = torch_backend.plan(obs, "reach the red cube", seed=1).latents
    b = torch_backend.plan(obs, "reach the red cube", seed=2).latents
    assert (a - b).abs().max() > 1e-2


def test_backend_camera_latents_equal_the_training_encoding(torch_backend, sim_tiny_artifact):
    obs = synthetic_observation(torch_backend.spec)
    cfg = torch_backend.model_config
    expected = encode_cameras(obs.cameras, build_latent_codec(cfg), cfg.frames, 64, 64)
    expected = pack_camera_latents(expected[None], True)
    torch.testing.assert_close(torch_backend.camera_latents(obs.cameras), expected)
    compiled = load(sim_tiny_artifact, "onnxruntime", threads=1)
    torch.testing.assert_close(compiled.camera_latents(obs.cameras), expected)


def test_guidance_batched_in_one_call_equals_two_calls(torch_backend):
    obs = synthetic_observation(torch_backend.spec)
    guided = dataclasses.replace(torch_backend.sampling, cfg_scale=2.0, num_steps=4)
    clean, mask = torch_backend.conditioning(obs)
    text = torch_backend.text_embeddings("reach the red cube")
    cams = torch_backend.camera_latents(obs.cameras)
    two_calls = torch_backend.sample(clean, mask, text, cams, seed=0, sampling=guided)
    torch_backend.denoiser_batch = 2
    try:
        batched = torch_backend.sample(clean, mask, text, cams, seed=0, sampling=guided)
    finally:
        torch_backend.denoiser_batch = 1
    assert two_calls.model_calls == batched.model_calls == 8
    torch.testing.assert_close(batched.latents, two_calls.latents, atol=1e-4, rtol=1e-4)


def test_auto_picks_torch_for_checkpoints_and_refuses_compiled_backends_on_them():
    assert load(SIM_TINY, threads=1).name == "torch"
    with pytest.raises(ArtifactError, match="export it first"):
        load(SIM_TINY, "onnxruntime")


def test_an_artifact_from_another_checkpoint_is_refused(sim_tiny_artifact, tmp_path):
    other = tmp_path / "other-ckpt"
    shutil.copytree(SIM_TINY, other)
    config = json.loads((other / "config.json").read_text())
    config["sampling"]["num_steps"] = 8  # another step grid: another model
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="was exported from"):
        load(sim_tiny_artifact, "onnxruntime", checkpoint=other)


def test_onnxruntime_cpu_refuses_bf16_graphs_with_what_to_do(sim_tiny_artifact, tmp_path):
    copy = tmp_path / "bf16"
    shutil.copytree(sim_tiny_artifact, copy)
    manifest = read_manifest(copy)
    profile = dataclasses.replace(manifest.profile, precision="bf16")
    write_manifest(copy, dataclasses.replace(manifest, profile=profile))
    with pytest.raises(BackendError, match="cannot run bf16"):
        load(copy, "onnxruntime")


def test_unknown_instructions_need_a_re_export_unless_the_encoder_is_built_in(sim_tiny_artifact):
    manifest = read_manifest(sim_tiny_artifact)
    cfg = load(sim_tiny_artifact, threads=1).model_config
    builtin = ArtifactText(sim_tiny_artifact, manifest, cfg)
    assert builtin(["stack the cubes"]).shape == (1, 16, 64)
    stored = builtin(["reach the red cube"])
    umt5 = dataclasses.replace(cfg, text=TextConfig(kind="umt5", max_length=16, path="x"))
    table_only = ArtifactText(sim_tiny_artifact, manifest, umt5)
    torch.testing.assert_close(table_only(["reach the red cube"]), stored)
    with pytest.raises(BackendError, match="--instructions"):
        table_only(["stack the cubes"])


def test_a_plan_inpainted_on_a_prefix_starts_with_that_prefix(torch_backend):
    from aimg.codec.decode import decode

    obs = synthetic_observation(torch_backend.spec)
    prefix = np.array([[0.40, 0.05, 0.15, np.pi, 0.0, 0.3, 1.0]])
    plan = torch_backend.plan(obs, "reach the red cube", seed=0, prefix=prefix)
    decoded = decode(plan.action_images, obs.cameras, sigma_fraction=torch_backend.spec.blob_sigma)
    np.testing.assert_allclose(decoded.actions[1, :3], prefix[0, :3], atol=2e-3)
    assert "prefix" in plan.timings


def test_a_plan_runs_with_the_backends_thread_budget_in_any_thread(torch_backend):
    """torch's thread count is per OS thread: the scheduler plans in its own thread, where a
    count set at load time does not hold unless the backend applies it there."""
    seen: list[int] = []
    denoise = torch_backend.denoise

    def counting_denoise(*args):
        seen.append(torch.get_num_threads())
        return denoise(*args)

    def plan_in_a_thread_with_another_budget() -> None:
        torch.set_num_threads(2)
        torch_backend.plan(synthetic_observation(torch_backend.spec), "reach the red cube", seed=3)

    torch_backend.denoise = counting_denoise
    try:
        worker = threading.Thread(target=plan_in_a_thread_with_another_budget)
        worker.start()
        worker.join(timeout=300)
    finally:
        del torch_backend.denoise
    assert seen and set(seen) == {1}

"""`aimg export verify`: onnxruntime (CPU) against torch, per graph and for a whole plan.

Per graph: the same seeded inputs through the exported graph and through the torch module in
float32; max absolute error, max relative error (max |a - b| / max |b|) and cosine similarity.
Whole plan: the torch backend on the source checkpoint and the onnxruntime backend on the
artifact plan from the same observation, instruction and noise on the checkpoint's step grid;
the sampled latents, the action images and the decoded actions (position mm, rotation deg,
gripper) are compared. The observation is frame 0 of a recorded episode (`--episode`) or, by
default, a synthetic one (two cameras on the workspace, a flat scene, a tool pose), which tests
the numbers but not a meaningful plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimg.artifacts import Manifest, check_source, read_manifest
from aimg.geometry import euler_xyz_to_matrix, rotation_angle_between
from aimg.observation import episode_observation, synthetic_observation

# Pass marks of the report. fp32 graphs must match torch to float32 rounding; fp16 graphs
# carry 10-bit mantissas through every layer, so only a looser bound is meaningful.
TOLERANCES = {
    "fp32": {"graph_max_rel": 1e-4, "plan_position_mm": 1.0, "plan_rotation_deg": 0.5},
    "fp16": {"graph_max_rel": 2e-2, "plan_position_mm": 10.0, "plan_rotation_deg": 5.0},
}


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Max absolute, max relative (to the largest reference magnitude) error and cosine."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    b = np.asarray(expected, dtype=np.float64).ravel()
    diff = np.abs(a - b)
    scale = float(np.abs(b).max()) or 1.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "mean_abs": float(diff.mean()),
        "cosine": float(a @ b / norm) if norm else 1.0,
    }


def graph_parity(
    artifact: Path, manifest: Manifest, checkpoint: Path, threads: int | None = None
) -> dict[str, Any]:
    """Each graph against its torch module (fp32) on the same seeded inputs."""
    import onnxruntime as ort

    from aimg.config import from_dict
    from aimg.export.codec_graphs import codec_modules
    from aimg.export.graphs import denoiser_inputs
    from aimg.model.build import build_latent_codec
    from aimg.model.checkpoint import load_checkpoint
    from aimg.model.config import ModelConfig

    cfg = from_dict(ModelConfig, manifest.effective_config()["model"], "model")
    model = load_checkpoint(checkpoint).model.eval()
    modules = codec_modules(build_latent_codec(cfg), cfg.frames, cfg.latent_frames)
    generator = torch.Generator().manual_seed(1234)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    numpy_dtypes = {"float32": np.float32, "float16": np.float16}
    report: dict[str, Any] = {}
    for name, graph in manifest.graphs.items():
        if name == "denoiser":
            inputs = denoiser_inputs(cfg, manifest.profile, torch.float32, seed=1234)
            torch_module = model
        else:
            shape = graph.inputs[0].shape
            inputs = (torch.rand(shape, generator=generator) * 2 - 1,)
            torch_module = modules[name]
        # Both sides see the graph's input precision (fp16 graphs get fp16-rounded inputs).
        feeds = {
            spec.name: x.numpy().astype(numpy_dtypes[spec.dtype])
            for spec, x in zip(graph.inputs, inputs, strict=True)
        }
        rounded = [torch.from_numpy(v.astype(np.float32)) for v in feeds.values()]
        with torch.no_grad():
            expected = torch_module(*rounded).float().numpy()
        session = ort.InferenceSession(
            str(artifact / graph.file.file), options, providers=["CPUExecutionProvider"]
        )
        (actual,) = session.run(None, feeds)
        report[name] = compare(actual, expected)
    return report


def plan_parity(
    artifact: Path,
    manifest: Manifest,
    checkpoint: Path,
    episode: Path | None = None,
    instruction: str | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """A whole plan from the same noise through torch (fp32) and onnxruntime (CPU)."""
    from aimg.codec.decode import decode
    from aimg.runtime.backends import load

    reference = load(checkpoint, "torch", threads=threads)
    compiled = load(artifact, "onnxruntime", threads=threads)
    if episode is not None:
        from aimg.episodes import read_episode

        recorded = read_episode(episode)
        obs, _ = episode_observation(recorded, compiled.spec)
        instruction = instruction or str(recorded.instruction)
    else:
        obs = synthetic_observation(compiled.spec, seed)
        instruction = instruction or "reach the red cube"
    ours = compiled.plan(obs, instruction, seed=seed)
    theirs = reference.plan(obs, instruction, seed=seed)
    report: dict[str, Any] = {
        "observation": str(episode) if episode is not None else "synthetic",
        "instruction": instruction,
        "seed": seed,
        "steps": compiled.sampling.num_steps,
        "model_calls": ours.model_calls,
        "latents": compare(ours.latents.numpy(), theirs.latents.numpy()),
        "action_images": compare(ours.action_images, theirs.action_images),
    }
    sigma = compiled.spec.blob_sigma
    a = decode(ours.action_images, obs.cameras, sigma_fraction=sigma).actions
    b = decode(theirs.action_images, obs.cameras, sigma_fraction=sigma).actions
    both = np.isfinite(a[:, :3]).all(1) & np.isfinite(b[:, :3]).all(1)
    report["decoded_frames"] = {"both": int(both.sum()), "of": len(a)}
    if both.any():
        position = np.linalg.norm(a[both, :3] - b[both, :3], axis=1) * 1000.0
        rotation = np.degrees(
            rotation_angle_between(
                euler_xyz_to_matrix(a[both, 3:6]), euler_xyz_to_matrix(b[both, 3:6])
            )
        )
        report["decoded_actions"] = {
            "position_max_mm": float(position.max()),
            "rotation_max_deg": float(rotation.max()),
            "gripper_agreement": float(np.mean(a[both, 6] == b[both, 6])),
        }
    return report


def verify_artifact(
    artifact: str | Path,
    checkpoint: str | Path | None = None,
    episode: str | Path | None = None,
    instruction: str | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """The full parity report with pass/fail against `TOLERANCES` of the artifact's precision."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    checkpoint = Path(checkpoint or manifest.source.checkpoint)
    check_source(manifest, checkpoint, artifact)
    precision = manifest.profile.precision
    tolerance = TOLERANCES.get(precision, TOLERANCES["fp16"])
    graphs = graph_parity(artifact, manifest, checkpoint, threads)
    plan = plan_parity(
        artifact,
        manifest,
        checkpoint,
        Path(episode) if episode else None,
        instruction,
        seed,
        threads,
    )
    failures = [
        f"{name}: max_rel {r['max_rel']:.2e} > {tolerance['graph_max_rel']:.0e}"
        for name, r in graphs.items()
        if r["max_rel"] > tolerance["graph_max_rel"]
    ]
    decoded = plan.get("decoded_actions")
    if decoded is not None:
        if decoded["position_max_mm"] > tolerance["plan_position_mm"]:
            failures.append(
                f"plan: decoded positions differ by {decoded['position_max_mm']:.3f} mm "
                f"> {tolerance['plan_position_mm']} mm"
            )
        if decoded["rotation_max_deg"] > tolerance["plan_rotation_deg"]:
            failures.append(
                f"plan: decoded rotations differ by {decoded['rotation_max_deg']:.3f} deg "
                f"> {tolerance['plan_rotation_deg']} deg"
            )
    return {
        "artifact": str(artifact),
        "checkpoint": str(checkpoint),
        "precision": precision,
        "tolerances": tolerance,
        "graphs": graphs,
        "plan": plan,
        "failures": failures,
        "passed": not failures,
    }

"""Open-loop evaluation of a trained checkpoint on held-out episode start states.

For each episode: frame 0 of two views and the current-pose action image (clean conditioning,
the i2va task) -> sampled action segments -> `aimg.codec.decode` -> the decoded trajectory.
Scores: the distance of the final decoded position to the expert's final tool position (for
`reach`, the hover point above the target cube; `success_rate` counts these within the
threshold), the horizontal distance to the target cube (`cube_xy_success_rate`)
from the episode metadata (sim episodes: the `metadata.scene.objects` entry of the target
colour), which cube the plan ended nearest to, and the mean position
error over the segment. Contact sheets show predicted vs ground-truth action images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimg.config import from_dict
from aimg.model.schedule import NUM_TRAIN_TIMESTEPS
from aimg.training import checkpointing as ckpt
from aimg.training.config import DataConfig, TrainConfig


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message says what to do."""


def resolve_checkpoint(path: Path) -> Path:
    """A step directory as given, or a run directory's latest checkpoint."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for checkpoints in (path / "checkpoints", path):
        latest = ckpt.latest_checkpoint(checkpoints) if checkpoints.is_dir() else None
        if latest is not None:
            return latest
    raise EvaluationError(
        f"{path} is neither a checkpoint directory (config.json + model.safetensors) nor a run "
        "directory with checkpoints: train first with `aimg train --config ...`"
    )


def cube_positions(metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """Cube centres [3] (m, base frame) by colour from sim episode metadata ({} if none)."""
    scene = metadata.get("scene")
    if not isinstance(scene, dict):
        return {}
    final = metadata.get("final_object_positions") or {}
    cubes = {}
    for obj in scene.get("objects") or []:
        colour = obj.get("colour")
        position = final.get(colour, obj.get("position"))
        if colour is not None and position is not None:
            cubes[str(colour)] = np.asarray(position, dtype=np.float64)
    return cubes


def target_cube_position(metadata: dict[str, Any]) -> np.ndarray | None:
    """The target cube's centre [3] (m, base frame) from sim episode metadata, if recorded."""
    scene = metadata.get("scene")
    target = scene.get("target") if isinstance(scene, dict) else None
    return cube_positions(metadata).get(target) if target is not None else None


def last_valid(positions: np.ndarray) -> np.ndarray | None:
    """The last row of [T, 3] without NaN, or None."""
    ok = np.isfinite(positions).all(axis=1)
    return positions[np.flatnonzero(ok)[-1]] if ok.any() else None


def contact_sheet(predicted: np.ndarray, truth: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """uint8 image: per view a row of ground-truth action images, then a row of predicted ones.

    predicted, truth: [T, V, H, W, 3] in [0, 1]; rgb: [V, H, W, 3] in [0, 1] (frame 0, shown
    at the start of each row).
    """
    num_frames, num_views, h, w, _ = truth.shape
    gap = 2
    sheet = np.ones(((2 * h + gap) * num_views, (num_frames + 1) * (w + gap), 3))
    for v in range(num_views):
        for r, images in enumerate((truth, predicted)):
            y = (2 * v + r) * h + v * gap
            sheet[y : y + h, :w] = rgb[v]
            for t in range(num_frames):
                x = (t + 1) * (w + gap)
                sheet[y : y + h, x : x + w] = images[t, v]
    return (np.clip(sheet, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclasses.dataclass
class _Evaluation:
    """A checkpoint opened for evaluation on start states of held-out episodes."""

    step_dir: Path
    device: torch.device
    loaded: Any  # aimg.model.checkpoint.Checkpoint
    paths: list[Path]
    dataset: Any  # EpisodeClipDataset over start states (frame 0, real instruction)
    codec: Any
    text: Any
    objective: Any  # WorldActionObjective: the training view of a batch


def evaluation_setup(
    step_dir: Path, extra: dict[str, Any], dev: torch.device, data: list[Path], num_episodes: int
) -> tuple[DataConfig, TrainConfig, list[Path]]:
    """The checkpoint's data and train sections (CPU threads set from the latter) and the first
    `num_episodes` episodes under `data`."""
    from aimg.training.dataset import DatasetError, find_episodes
    from aimg.training.distributed import set_cpu_threads

    dcfg = from_dict(DataConfig, extra.get("data", {}), f"{step_dir}/config.json: extra.data")
    tcfg = from_dict(TrainConfig, extra.get("train", {}), f"{step_dir}/config.json: extra.train")
    if dev.type == "cpu":
        set_cpu_threads(tcfg.cpu_threads)
    try:
        return dcfg, tcfg, find_episodes(data)[:num_episodes]
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc


def _open_evaluation(
    checkpoint: Path, data: list[Path], num_episodes: int, device: str
) -> _Evaluation:
    """Load the checkpoint, its data/train sections and the first `num_episodes` start states."""
    from aimg.model.build import build_latent_codec, build_text_encoder
    from aimg.model.checkpoint import load_checkpoint
    from aimg.training.dataset import EpisodeClipDataset
    from aimg.training.distributed import resolve_device
    from aimg.training.objective import WorldActionObjective

    step_dir = resolve_checkpoint(checkpoint)
    dev = resolve_device(device)
    loaded = load_checkpoint(step_dir, device=dev)
    mcfg = loaded.model_config
    dcfg, tcfg, paths = evaluation_setup(step_dir, loaded.extra, dev, data, num_episodes)
    # Start states: frame 0, a fixed view pair, the real instruction.
    dcfg = dataclasses.replace(dcfg, start_at_zero=1.0, text_dropout=0.0, max_start_fraction=0.0)
    dataset = EpisodeClipDataset(paths, dcfg, mcfg.frames, mcfg.height, mcfg.width, mcfg.blob_sigma)
    codec = build_latent_codec(mcfg).to(dev)
    text = build_text_encoder(mcfg)
    objective = WorldActionObjective(mcfg, dcfg, tcfg, codec, text, dev)
    return _Evaluation(step_dir, dev, loaded, paths, dataset, codec, text, objective)


def evaluate_checkpoint(
    checkpoint: Path,
    data: list[Path],
    num_episodes: int = 50,
    out_dir: Path | None = None,
    threshold: float = 0.03,
    device: str = "auto",
    contact_sheets: int = 8,
    seed: int = 0,
    num_steps: int | None = None,
    cfg_scale: float | None = None,
    samples: int = 1,
    progress: str | None = "eval",
) -> dict[str, Any]:
    """Evaluate `checkpoint` on the first `num_episodes` episodes under `data`.

    Each start state goes through the runtime's path: `aimg.observation.prepare_observation`
    (frame 0 of the first model-many views, their calibration, the recorded tool pose) and the
    torch backend's `plan` (`aimg.runtime.backends`), so what is scored is what the robot would
    run. `num_steps` and `cfg_scale` replace the checkpoint's sampling settings when given.
    `samples` > 1 draws that many plans per start state (different noise seeds) and scores the
    consensus draw (`consensus_draw`), as a planner that samples a batch of plans would.
    Returns {"summary": {...}, "episodes": [...]} and writes `report.json` plus
    `sheet_XXX.png` contact sheets into `out_dir` (default `<run>/eval/<step>`, outside the
    checkpoint directory, which training may prune). Plans are drawn one start state at a
    time, as the robot draws them. `progress`: the label of a tqdm bar on stderr (None: none).
    """
    from PIL import Image
    from tqdm import tqdm

    from aimg.codec.decode import decode
    from aimg.codec.render import render
    from aimg.episodes import read_episode
    from aimg.observation import episode_observation
    from aimg.runtime.backends.torch_backend import TorchBackend
    from aimg.training.distributed import resolve_device

    step_dir = resolve_checkpoint(checkpoint)
    dev = resolve_device(device)
    backend = TorchBackend(step_dir, device=dev)
    mcfg, spec = backend.model_config, backend.spec
    dcfg, _, paths = evaluation_setup(
        step_dir, backend.config.get("extra", {}), dev, data, num_episodes
    )
    own = backend.sampling
    if num_steps is not None and own.sigmas is not None and num_steps != own.num_steps:
        raise EvaluationError(
            f"{step_dir} samples on its own {own.num_steps}-step grid (a distilled student or "
            "an explicit `sampling.sigmas`); --steps does not apply to it"
        )
    changes = {"num_steps": num_steps, "cfg_scale": cfg_scale}
    sampling = dataclasses.replace(
        backend.sampling, **{k: v for k, v in changes.items() if v is not None}
    )
    if out_dir is None:
        in_run = step_dir.parent.name == "checkpoints"
        out_dir = step_dir.parent.parent / "eval" / step_dir.name if in_run else step_dir / "eval"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    bar = tqdm(paths, desc=progress, unit="start", disable=progress is None)
    for index, path in enumerate(bar):
        episode = read_episode(path)
        obs, views = episode_observation(episode, spec, dcfg.views)
        if not all(episode.camera_is_static(v) for v in views):
            raise EvaluationError(
                f"{path} has a moving camera; open-loop evaluation decodes with static cameras "
                "only (choose static views with data.views)"
            )
        poses = np.asarray(episode.poses, dtype=np.float64)
        draws = [
            backend.plan(obs, episode.instruction, seed + index + _DRAW_SEED_STRIDE * r, sampling)
            for r in range(samples)
        ]
        decoded = [
            decode(d.action_images, obs.cameras, sigma_fraction=spec.blob_sigma) for d in draws
        ]
        chosen = consensus_draw([d.actions for d in decoded])
        clip = np.minimum(dcfg.stride * np.arange(mcfg.frames), len(poses) - 1)
        gt = poses[clip]
        result = score_episode(decoded[chosen].actions, gt, episode.metadata, threshold)
        result.update(
            episode=str(path),
            views="|".join(views),
            confidence_mean=float(np.mean(decoded[chosen].confidence)),
            draw=chosen,
        )
        if index < contact_sheets:
            truth = render(gt, obs.cameras, mcfg.height, mcfg.width, spec.blob_sigma)
            rgb0 = ((obs.frames + 1) / 2).permute(0, 2, 3, 1).numpy()
            sheet = contact_sheet(draws[chosen].action_images, truth, rgb0)
            name = f"sheet_{index:03d}.png"
            Image.fromarray(sheet).save(out_dir / name)
            result["sheet"] = name
        results.append(result)
        bar.set_postfix_str(f"success {sum(r['success'] for r in results)}/{len(results)}")
    bar.close()
    summary = summarise(results, threshold)
    summary.update(
        checkpoint=str(step_dir),
        out_dir=str(out_dir),
        steps=sampling.num_steps,
        cfg_scale=sampling.cfg_scale,
        samples=samples,
    )
    report = {"summary": summary, "episodes": results}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


_DRAW_SEED_STRIDE = 100_003  # seeds of draw r: seed + batch start + r * stride (no overlap)


def consensus_draw(actions: list[np.ndarray]) -> int:
    """Index of the medoid draw: the decoded plan [T, 7] whose final position has the least
    summed distance to the other draws' final positions. Draws that did not decode lose; a
    single draw is returned as is. The medoid is a real sample (a consistent trajectory with
    valid rotations), unlike a per-axis median, and ignores outlying draws."""
    finals = [last_valid(a[:, :3]) for a in actions]
    valid = [i for i, f in enumerate(finals) if f is not None]
    if len(valid) <= 1:
        return valid[0] if valid else 0
    points = np.stack([finals[i] for i in valid])
    spread = np.linalg.norm(points[:, None] - points[None], axis=-1).sum(axis=1)
    return valid[int(np.argmin(spread))]


def score_episode(
    decoded: np.ndarray, truth: np.ndarray, metadata: dict[str, Any], threshold: float
) -> dict[str, Any]:
    """Errors of decoded actions [T, 7] against the expert's poses [T, 7] (metres)."""
    final = last_valid(decoded[:, :3])
    gt_final = truth[-1, :3]
    result: dict[str, Any] = {"decoded_frames": int(np.isfinite(decoded[:, :3]).all(1).sum())}
    if final is None:
        result.update(final_error_m=None, success=False)
        return result
    error = float(np.linalg.norm(final - gt_final))
    per_frame = np.linalg.norm(decoded[:, :3] - truth[:, :3], axis=1)
    result.update(
        final_position=final.tolist(),
        expert_final_position=gt_final.tolist(),
        final_error_m=error,
        mean_error_m=float(np.nanmean(per_frame)),
        success=bool(error < threshold),
    )
    cube = target_cube_position(metadata)
    if cube is not None:
        result["cube_xy_error_m"] = float(np.linalg.norm(final[:2] - cube[:2]))
        # which cube the plan went to tells a grounding error (another cube) from a
        # localisation one (no cube at all)
        cubes = cube_positions(metadata)
        xy = {colour: float(np.linalg.norm(final[:2] - p[:2])) for colour, p in cubes.items()}
        nearest = min(xy, key=xy.__getitem__)
        result.update(
            nearest_cube=nearest,
            nearest_cube_is_target=nearest == metadata["scene"]["target"],
            nearest_cube_xy_m=xy[nearest],
        )
    return result


def summarise(results: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Success rate within `threshold` and error statistics over episodes."""
    errors = [r["final_error_m"] for r in results if r.get("final_error_m") is not None]
    cube = [r["cube_xy_error_m"] for r in results if "cube_xy_error_m" in r]
    nearest = [r["nearest_cube_xy_m"] for r in results if "nearest_cube_xy_m" in r]
    return {
        "episodes": len(results),
        "threshold_m": threshold,
        "success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        # the looser reading "above the right cube": horizontal distance to its centre
        # (an episode that did not decode counts as a miss)
        "cube_xy_success_rate": sum(c < threshold for c in cube) / len(results) if cube else None,
        "decode_failures": len(results) - len(errors),
        "final_error_median_m": float(np.median(errors)) if errors else None,
        "final_error_mean_m": float(np.mean(errors)) if errors else None,
        "cube_xy_error_median_m": float(np.median(cube)) if cube else None,
        # the share of plans ending nearer the named cube than any other, and how far from
        # whichever cube is nearest: low share + small distance = the wrong cube
        "nearest_cube_is_target_rate": (
            sum(bool(r.get("nearest_cube_is_target")) for r in results) / len(results)
            if nearest
            else None
        ),
        "nearest_cube_xy_median_m": float(np.median(nearest)) if nearest else None,
    }


def denoising_report(
    checkpoint: Path,
    data: list[Path],
    num_episodes: int = 16,
    sigmas: tuple[float, ...] = (1.0, 0.9, 0.6, 0.3),
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Teacher-forced check of what the model knows at each noise level.

    Noises the true clips of `num_episodes` start states at each σ, asks the model for x̂0 and
    reports the clean-sample MSE of the generated frames per modality, next to the MSE of a
    flat image (each frame's mean colour). At σ = 1 the input holds no trace of the answer, so
    an error near the flat one means the model has not learnt where the conditioning (scene,
    current pose, instruction) puts things, whatever its training loss says.
    """
    from aimg.model.packing import Task, segment_slice
    from aimg.training.loss import noised_latents

    ev = _open_evaluation(checkpoint, data, num_episodes, device)
    model, mcfg, dev = ev.loaded.model.eval(), ev.loaded.model_config, ev.device
    items = [ev.dataset[(i, seed + i)] for i in range(len(ev.paths))]
    inp = ev.objective.inputs(torch.utils.data.default_collate(items), Task.JOINT)
    x0, clean = inp["x0"], inp["clean"]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    frames_of = {
        modality: torch.cat(
            [
                torch.arange(x0.shape[2])[segment_slice(v, modality, mcfg.latent_frames, True)]
                for v in range(mcfg.views)
            ]
        )
        for modality in ("video", "action")
    }
    generated = ~clean.cpu()

    def per_modality(err: torch.Tensor) -> dict[str, float]:
        per_frame = err.mean(dim=(0, 1, 3, 4)).cpu()
        return {m: float(per_frame[f[generated[f]]].mean()) for m, f in frames_of.items()}

    flat = per_modality((x0 - x0.mean(dim=(3, 4), keepdim=True)) ** 2)
    levels = []
    for sigma in sigmas:
        sigmas_b = torch.full((x0.shape[0],), sigma, device=dev)
        xt, _ = noised_latents(x0, noise, sigmas_b, clean)
        t = ev.objective.model_timesteps(sigmas_b * NUM_TRAIN_TIMESTEPS, clean)
        with torch.no_grad():
            velocity = model(xt, t, inp["text"], inp["cameras"]).float()
        if model.config.prediction == "sample":
            sigma = max(sigma, model.config.min_sigma)  # the model's own clamp
        # x_t = x0 + σ (ε - x0) = x0 + σ v, for either kind of prediction
        levels.append({"sigma": sigma, **per_modality((xt - sigma * velocity - x0) ** 2)})
    return {
        "checkpoint": str(ev.step_dir),
        "episodes": len(ev.paths),
        "flat": flat,
        "levels": levels,
    }

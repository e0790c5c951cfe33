"""Where a policy's open-loop error comes from, measured per component on start states.

For every start state the model draws `samples` plans as the robot would (the runtime's torch
backend on the runtime's observation), and the final frame of each is taken apart:

- codec: the expert's own poses rendered as action images and decoded: the floor the image
  representation and the decoder put under any model (mm);
- image: where each view draws the TCP blob against where the expert's final TCP projects
  (px), also as millimetres across that camera's line of sight at the point's depth;
- depth: the 3D error split, per camera, into the part along its line of sight (which only the
  other view can fix, so it depends on the two views agreeing) and the part across it;
- views: how far apart the two views' blobs are once explained by one 3D pose (the decoder's
  reprojection error, px): a model that places the blob well in one view and badly in the
  other shows up here;
- sampler: the error of one draw, of the mean of the draws' final positions (noise averaged
  away: what remains is bias) and their spread (what averaging or more steps could remove);
- grounding: whether the plan ends nearer the named cube than any other (the wrong cube is a
  language/scene-reading error, not a localisation one).

Run it on training start states and on held-out ones: the gap is what the data (its amount or
variety) costs. `aimg eval diagnose` prints the medians; docs/training.md has the readings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aimg.training.evaluate import (
    EvaluationError,
    cube_positions,
    evaluation_setup,
    last_valid,
    resolve_checkpoint,
)

_DRAW_SEED_STRIDE = 100_003


def _percentiles(values: list[float]) -> dict[str, float] | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None
    p50, p90 = np.percentile(finite, [50, 90])
    return {"median": round(float(p50), 4), "p90": round(float(p90), 4), "n": len(finite)}


def _view_errors(
    images: np.ndarray, cameras: list, point: np.ndarray, sigma_fraction: float
) -> tuple[list[float], list[float]]:
    """Per view: the TCP blob's pixel error in the final frame, and that error in mm across
    the camera's line of sight at the point's depth (NaN where the blob is missing)."""
    from aimg.codec.decode import locate_blobs

    uv, weight = locate_blobs(images[-1:], sigma_fraction=sigma_fraction)
    pixels, millimetres = [], []
    for v, camera in enumerate(cameras):
        projected, depth = camera.project(point[None])
        if weight[0, v, 0] <= 0 or not np.isfinite(projected).all():
            pixels.append(float("nan"))
            millimetres.append(float("nan"))
            continue
        error = float(np.linalg.norm(uv[0, v, 0] - projected[0]))
        pixels.append(error)
        millimetres.append(error * float(np.ravel(depth)[0]) / float(camera.K[0, 0]) * 1e3)
    return pixels, millimetres


def _along_across(error: np.ndarray, camera: Any, point: np.ndarray) -> tuple[float, float]:
    """A 3D error vector split into its part along the camera's ray to `point` and across."""
    ray = point - camera.c2w[:3, 3]
    ray = ray / np.linalg.norm(ray)
    along = float(abs(error @ ray))
    across = float(np.linalg.norm(error - (error @ ray) * ray))
    return along * 1e3, across * 1e3


def diagnose_checkpoint(
    checkpoint: Path,
    data: list[Path],
    num_episodes: int = 50,
    samples: int = 4,
    device: str = "auto",
    seed: int = 0,
    num_steps: int | None = None,
    progress: str | None = "diagnose",
) -> dict[str, Any]:
    """The per-component error report of `checkpoint` on the first `num_episodes` start
    states under `data` (see the module docstring); {"summary": ..., "episodes": [...]}."""
    import dataclasses

    from tqdm import tqdm

    from aimg.codec.decode import decode
    from aimg.codec.render import render
    from aimg.episodes import read_episode
    from aimg.observation import episode_observation
    from aimg.runtime.backends.torch_backend import TorchBackend
    from aimg.training.distributed import resolve_device

    if samples < 2:
        raise EvaluationError("diagnosis needs --samples >= 2 (the sampler's spread)")
    step_dir = resolve_checkpoint(checkpoint)
    backend = TorchBackend(step_dir, device=resolve_device(device))
    mcfg, spec = backend.model_config, backend.spec
    dcfg, _, paths = evaluation_setup(
        step_dir, backend.config.get("extra", {}), resolve_device(device), data, num_episodes
    )
    sampling = backend.sampling
    if num_steps is not None:
        sampling = dataclasses.replace(sampling, num_steps=num_steps)
    rows: list[dict[str, Any]] = []
    for index, path in enumerate(tqdm(paths, desc=progress, disable=progress is None)):
        episode = read_episode(path)
        obs, views = episode_observation(episode, spec, dcfg.views)
        cameras = list(obs.cameras)
        poses = np.asarray(episode.poses, dtype=np.float64)
        clip = np.minimum(dcfg.stride * np.arange(mcfg.frames), len(poses) - 1)
        truth = poses[clip]
        goal = truth[-1, :3]
        rendered = render(truth, cameras, mcfg.height, mcfg.width, spec.blob_sigma)
        codec = decode(rendered, cameras, sigma_fraction=spec.blob_sigma)
        codec_final = last_valid(codec.actions[:, :3])
        finals, view_px, view_mm, along, across, disagreement = [], [], [], [], [], []
        for r in range(samples):
            plan = backend.plan(
                obs, episode.instruction, seed + index + _DRAW_SEED_STRIDE * r, sampling
            )
            decoded = decode(plan.action_images, cameras, sigma_fraction=spec.blob_sigma)
            final = last_valid(decoded.actions[:, :3])
            finals.append(final)
            px, mm = _view_errors(plan.action_images, cameras, goal, spec.blob_sigma)
            view_px.append(px)
            view_mm.append(mm)
            if final is not None:
                split = [_along_across(final - goal, cam, goal) for cam in cameras]
                along.append([a for a, _ in split])
                across.append([c for _, c in split])
                disagreement.append(float(decoded.reprojection_error[-1]))
        valid = [f for f in finals if f is not None]
        mean_final = np.mean(valid, axis=0) if valid else None
        cubes = cube_positions(episode.metadata)
        target = episode.metadata.get("scene", {}).get("target")
        nearest = None
        if finals[0] is not None and cubes:
            distances = {c: float(np.linalg.norm(finals[0][:2] - p[:2])) for c, p in cubes.items()}
            nearest = min(distances, key=distances.__getitem__)
        rows.append(
            {
                "episode": str(path),
                "views": list(views),
                "codec_mm": None
                if codec_final is None
                else float(np.linalg.norm(codec_final - goal) * 1e3),
                "draw_mm": [
                    None if f is None else float(np.linalg.norm(f - goal) * 1e3) for f in finals
                ],
                "mean_of_draws_mm": None
                if mean_final is None
                else float(np.linalg.norm(mean_final - goal) * 1e3),
                "spread_mm": float(np.mean([np.linalg.norm(f - mean_final) for f in valid]) * 1e3)
                if len(valid) > 1
                else None,
                "height_mm": None if finals[0] is None else float((finals[0][2] - goal[2]) * 1e3),
                "view_px": view_px,
                "view_mm": view_mm,
                "along_ray_mm": along,
                "across_ray_mm": across,
                "view_disagreement_px": disagreement,
                "nearest_cube_is_target": None if nearest is None else nearest == target,
            }
        )
    return {"summary": summarise_diagnosis(rows, samples), "episodes": rows}


def summarise_diagnosis(rows: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Medians and 90th percentiles of every component over the episodes."""
    first = [r["draw_mm"][0] for r in rows]
    views = len(rows[0]["view_px"][0]) if rows else 0

    def per_view(key: str, v: int) -> list[float]:
        return [row[v] for r in rows for row in r[key] if len(row) > v]

    grounded = [
        r["nearest_cube_is_target"] for r in rows if r["nearest_cube_is_target"] is not None
    ]
    return {
        "episodes": len(rows),
        "samples": samples,
        "success_3cm_one_draw": sum(e is not None and e < 30.0 for e in first) / max(len(rows), 1),
        "one_draw_mm": _percentiles(first),
        "mean_of_draws_mm": _percentiles([r["mean_of_draws_mm"] for r in rows]),
        "spread_mm": _percentiles([r["spread_mm"] for r in rows]),
        "codec_mm": _percentiles([r["codec_mm"] for r in rows]),
        "height_error_mm": _percentiles(
            [abs(r["height_mm"]) for r in rows if r["height_mm"] is not None]
        ),
        "view_px": [_percentiles(per_view("view_px", v)) for v in range(views)],
        "view_mm": [_percentiles(per_view("view_mm", v)) for v in range(views)],
        "along_ray_mm": [_percentiles(per_view("along_ray_mm", v)) for v in range(views)],
        "across_ray_mm": [_percentiles(per_view("across_ray_mm", v)) for v in range(views)],
        "view_disagreement_px": _percentiles([d for r in rows for d in r["view_disagreement_px"]]),
        "nearest_cube_is_target_rate": sum(grounded) / len(grounded) if grounded else None,
    }

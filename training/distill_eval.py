"""Distilled students against their teacher (`aimg eval distill`), and the teacher's guidance
sweep (`aimg eval guidance`).

`compare_samplers` plans every held-out start state with several samplers ("arms") from the
same noise seed and the same conditioning: the reference (the teacher at 50 steps with the
guidance the student folded in), each student on its own grid, and the brackets: the teacher at
the student's step count with guidance (twice the student's evaluations) and without, and at
100 steps with guidance (the discretisation floor of the reference). Each arm is scored
against the reference (relative L2 of the generated action latents, PSNR of the generated
action images, decoded position / rotation / gripper agreement) and against the expert as
`aimg eval` scores it (open-loop reach success), with its evaluation count and wall time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimg.model.config import SamplingConfig
from aimg.model.packing import unpack_latents
from aimg.training.evaluate import (
    EvaluationError,
    evaluate_checkpoint,
    evaluation_setup,
    resolve_checkpoint,
    score_episode,
    summarise,
)


@dataclass(frozen=True)
class Arm:
    """One sampler set-up: a checkpoint and the sampling it runs with."""

    name: str
    role: str  # "reference", "student" or "bracket"
    checkpoint: Path
    sampling: SamplingConfig

    @property
    def evaluations_per_plan(self) -> int:
        return self.sampling.evaluations_per_plan


def teacher_sampling(base: SamplingConfig, steps: int, cfg_scale: float) -> SamplingConfig:
    """The teacher's sampling block at `steps` shifted steps with guidance `cfg_scale`."""
    return dataclasses.replace(
        base, num_steps=steps, cfg_scale=cfg_scale, sigmas=None, step_cache=False, distilled=None
    )


def distill_arms(
    teacher: Path,
    teacher_base: SamplingConfig,
    students: list[tuple[Path, SamplingConfig]],
    reference_steps: int = 50,
    cfg_scale: float | None = None,
    bracket_steps: int | None = None,
    floor_steps: int = 100,
) -> list[Arm]:
    """Reference, students and brackets (duplicates, e.g. with cfg 1, appear once).

    cfg_scale: the reference's guidance (default: the guidance folded into the first student,
    else the teacher's own). bracket_steps: default each student's step count (so every
    student has its own brackets), else 16.
    """
    if teacher_base.distilled is not None:
        raise EvaluationError(
            f"{teacher} is itself a distilled student; pass the original teacher as --teacher "
            "(its 50-step guided samples are the reference)"
        )
    first = students[0][1] if students else None
    if cfg_scale is None:
        folded = first.distilled if first is not None else None
        cfg_scale = folded.guidance_scale if folded is not None else teacher_base.cfg_scale
    if bracket_steps is not None:
        step_counts = [bracket_steps]
    else:
        step_counts = list(dict.fromkeys(s.num_steps for _, s in students)) or [16]

    def teacher_arm(role: str, steps: int, scale: float) -> Arm:
        name = f"teacher-{steps}-cfg{scale:g}"
        return Arm(name, role, teacher, teacher_sampling(teacher_base, steps, scale))

    arms = [teacher_arm("reference", reference_steps, cfg_scale)]
    names = {arms[0].name}
    for path, sampling in students:
        name = f"student-{sampling.num_steps}"
        while name in names:
            name += "'"
        names.add(name)
        arms.append(Arm(name, "student", path, sampling))
    brackets = [(steps, scale) for steps in step_counts for scale in (cfg_scale, 1.0)]
    brackets.append((floor_steps, cfg_scale))
    for steps, scale in brackets:
        arm = teacher_arm("bracket", steps, scale)
        if arm.name not in names:
            names.add(arm.name)
            arms.append(arm)
    return arms


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle [T] in degrees between extrinsic-xyz Euler orientations a, b [T, 3]."""
    from scipy.spatial.transform import Rotation

    relative = Rotation.from_euler("xyz", a) * Rotation.from_euler("xyz", b).inv()
    return np.degrees(relative.magnitude())


def compare_plans(
    latents: torch.Tensor,
    images: np.ndarray,
    actions: np.ndarray,
    ref_latents: torch.Tensor,
    ref_images: np.ndarray,
    ref_actions: np.ndarray,
    num_views: int,
) -> dict[str, Any]:
    """One plan against the reference plan, on the generated frames (1..T-1) only.

    latents: packed [1, C, F, h, w]; images: action images [T, V, H, W, 3] in [0, 1];
    actions: decoded [T, 7] (NaN where a frame did not decode). Returns the relative L2 of the
    action latents, the PSNR (dB) of the action images, and the mean position (mm) and
    rotation (deg) errors and gripper agreement over frames both plans decoded.
    """
    _, act = unpack_latents(latents.float(), num_views, True)
    _, ref = unpack_latents(ref_latents.float(), num_views, True)
    act, ref = act[:, :, :, 1:], ref[:, :, :, 1:]
    norm = torch.linalg.vector_norm
    rel_l2 = float(norm(act - ref) / norm(ref).clamp_min(1e-12))
    mse = float(np.mean((images[1:].astype(np.float64) - ref_images[1:]) ** 2))
    psnr = 10.0 * math.log10(1.0 / max(mse, 1e-10))
    a, r = actions[1:], ref_actions[1:]
    both = np.isfinite(a).all(axis=1) & np.isfinite(r).all(axis=1)
    result: dict[str, Any] = {
        "latent_rel_l2": rel_l2,
        "psnr_db": psnr,
        "frames_compared": int(both.sum()),
        "frames_undecoded": int(len(a) - both.sum()),
    }
    if both.any():
        result.update(
            position_error_mm=float(
                1000.0 * np.linalg.norm(a[both, :3] - r[both, :3], axis=1).mean()
            ),
            rotation_error_deg=float(_rotation_error_deg(a[both, 3:6], r[both, 3:6]).mean()),
            gripper_accuracy=float(np.mean((a[both, 6] > 0.5) == (r[both, 6] > 0.5))),
        )
    return result


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def compare_samplers(
    teacher: Path,
    students: list[Path],
    data: list[Path],
    num_episodes: int = 50,
    threshold: float = 0.03,
    device: str = "auto",
    seed: int = 0,
    reference_steps: int = 50,
    cfg_scale: float | None = None,
    bracket_steps: int | None = None,
    floor_steps: int = 100,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Plan the first `num_episodes` start states under `data` with every arm (`distill_arms`)
    from the same noise (seed + episode index) and score them; see the module docstring.
    `threads`: CPU threads (default: the teacher's train.cpu_threads, as `aimg eval`); the
    arms of one start state run back to back, so their wall times share the machine's load.

    Returns {"summary": {"reference", "arms": {name: aggregate}, "verdicts"}, "episodes": [...]}.
    """
    from tqdm import tqdm

    from aimg.codec.decode import decode
    from aimg.episodes import read_episode
    from aimg.observation import episode_observation
    from aimg.runtime.backends.torch_backend import TorchBackend
    from aimg.training.distributed import resolve_device

    dev = resolve_device(device)
    teacher_dir = resolve_checkpoint(teacher)
    backends = {teacher_dir: TorchBackend(teacher_dir, device=dev)}
    student_dirs = [resolve_checkpoint(s) for s in students]
    for path in student_dirs:
        backends.setdefault(path, TorchBackend(path, device=dev))
        if backends[path].model_config != backends[teacher_dir].model_config:
            raise EvaluationError(
                f"{path} has another model than the teacher {teacher_dir}: a student shares "
                "its teacher's architecture and inputs"
            )
    arms = distill_arms(
        teacher_dir,
        backends[teacher_dir].sampling,
        [(p, backends[p].sampling) for p in student_dirs],
        reference_steps,
        cfg_scale,
        bracket_steps,
        floor_steps,
    )
    base = backends[teacher_dir]
    mcfg, spec = base.model_config, base.spec
    dcfg, _, paths = evaluation_setup(
        teacher_dir, base.config.get("extra", {}), dev, data, num_episodes
    )
    if threads is not None and dev.type == "cpu":
        from aimg.training.distributed import set_cpu_threads

        set_cpu_threads(threads)
    per_arm: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    timings: dict[str, list[float]] = {arm.name: [] for arm in arms}
    calls: dict[str, list[int]] = {arm.name: [] for arm in arms}
    episodes = []
    bar = tqdm(paths, desc="eval distill", unit="start", disable=not progress)
    for index, path in enumerate(bar):
        episode = read_episode(path)
        obs, views = episode_observation(episode, spec, dcfg.views)
        if not all(episode.camera_is_static(v) for v in views):
            raise EvaluationError(f"{path} has a moving camera; choose static views (data.views)")
        poses = np.asarray(episode.poses, dtype=np.float64)
        truth = poses[np.minimum(dcfg.stride * np.arange(mcfg.frames), len(poses) - 1)]
        plans = {}
        for arm in arms:
            backend = backends[arm.checkpoint]
            out = backend.plan(obs, episode.instruction, seed + index, arm.sampling)
            decoded = decode(out.action_images, obs.cameras, sigma_fraction=spec.blob_sigma)
            plans[arm.name] = (out, decoded.actions)
            timings[arm.name].append(out.timings["total"])
            calls[arm.name].append(out.model_calls)
        ref_out, ref_actions = plans[arms[0].name]
        row: dict[str, Any] = {"episode": str(path), "arms": {}}
        for arm in arms:
            out, actions = plans[arm.name]
            entry = score_episode(actions, truth, episode.metadata, threshold)
            if arm is not arms[0]:
                entry.update(
                    compare_plans(
                        out.latents,
                        out.action_images,
                        actions,
                        ref_out.latents,
                        ref_out.action_images,
                        ref_actions,
                        mcfg.views,
                    )
                )
            per_arm[arm.name].append(entry)
            row["arms"][arm.name] = entry
        episodes.append(row)

    keys = ("latent_rel_l2", "psnr_db", "position_error_mm", "rotation_error_deg")
    aggregates = {}
    for arm in arms:
        results = per_arm[arm.name]
        entry: dict[str, Any] = {
            "role": arm.role,
            "checkpoint": str(arm.checkpoint),
            "steps": arm.sampling.num_steps,
            "cfg_scale": arm.sampling.cfg_scale,
            "evaluations_per_plan": int(np.median(calls[arm.name])) if calls[arm.name] else 0,
            "plan_time_median_s": float(np.median(timings[arm.name])) if results else None,
            "plan_time_total_s": float(np.sum(timings[arm.name])),
        }
        if arm.sampling.distilled is not None:
            entry["distilled"] = dataclasses.asdict(arm.sampling.distilled)
        if arm is not arms[0]:
            entry.update({k: _mean([r.get(k) for r in results]) for k in keys})
            entry["gripper_accuracy"] = _mean([r.get("gripper_accuracy") for r in results])
            entry["frames_undecoded"] = int(sum(r["frames_undecoded"] for r in results))
        entry["open_loop"] = summarise(results, threshold)
        aggregates[arm.name] = entry
    summary = {
        "teacher": str(teacher_dir),
        "episodes": len(paths),
        "seed": seed,
        "threshold_m": threshold,
        "reference": arms[0].name,
        "device": str(dev),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "arms": aggregates,
        "verdicts": verdicts(arms, aggregates),
    }
    return {"summary": summary, "episodes": episodes}


def verdicts(arms: list[Arm], aggregates: dict[str, Any]) -> dict[str, Any]:
    """Per student, the issue's two tests: is its decoded-action (position) error against the
    reference smaller than the guided teacher's at the same step count, and how many points of
    open-loop success does it lose against the reference."""
    reference = arms[0]
    out = {}
    for arm in arms:
        if arm.role != "student":
            continue
        mine = aggregates[arm.name]
        bracket = next(
            (
                a
                for a in arms
                if a.role == "bracket"
                and a.sampling.num_steps == arm.sampling.num_steps
                and a.sampling.cfg_scale == reference.sampling.cfg_scale
            ),
            None,
        )
        rival = aggregates[bracket.name] if bracket is not None else None
        theirs = aggregates[reference.name]["open_loop"]["success_rate"]
        points = 100.0 * (mine["open_loop"]["success_rate"] - theirs)
        error, rival_error = mine.get("position_error_mm"), (rival or {}).get("position_error_mm")
        out[arm.name] = {
            "compared_with": bracket.name if bracket is not None else None,
            "position_error_mm": error,
            "bracket_position_error_mm": rival_error,
            "beats_bracket": (
                error < rival_error if error is not None and rival_error is not None else None
            ),
            "success_points_vs_reference": points,
        }
    return out


def format_table(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table, one row per arm."""
    columns = (
        ("arm", lambda n, a: n),
        ("evals", lambda n, a: str(a["evaluations_per_plan"])),
        ("plan s", lambda n, a: _fmt(a["plan_time_median_s"], ".3f")),
        ("rel L2", lambda n, a: _fmt(a.get("latent_rel_l2"), ".4f")),
        ("PSNR dB", lambda n, a: _fmt(a.get("psnr_db"), ".2f")),
        ("pos mm", lambda n, a: _fmt(a.get("position_error_mm"), ".2f")),
        ("rot deg", lambda n, a: _fmt(a.get("rotation_error_deg"), ".2f")),
        ("grip", lambda n, a: _fmt(a.get("gripper_accuracy"), ".3f")),
        ("success", lambda n, a: _fmt(a["open_loop"]["success_rate"], ".2f")),
        ("median m", lambda n, a: _fmt(a["open_loop"]["final_error_median_m"], ".3f")),
    )
    rows = [[title for title, _ in columns]]
    rows += [[fn(name, arm) for _, fn in columns] for name, arm in summary["arms"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = (
        f"{summary['episodes']} start states, reference {summary['reference']} "
        "(errors are against it; success is against the expert)"
    )
    return "\n".join([head, *lines])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


SIGNIFICANCE = 0.05


def paired_sign_test(a: list[bool], b: list[bool]) -> tuple[int, int, float]:
    """Starts that `a` solves and `b` does not (wins), the reverse (losses), and the exact
    two-sided sign-test p-value of that split: both arms ran the same start states from the
    same noise, so only the discordant starts carry evidence."""
    wins = sum(x and not y for x, y in zip(a, b, strict=True))
    losses = sum(y and not x for x, y in zip(a, b, strict=True))
    n = wins + losses
    if n == 0:
        return wins, losses, 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return wins, losses, min(1.0, 2 * tail)


def guidance_sweep(
    checkpoint: Path,
    data: list[Path],
    scales: list[float],
    num_steps: int = 50,
    num_episodes: int = 50,
    out_dir: Path | None = None,
    threshold: float = 0.03,
    device: str = "auto",
    samples: int = 1,
) -> dict[str, Any]:
    """`aimg eval` of one checkpoint at `num_steps` steps for each guidance scale (the same
    start states and noise seeds for each), and the best scale: highest success, then lowest
    median final error, then the smallest scale (the cheapest). `guidance_helps` says whether
    the best scale beats scale 1 on success (None when 1 was not swept).
    """
    step_dir = resolve_checkpoint(checkpoint)
    if out_dir is None:
        in_run = step_dir.parent.name == "checkpoints"
        root = step_dir.parent.parent / "eval" if in_run else step_dir / "eval"
        out_dir = root / f"guidance-{step_dir.name}-{num_steps}steps"
    rows = []
    successes: dict[float, list[bool]] = {}
    for scale in scales:
        report = evaluate_checkpoint(
            step_dir,
            data,
            num_episodes=num_episodes,
            out_dir=Path(out_dir) / f"cfg{scale:g}",
            threshold=threshold,
            device=device,
            contact_sheets=0,
            num_steps=num_steps,
            cfg_scale=scale,
            samples=samples,
            progress=f"guidance {scale:g}",
        )
        s = report["summary"]
        successes[scale] = [bool(e["success"]) for e in report["episodes"]]
        rows.append(
            {
                "cfg_scale": scale,
                "evaluations_per_plan": num_steps * (2 if scale != 1.0 else 1) * samples,
                **{
                    k: s[k]
                    for k in (
                        "success_rate",
                        "cube_xy_success_rate",
                        "final_error_median_m",
                        "final_error_mean_m",
                        "nearest_cube_is_target_rate",
                        "decode_failures",
                    )
                },
            }
        )

    def rank(row: dict[str, Any]) -> tuple[float, float, float]:
        median = row["final_error_median_m"]
        return (-row["success_rate"], math.inf if median is None else median, row["cfg_scale"])

    best = min(rows, key=rank)
    unguided = successes.get(1.0)
    helps = None
    if unguided is not None:
        for row in rows:
            wins, losses, p = paired_sign_test(successes[row["cfg_scale"]], unguided)
            row.update(wins_vs_unguided=wins, losses_vs_unguided=losses, sign_test_p=p)
        helps = best["cfg_scale"] != 1.0 and best["sign_test_p"] < SIGNIFICANCE
    result = {
        "checkpoint": str(step_dir),
        "steps": num_steps,
        "episodes": num_episodes,
        "samples": samples,
        "threshold_m": threshold,
        "out_dir": str(out_dir),
        "scales": rows,
        "best_cfg_scale": best["cfg_scale"],
        "guidance_helps": helps,
        # Distil from the best scale only when it beats the unguided teacher beyond chance on
        # these start states; otherwise the unguided teacher is as good and costs half.
        "recommended_cfg_scale": best["cfg_scale"] if helps or unguided is None else 1.0,
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

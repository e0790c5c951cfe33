"""`aimg distill`: window targets, the distillation loss, resume, sampling metadata, the CLIs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from training_fixtures import write_synthetic_episodes, write_tiny_preset
from typer.testing import CliRunner

from aimg.config import ConfigError, to_dict
from aimg.model.build import build_model
from aimg.model.checkpoint import load_checkpoint, save_checkpoint
from aimg.model.config import SamplingConfig
from aimg.model.packing import Task
from aimg.model.sampler import flow_sample
from aimg.model.schedule import NUM_TRAIN_TIMESTEPS, sampler_sigmas, window_indices
from aimg.training.cli import distill, eval_app, train
from aimg.training.config import load_training_preset
from aimg.training.distill import (
    DistillConfig,
    DistillError,
    build_distiller,
    load_distill_job,
    plan_distillation,
    run_distillation,
    window_targets,
)
from aimg.training.distill_eval import compare_plans, distill_arms, paired_sign_test
from aimg.training.distributed import DistContext
from aimg.training.evaluate import EvaluationError, evaluate_checkpoint

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

DISTILL_YAML = """\
distill:
  student_steps: {student}
  teacher_steps: {teacher}
  teacher_cfg_scale: {cfg}
data:
  tasks: {{video_only: 0.0, i2va: 1.0, first_view_video_given: 0.0, v2a: 0.0}}
  text_dropout: 0.0
train:
  seed: 5
  max_steps: 4
  batch_size: 2
  lr: {lr}
  warmup_steps: 0
  checkpoint_every: 2
  keep_checkpoints: 2
  log_every: 1
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic episodes, the tiny preset and a teacher checkpoint whose velocity field is
    non-trivial (a freshly initialised Wan head outputs zeros) and depends on the text."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    write_synthetic_episodes(data, 3, frames=12)
    preset = load_training_preset(write_tiny_preset(root / "tiny.yaml", data, root / "unused"))
    torch.manual_seed(0)
    model = build_model(preset.model)
    with torch.no_grad():
        model.proj_out.weight.normal_(std=0.05)
        embedder = model.condition_embedder.text_embedder
        embedder.linear_1.weight.normal_(std=0.3)
        embedder.linear_2.weight.normal_(std=0.3)
    extra = {
        "data": to_dict(preset.data),
        "train": to_dict(preset.train),
        "data_fps": 10.0,
        "action_dt_s": 0.2,
    }
    save_checkpoint(root / "teacher", model, preset.model, preset.sampling, extra=extra)
    return {"root": root, "data": data, "preset": preset, "teacher": root / "teacher"}


def _config(tmp_path, student=2, teacher=8, cfg=3.0, lr=1e-3, name="distill.yaml"):
    path = tmp_path / name
    path.write_text(DISTILL_YAML.format(student=student, teacher=teacher, cfg=cfg, lr=lr))
    return path


def _cli(*args: str):
    app = typer.Typer()
    app.command("train")(train)
    app.command("distill")(distill)
    app.add_typer(eval_app, name="eval")
    return CliRunner().invoke(app, list(args))


# -- grids and plans ---------------------------------------------------------------------------


def test_the_student_grid_is_a_subset_of_the_teachers_shifted_grid():
    teacher = SamplingConfig(num_steps=20, shift=3.0, cfg_scale=1.0)
    plan = plan_distillation(teacher, "f" * 64, DistillConfig(16, 50, 2.0))
    grid = sampler_sigmas(50, 3.0).tolist()
    assert plan.indices[0] == 0 and plan.indices[-1] == 50 and len(plan.indices) == 17
    assert set(np.diff(plan.indices)) <= {3, 4}
    student = plan.sampling
    assert student.num_steps == 16 and student.sigmas == [grid[i] for i in plan.indices[:-1]]
    assert student.sigmas[0] == 1.0 and student.shift == 3.0
    assert student.cfg_scale == 1.0  # guidance is folded in: one evaluation per step
    assert student.distilled.guidance_scale == 2.0 and student.distilled.teacher_steps == 50
    assert student.distilled.teacher_sha256 == "f" * 64 and student.distilled.stage == 1


def test_a_progressive_stage_halves_the_previous_students_grid_without_guidance():
    first = plan_distillation(
        SamplingConfig(num_steps=20, shift=3.0, cfg_scale=1.0), "a" * 64, DistillConfig(16, 50, 2.0)
    ).sampling
    second = plan_distillation(first, "b" * 64, DistillConfig(8, None, None)).sampling
    assert second.sigmas == first.sigmas[::2]
    assert second.distilled.teacher_cfg_scale == 1.0 and second.distilled.guidance_scale == 2.0
    assert second.distilled.stage == 2 and second.distilled.teacher_steps == 16
    with pytest.raises(DistillError, match="teacher_steps"):
        plan_distillation(first, "b" * 64, DistillConfig(8, 50, None))


def test_a_student_needs_fewer_steps_than_its_teacher():
    teacher = SamplingConfig(num_steps=20, shift=3.0, cfg_scale=1.0)
    with pytest.raises(DistillError, match="fewer"):
        plan_distillation(teacher, "f" * 64, DistillConfig(50, 50, 1.0))
    assert window_indices(4, 2) == [0, 2, 4]
    with pytest.raises(ValueError):
        window_indices(4, 5)


# -- the window targets and the loss -----------------------------------------------------------


def test_one_window_over_the_whole_grid_is_the_samplers_guided_euler_run(world):
    """window_targets' sub-steps are flow_sample's: same grid, guidance and clean frames."""
    teacher = load_checkpoint(world["teacher"]).model
    cfg = world["preset"].model
    frames = 4 * cfg.latent_frames
    clean_frames = torch.zeros(frames, dtype=torch.bool)
    clean_frames[:: cfg.latent_frames] = True
    shape = (2, cfg.latent_channels, frames, cfg.latent_height, cfg.latent_width)
    clean = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    text = torch.randn(2, cfg.text.max_length, cfg.transformer.text_dim)
    negative = torch.zeros_like(text)
    cams = torch.randn(2, frames, cfg.cam_channels, cfg.latent_height, cfg.latent_width)
    sampling = SamplingConfig(num_steps=6, shift=3.0, cfg_scale=2.5, seed=11)
    reference = flow_sample(
        teacher, clean, clean_frames, text, cams, negative_embeds=negative, sampling=sampling,
        per_token_timesteps=True,
    ).latents  # fmt: skip
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    x = torch.where(clean_frames.view(1, 1, -1, 1, 1), clean, noise)
    grid = sampler_sigmas(6, 3.0)
    start, end = torch.zeros(2, dtype=torch.long), torch.full((2,), 6)
    velocity, calls = window_targets(
        teacher, x, clean_frames, text, cams, grid, start, end, 2.5, negative, per_token=True
    )
    assert calls == 6
    torch.testing.assert_close(x + velocity * (0.0 - 1.0), reference, rtol=1e-5, atol=1e-5)


class LinearTeacher(nn.Module):
    """v = α(text) x, with α = -1 + tanh(mean of text): the empty prompt gives α = -1."""

    def forward(self, x, t, text, cams):
        return alpha(text).view(-1, 1, 1, 1, 1) * x


def alpha(text: torch.Tensor) -> torch.Tensor:
    return -1.0 + torch.tanh(text.float().mean(dim=(1, 2)))


class ExactStudent(nn.Module):
    """The closed form of LinearTeacher's guided Euler sub-steps across each student window:
    x_end = x Π_j (1 + α_g Δσ_j), so v = x (Π_j (1 + α_g Δσ_j) - 1) / (σ_end - σ_start)."""

    def __init__(self, grid: list[float], indices: list[int], scale: float) -> None:
        super().__init__()
        self.grid, self.indices, self.scale = grid, indices, scale
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, text, cams):
        sigma = t.reshape(x.shape[0], -1).max(dim=1).values / NUM_TRAIN_TIMESTEPS
        guided = -1.0 + self.scale * (alpha(text) + 1.0)
        out = []
        for b in range(x.shape[0]):
            starts = [self.grid[i] for i in self.indices[:-1]]
            w = int(np.argmin([abs(s - float(sigma[b])) for s in starts]))
            lo, hi = self.indices[w], self.indices[w + 1]
            gain = 1.0
            for j in range(lo, hi):
                gain *= 1.0 + float(guided[b]) * (self.grid[j + 1] - self.grid[j])
            out.append(x[b] * (gain - 1.0) / (self.grid[hi] - self.grid[lo]))
        return torch.stack(out) + 0.0 * self.dummy


def _objective(world, teacher: nn.Module, cfg_scale: float, tmp_path):
    job = load_distill_job(_config(tmp_path, 3, 10, cfg_scale), world["teacher"], tmp_path / "o")
    trainer = build_distiller(job, CPU, progress=False)
    trainer.objective.teacher = teacher
    batch = next(iter(trainer._loader()))
    return trainer.objective, batch, job.plan


def test_the_loss_is_zero_when_the_student_is_the_teachers_window_map(world, tmp_path):
    objective, batch, plan = _objective(world, LinearTeacher(), 2.0, tmp_path)
    assert objective.base.task(0) is Task.JOINT
    assert len({int(w) for w in objective.windows(torch.arange(64), 0)}) == 3  # every window
    exact = ExactStudent(plan.grid, plan.indices, plan.cfg_scale)
    for step in range(3):
        loss, extra = objective(exact, batch, step)
        assert float(loss.detach()) < 1e-10, step
        assert extra["teacher_calls"] in (3.0, 4.0)  # 10 teacher steps over 3 windows
    # neither the teacher itself (one step per window) nor the unguided window map is
    assert float(objective(LinearTeacher(), batch, 0)[0].detach()) > 1e-3
    unguided = ExactStudent(plan.grid, plan.indices, 1.0)
    assert float(objective(unguided, batch, 0)[0].detach()) > 1e-3


def test_the_loss_counts_generated_frames_only(world, tmp_path):
    objective, batch, plan = _objective(world, LinearTeacher(), 2.0, tmp_path)

    class WrongOnConditioning(ExactStudent):
        def forward(self, x, t, text, cams):
            out = super().forward(x, t, text, cams)
            generated = (t > 0).reshape(x.shape[0], 1, -1, 1, 1)
            return torch.where(generated, out, out + 7.0)

    wrong = WrongOnConditioning(plan.grid, plan.indices, plan.cfg_scale)
    assert float(objective(wrong, batch, 0)[0].detach()) < 1e-10


def _student_gap(world, student: nn.Module, plan, seeds=(100, 101)) -> float:
    """Relative L2 of the generated latents: student on its grid vs the guided teacher on its
    grid, from the same noise, on start states of the data (not the training draws)."""
    from aimg.model.build import build_latent_codec, build_text_encoder
    from aimg.training.dataset import EpisodeClipDataset, find_episodes
    from aimg.training.objective import WorldActionObjective

    preset = world["preset"]
    mcfg, dcfg = preset.model, dataclasses.replace(preset.data, start_at_zero=1.0)
    dataset = EpisodeClipDataset(find_episodes(dcfg.roots), dcfg, mcfg.frames, 32, 32)
    base = WorldActionObjective(
        mcfg, dcfg, preset.train, build_latent_codec(mcfg), build_text_encoder(mcfg), CPU.device
    )
    items = [dataset[(i % 3, s)] for i, s in enumerate(seeds)]
    inp = base.inputs(torch.utils.data.default_collate(items), Task.JOINT)
    teacher = load_checkpoint(world["teacher"]).model
    negative = torch.zeros_like(inp["text"])
    n = len(plan.grid) - 1
    teacher_sampling = SamplingConfig(num_steps=n, shift=3.0, cfg_scale=plan.cfg_scale, seed=9)
    args = (inp["x0"], inp["clean"], inp["text"], inp["cameras"])
    ref = flow_sample(
        teacher, *args, negative_embeds=negative, sampling=teacher_sampling,
        per_token_timesteps=True,
    ).latents  # fmt: skip
    own = dataclasses.replace(plan.sampling, seed=9)
    out = flow_sample(student, *args, sampling=own, per_token_timesteps=True).latents
    generated = ~inp["clean"]
    diff = (out - ref)[:, :, generated]
    return float(diff.norm() / ref[:, :, generated].norm())


def test_a_few_distillation_steps_shrink_the_student_teacher_gap(world, tmp_path):
    job = load_distill_job(
        _config(tmp_path, 2, 8, 3.0, lr=3e-3), world["teacher"], tmp_path / "o", max_steps=30
    )
    trainer = build_distiller(job, CPU, progress=False)
    before = _student_gap(world, trainer.model.eval(), job.plan)
    trainer.fit()
    after = _student_gap(world, trainer.model.eval(), job.plan)
    assert after < 0.7 * before, (before, after)


def test_resume_of_a_distillation_is_exact(world, tmp_path):
    config = _config(tmp_path)
    job = load_distill_job(config, world["teacher"], tmp_path / "a")
    straight = build_distiller(job, CPU, progress=False)
    straight.fit(4)
    job = load_distill_job(config, world["teacher"], tmp_path / "b")
    build_distiller(job, CPU, progress=False).fit(2)
    resumed = build_distiller(job, CPU, progress=False)
    assert resumed.resume_latest() and resumed.step == 2
    resumed.fit(4)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# -- the student's sampling metadata ----------------------------------------------------------


def test_sampling_metadata_round_trips_through_save_export_and_load(world, tmp_path):
    from training_fixtures import make_camera

    from aimg.artifacts import checkpoint_fingerprint, read_manifest
    from aimg.export.onnx_export import export_artifact
    from aimg.observation import ModelObservation
    from aimg.runtime.backends import load

    job = load_distill_job(_config(tmp_path), world["teacher"], tmp_path / "s", max_steps=2)
    summary = run_distillation(job, resume=False, progress=False)
    student = summary["checkpoint"]
    expected = job.plan.sampling
    assert expected.distilled.teacher_sha256 == checkpoint_fingerprint(world["teacher"])
    assert load_checkpoint(student).sampling == expected
    config = json.loads((Path(student) / "config.json").read_text())
    assert config["sampling"]["distilled"]["guidance_scale"] == 3.0
    assert config["extra"]["distill"]["window_indices"] == [0, 4, 8]
    assert config["extra"]["action_dt_s"] == 0.2

    artifact = export_artifact(student, tmp_path / "artifact", None, 20, None)
    manifest = read_manifest(tmp_path / "artifact")
    assert manifest.sampling == config["sampling"] and artifact.profile.batch == 1
    cfg = job.model
    obs = ModelObservation(
        frames=torch.zeros(2, 3, cfg.height, cfg.width),
        action_images=torch.zeros(2, 3, cfg.height, cfg.width),
        cameras=[make_camera(v, cfg.height, cfg.width) for v in ("front", "side")],
    )
    for backend in (load(student, "torch"), load(tmp_path / "artifact", "onnxruntime")):
        assert backend.sampling == expected, backend.name
        assert backend.describe()["distilled"]["teacher_steps"] == 8
        assert backend.plan(obs, "reach the cube 0", seed=1).model_calls == 2  # no CFG branch


def test_eval_steps_do_not_override_a_students_own_grid(world, tmp_path):
    job = load_distill_job(_config(tmp_path), world["teacher"], tmp_path / "s", max_steps=1)
    student = run_distillation(job, resume=False, progress=False)["checkpoint"]
    with pytest.raises(EvaluationError, match="own 2-step grid"):
        evaluate_checkpoint(student, [world["data"]], num_episodes=1, num_steps=5)


# -- configs -----------------------------------------------------------------------------------


def test_the_shipped_configs_distil_sim_tiny_to_16_then_8_steps(tmp_path):
    from artifact_fixtures import REPO_ROOT, SIM_TINY

    job = load_distill_job(
        REPO_ROOT / "configs" / "distill-sim-tiny.yaml", SIM_TINY, tmp_path / "16"
    )
    teacher = json.loads((SIM_TINY / "config.json").read_text())
    assert job.plan.grid == sampler_sigmas(50, teacher["sampling"]["shift"]).tolist()
    assert job.plan.sampling.num_steps == 16 and job.plan.cfg_scale == 1.0
    assert job.data.crop == teacher["extra"]["data"]["crop"]
    assert job.data.stride == teacher["extra"]["data"]["stride"]
    assert job.data.tasks == world_tasks(teacher) and job.train.run_dir == tmp_path / "16"
    # a 16-step student as the next teacher: the progressive config halves its grid
    model = load_checkpoint(SIM_TINY).model
    run = tmp_path / "16" / "checkpoints" / "step_000001"
    save_checkpoint(run, model, job.model, job.plan.sampling, extra=teacher["extra"])
    second = load_distill_job(
        REPO_ROOT / "configs" / "distill-sim-tiny-progressive.yaml", run, tmp_path / "8"
    )
    assert second.plan.sampling.sigmas == job.plan.sampling.sigmas[::2]
    assert second.plan.sampling.distilled.stage == 2


def world_tasks(config: dict):
    from aimg.config import from_dict
    from aimg.training.config import TaskMixture

    return from_dict(TaskMixture, config["extra"]["data"]["tasks"])


def test_a_student_must_see_inputs_as_its_teacher_did(world, tmp_path):
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("data:\n", "data:\n  crop: [0, 0, 0.5, 0.5]\n"))
    with pytest.raises(ConfigError, match="data.crop"):
        load_distill_job(config, world["teacher"], tmp_path / "o")


def test_flow_matching_train_keys_are_refused(world, tmp_path):
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("train:\n", "train:\n  shift: 5.0\n"))
    with pytest.raises(ConfigError, match="train.shift"):
        load_distill_job(config, world["teacher"], tmp_path / "o")


def test_the_teachers_data_section_is_inherited_and_overridable(world, tmp_path):
    job = load_distill_job(_config(tmp_path), world["teacher"], tmp_path / "o", data=[tmp_path])
    teacher_data = world["preset"].data
    assert job.data.stride == teacher_data.stride and job.data.crop == teacher_data.crop
    assert job.data.text_dropout == 0.0 and job.data.roots == [tmp_path]
    assert job.train.run_dir == tmp_path / "o"


# -- evaluation --------------------------------------------------------------------------------


def test_compare_plans_measures_against_the_reference_on_generated_frames():
    ref_actions = np.zeros((3, 7))
    ref_actions[:, :3] = [[0.3, 0.0, 0.2], [0.35, 0.0, 0.2], [0.4, 0.0, 0.2]]
    ref_actions[:, 3] = np.pi
    ref_actions[:, 6] = [1.0, 1.0, 0.0]
    actions = ref_actions.copy()
    actions[:, 0] += [0.5, 0.002, 0.004]  # frame 0 (conditioning) does not count
    actions[1, 5] += np.radians(10.0)
    actions[2, 6] = 1.0
    latents = torch.ones(1, 4, 8, 2, 2)  # 2 views x 2 segments x 2 latent frames
    ref_latents = latents.clone()
    ref_latents[:, :, 3] = 2.0  # view 0's generated action frame
    images = np.full((3, 2, 4, 4, 3), 0.5)
    ref_images = images.copy()
    ref_images[1:] += 0.1
    out = compare_plans(latents, images, actions, ref_latents, ref_images, ref_actions, 2)
    assert out["position_error_mm"] == pytest.approx(3.0)
    assert out["rotation_error_deg"] == pytest.approx(5.0)
    assert out["gripper_accuracy"] == pytest.approx(0.5)
    assert out["psnr_db"] == pytest.approx(20.0)
    assert out["latent_rel_l2"] == pytest.approx(np.sqrt(16) / np.sqrt(16 * 4 + 16))
    assert out["frames_compared"] == 2 and out["frames_undecoded"] == 0


def test_arms_are_the_reference_the_students_and_three_brackets(tmp_path):
    teacher = SamplingConfig(num_steps=20, shift=3.0, cfg_scale=1.0)
    student = plan_distillation(teacher, "a" * 64, DistillConfig(16, 50, 2.0)).sampling
    arms = distill_arms(tmp_path / "t", teacher, [(tmp_path / "s", student)])
    assert [(a.name, a.evaluations_per_plan) for a in arms] == [
        ("teacher-50-cfg2", 100),
        ("student-16", 16),
        ("teacher-16-cfg2", 32),
        ("teacher-16-cfg1", 16),
        ("teacher-100-cfg2", 200),
    ]
    unguided = plan_distillation(teacher, "a" * 64, DistillConfig(16, 50, 1.0)).sampling
    names = [a.name for a in distill_arms(tmp_path / "t", teacher, [(tmp_path / "s", unguided)])]
    assert names == ["teacher-50-cfg1", "student-16", "teacher-16-cfg1", "teacher-100-cfg1"]
    four = plan_distillation(teacher, "a" * 64, DistillConfig(4, 50, 1.0)).sampling
    arms = distill_arms(
        tmp_path / "t", teacher, [(tmp_path / "s", unguided), (tmp_path / "f", four)]
    )
    assert [a.name for a in arms] == [
        "teacher-50-cfg1", "student-16", "student-4", "teacher-16-cfg1", "teacher-4-cfg1",
        "teacher-100-cfg1",
    ]  # fmt: skip
    with pytest.raises(EvaluationError, match="original teacher"):
        distill_arms(tmp_path / "s", student, [])


def test_cli_distills_then_compares_the_student_with_its_teacher(world, tmp_path):
    teacher, data = str(world["teacher"]), str(world["data"])
    out = tmp_path / "student"
    result = _cli(
        "distill", "--teacher", teacher, "--config", str(_config(tmp_path)), "--out", str(out),
        "--max-steps", "2", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert (summary["step"], summary["student_steps"], summary["teacher_steps"]) == (2, 2, 8)
    assert (out / "distill.yaml").is_file() and (out / "tensorboard").is_dir()
    again = _cli("distill", "--teacher", teacher, "--config", str(_config(tmp_path)),
                 "--out", str(out))  # fmt: skip
    assert again.exit_code == 2 and "--resume" in again.output

    result = _cli(
        "eval", "distill", "--teacher", teacher, "--student", str(out), "--data", data,
        "--episodes", "2", "--reference-steps", "4", "--floor-steps", "6", "--json",
        "--no-progress", "--out", str(tmp_path / "report"), "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    arms = report["arms"]
    assert list(arms) == [
        "teacher-4-cfg3", "student-2", "teacher-2-cfg3", "teacher-2-cfg1", "teacher-6-cfg3"
    ]  # fmt: skip
    assert [a["evaluations_per_plan"] for a in arms.values()] == [8, 2, 4, 2, 12]
    assert arms["student-2"]["distilled"]["guidance_scale"] == 3.0
    for name, arm in arms.items():
        assert arm["open_loop"]["episodes"] == 2 and arm["plan_time_median_s"] > 0
        if name != "teacher-4-cfg3":
            assert 0 <= arm["latent_rel_l2"] < 1 and np.isfinite(arm["psnr_db"])
    assert report["verdicts"]["student-2"]["compared_with"] == "teacher-2-cfg3"
    assert report["threads"] == 1
    full = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(full["episodes"]) == 2

    table = _cli(
        "eval", "distill", "--teacher", teacher, "--student", str(out), "--data", data,
        "--episodes", "1", "--reference-steps", "4", "--no-progress",
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "student-2" in table.output and "PSNR dB" in table.output


def test_plain_eval_still_works_next_to_its_sub_commands(world, tmp_path):
    result = _cli(
        "eval", "--checkpoint", str(world["teacher"]), "--data", str(world["data"]),
        "--episodes", "1", "--steps", "2", "--sheets", "0", "--out", str(tmp_path / "e"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "report.json").read_text())["summary"]["steps"] == 2
    missing = _cli("eval", "--data", str(world["data"]))
    assert missing.exit_code == 2 and "--checkpoint" in missing.output


def test_the_guidance_sweep_reports_every_scale_and_the_best(world, tmp_path):
    result = _cli(
        "eval", "guidance", "--checkpoint", str(world["teacher"]), "--data", str(world["data"]),
        "--episodes", "1", "--steps", "2", "--scales", "1,2.5", "--out", str(tmp_path / "sweep"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.output[result.output.index("{") :])
    assert [r["cfg_scale"] for r in sweep["scales"]] == [1.0, 2.5]
    assert [r["evaluations_per_plan"] for r in sweep["scales"]] == [2, 4]
    assert sweep["best_cfg_scale"] in (1.0, 2.5)
    # one start state cannot show that guidance helps: the unguided teacher is recommended
    assert sweep["guidance_helps"] is False and sweep["recommended_cfg_scale"] == 1.0
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    assert (tmp_path / "sweep" / "cfg2.5" / "report.json").is_file()
    bad = _cli("eval", "guidance", "--checkpoint", "x", "--data", "y", "--scales", "a")
    assert bad.exit_code == 2 and "--scales" in bad.output


def test_the_sign_test_counts_only_the_starts_where_the_arms_disagree():
    same = [True, False, True]
    assert paired_sign_test(same, same) == (0, 0, 1.0)
    assert paired_sign_test([True] * 6 + [False] * 4, [False] * 6 + [False] * 4) == (
        6,
        0,
        pytest.approx(2 / 64),
    )
    wins, losses, p = paired_sign_test([True, True, False, True], [False, False, True, True])
    assert (wins, losses) == (2, 1) and p == pytest.approx(1.0)  # 2:1 is no evidence


def test_the_aimg_command_carries_distill_and_the_eval_sub_commands():
    import subprocess
    import sys

    def aimg(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "aimg", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert "distill" in aimg("--help").stdout
    for sub in ("distill", "guidance"):
        result = aimg("eval", sub, "--help")
        assert result.returncode == 0 and "--data" in result.stdout, result.stderr
    result = aimg("distill", "--help")
    assert result.returncode == 0 and "--teacher" in result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_distil_as_one_with_the_same_global_batch(world, tmp_path, parallel):
    import os
    import subprocess
    import sys

    from aimg.training.checkpointing import load_model_file

    one_config = _config(tmp_path, name="one.yaml")
    two_config = _config(tmp_path, name="two.yaml")
    text = two_config.read_text().replace("batch_size: 2", f"batch_size: 1\n  parallel: {parallel}")
    two_config.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    teacher = str(world["teacher"])

    def run(config, out, processes: int) -> None:
        launcher = [sys.executable, "-m", "aimg"]
        if processes > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            launcher += ["--nproc_per_node", str(processes), "-m", "aimg"]
        command = [*launcher, "distill", "--teacher", teacher, "--config", str(config)]
        command += ["--out", str(out), "--no-progress"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout + result.stderr

    run(two_config, tmp_path / "two", 2)
    run(one_config, tmp_path / "one", 1)
    a = load_model_file(tmp_path / "two" / "checkpoints" / "step_000004")
    b = load_model_file(tmp_path / "one" / "checkpoints" / "step_000004")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)

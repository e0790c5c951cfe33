"""Training the real world action model: overfitting, exact resume, config errors, the CLI."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import typer
from training_fixtures import write_synthetic_episodes, write_tiny_preset
from typer.testing import CliRunner

from aimg.config import ConfigError, from_dict
from aimg.model.build import build_latent_codec, build_model, build_text_encoder
from aimg.model.checkpoint import load_checkpoint
from aimg.model.config import ModelConfig
from aimg.training.checkpointing import load_model_file
from aimg.training.cli import evaluate, train
from aimg.training.config import TaskMixture, load_training_preset
from aimg.training.dataset import EpisodeClipDataset, find_episodes
from aimg.training.distributed import DistContext
from aimg.training.evaluate import (
    consensus_draw,
    score_episode,
    summarise,
    target_cube_position,
)
from aimg.training.objective import WorldActionObjective
from aimg.training.run import RunError, build_trainer, run_training

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_episodes(root, 3, frames=12)
    return root


@pytest.fixture
def preset_path(tmp_path, data_root):
    return write_tiny_preset(tmp_path / "tiny.yaml", data_root, tmp_path / "run")


def _cli(*args: str):
    app = typer.Typer()
    app.command("train")(train)
    app.command("eval")(evaluate)
    return CliRunner().invoke(app, list(args))


def test_a_tiny_model_overfits_one_batch(preset_path):
    preset = load_training_preset(preset_path)
    mcfg = from_dict(
        ModelConfig,
        {
            "name": "overfit",
            "frames": 2,
            "height": 16,
            "width": 16,
            "transformer": {
                "num_layers": 1,
                "num_heads": 4,
                "head_dim": 16,
                "ffn_dim": 64,
                "text_dim": 16,
                "freq_dim": 16,
                "cam_pool": [4, 2, 2],
                "timestep_mode": "per_token",
            },
            "codec": {"kind": "pixel", "spatial_factor": 2, "temporal_factor": 1},
            "text": {"kind": "builtin", "max_length": 8},
        },
    )
    only_joint = TaskMixture(video_only=0.0, i2va=1.0, first_view_video_given=0.0, v2a=0.0)
    dcfg = dataclasses.replace(preset.data, tasks=only_joint, text_dropout=0.0)
    dataset = EpisodeClipDataset(find_episodes(dcfg.roots), dcfg, 2, 16, 16)
    batch = torch.utils.data.default_collate([dataset[(0, 1)]])
    torch.manual_seed(0)
    model = build_model(mcfg)
    objective = WorldActionObjective(
        mcfg, dcfg, preset.train, build_latent_codec(mcfg), build_text_encoder(mcfg), CPU.device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        loss, _ = objective(model, batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_resume_of_the_world_model_continues_bit_exactly(preset_path, tmp_path):
    preset = load_training_preset(preset_path)
    straight = build_trainer(
        dataclasses.replace(
            preset, train=dataclasses.replace(preset.train, run_dir=tmp_path / "a")
        ),
        CPU,
        progress=False,
    )
    straight.fit(4)
    b = dataclasses.replace(preset, train=dataclasses.replace(preset.train, run_dir=tmp_path / "b"))
    build_trainer(b, CPU, progress=False).fit(2)
    resumed = build_trainer(b, CPU, progress=False)
    assert resumed.resume_latest() and resumed.step == 2
    resumed.fit(4)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_checkpoints_load_as_model_checkpoints_with_the_training_sections(preset_path):
    preset = load_training_preset(preset_path)
    summary = run_training(preset, resume=False, progress=False)
    assert summary["step"] == 6
    loaded = load_checkpoint(summary["checkpoint"])
    assert loaded.model_config == preset.model
    assert loaded.extra["data"]["stride"] == 2
    assert loaded.extra["data_fps"] == pytest.approx(10.0)  # the fixtures record at 10 Hz
    assert loaded.extra["action_dt_s"] == pytest.approx(0.2)
    saved = load_model_file(preset.train.run_dir / "checkpoints" / "step_000006")
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[name])


def test_training_again_into_a_used_run_dir_needs_resume(preset_path):
    preset = load_training_preset(preset_path)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=3))
    run_training(preset, resume=False, progress=False)
    with pytest.raises(RunError, match="--resume"):
        run_training(preset, resume=False, progress=False)
    more = dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=4))
    assert run_training(more, resume=True, progress=False)["start_step"] == 3


def test_cli_trains_then_resumes_and_prints_a_summary(preset_path, tmp_path):
    result = _cli("train", "--config", str(preset_path), "--max-steps", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["step"] == 3 and summary["start_step"] == 0
    result = _cli("train", "--config", str(preset_path), "--max-steps", "4", "--resume")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert (summary["start_step"], summary["step"]) == (3, 4)
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_unknown_config_key_is_named(preset_path):
    text = preset_path.read_text().replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  learning_rate: 3")
    preset_path.write_text(text)
    with pytest.raises(ConfigError, match="learning_rate"):
        load_training_preset(preset_path)
    result = _cli("train", "--config", str(preset_path))
    assert result.exit_code == 2
    assert "learning_rate" in result.output


def test_invalid_value_is_named(preset_path):
    preset_path.write_text(preset_path.read_text().replace("batch_size: 2", "batch_size: 0"))
    with pytest.raises(ConfigError, match="batch_size"):
        load_training_preset(preset_path)


def test_missing_train_section_is_named(tmp_path, preset_path):
    text = preset_path.read_text()
    preset_path.write_text(text[: text.index("train:")])
    with pytest.raises(ConfigError, match="train"):
        load_training_preset(preset_path)


def test_missing_data_says_how_to_collect(preset_path, tmp_path):
    result = _cli("train", "--config", str(preset_path), "--data", str(tmp_path / "reach"))
    assert result.exit_code == 2
    assert "no episodes under" in result.output and "aimg sim collect" in result.output


def test_eval_writes_a_report_and_contact_sheets(preset_path, data_root, tmp_path):
    preset = load_training_preset(preset_path)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=1))
    run_training(preset, resume=False, progress=False)
    out = tmp_path / "eval"
    result = _cli(
        "eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data_root),
        "--episodes", "2", "--sheets", "1", "--out", str(out), "--steps", "2",
        "--cfg", "1.5", "--samples", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["episodes"] == 2
    summary = report["summary"]
    assert (summary["steps"], summary["cfg_scale"], summary["samples"]) == (2, 1.5, 2)
    assert all(r["draw"] in (0, 1) for r in report["episodes"])
    assert (out / "sheet_000.png").is_file() and not (out / "sheet_001.png").exists()
    assert all(r["decoded_frames"] >= 0 for r in report["episodes"])


def test_denoise_report_gives_errors_per_noise_level_and_modality(preset_path, data_root, tmp_path):
    preset = load_training_preset(preset_path)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=1))
    run_training(preset, resume=False, progress=False)
    result = _cli(
        "eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data_root),
        "--episodes", "2", "--denoise",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["episodes"] == 2
    assert [level["sigma"] for level in report["levels"]] == [1.0, 0.9, 0.6, 0.3]
    for entry in [report["flat"], *report["levels"]]:
        assert set(entry) >= {"video", "action"}
        assert all(np.isfinite(entry[m]) and entry[m] >= 0 for m in ("video", "action"))
    # an untrained model at σ = 1 knows nothing: far from a perfect (zero) reconstruction
    assert report["levels"][0]["action"] > 0.1 * report["flat"]["action"]


def test_scores_compare_the_final_decoded_position_with_the_expert():
    truth = torch.zeros(3, 7).numpy()
    truth[-1, :3] = [0.4, 0.0, 0.055]
    decoded = truth.copy()
    decoded[-1, :3] += [0.02, 0.0, 0.0]
    objects = [
        {"colour": "blue", "position": [0.3, 0.2, 0.02]},
        {"colour": "red", "position": [0.41, 0.0, 0.02]},
    ]
    meta = {"scene": {"target": "red", "objects": objects}}
    result = score_episode(decoded, truth, meta, threshold=0.03)
    assert result["success"] and result["final_error_m"] == pytest.approx(0.02, abs=1e-6)
    assert result["cube_xy_error_m"] == pytest.approx(0.01, abs=1e-6)
    assert result["nearest_cube"] == "red" and result["nearest_cube_is_target"]
    assert not score_episode(decoded, truth, meta, threshold=0.01)["success"]
    # a plan that ends at the other cube: the wrong cube, not nowhere
    decoded[-1, :3] = [0.31, 0.2, 0.055]
    wrong = score_episode(decoded, truth, meta, threshold=0.03)
    assert wrong["nearest_cube"] == "blue" and not wrong["nearest_cube_is_target"]
    assert wrong["nearest_cube_xy_m"] == pytest.approx(0.01, abs=1e-6)


def test_consensus_draw_is_the_medoid_of_the_final_positions():
    def plan(x: float, y: float) -> np.ndarray:
        actions = np.zeros((3, 7))
        actions[-1, :3] = [x, y, 0.05]
        return actions

    failed = np.full((3, 7), np.nan)
    draws = [plan(0.40, 0.00), plan(0.90, 0.50), failed, plan(0.44, 0.00), plan(0.42, 0.00)]
    assert consensus_draw(draws) == 4  # the middle of the cluster, not the outlier
    assert consensus_draw([failed, plan(0.4, 0.0)]) == 1
    assert consensus_draw([failed]) == 0


def test_summary_counts_both_readings_of_success():
    near = {"nearest_cube_is_target": True, "nearest_cube_xy_m": 0.01}
    results = [
        {"success": True, "final_error_m": 0.02, "cube_xy_error_m": 0.01, **near},
        {"success": False, "final_error_m": 0.05, "cube_xy_error_m": 0.02, **near},
        {"success": False, "final_error_m": 0.2, "cube_xy_error_m": 0.2, "nearest_cube_xy_m": 0.05}
        | {"nearest_cube_is_target": False},
        {"success": False, "final_error_m": None},
    ]
    summary = summarise(results, threshold=0.03)
    assert summary["success_rate"] == pytest.approx(1 / 4)
    assert summary["cube_xy_success_rate"] == pytest.approx(2 / 4)
    assert summary["decode_failures"] == 1
    assert summary["nearest_cube_is_target_rate"] == pytest.approx(2 / 4)
    assert summary["nearest_cube_xy_median_m"] == pytest.approx(0.01)


def test_target_cube_prefers_the_final_object_position():
    meta = {
        "scene": {
            "target": "red",
            "objects": [
                {"colour": "green", "position": [0.3, 0.1, 0.02]},
                {"colour": "red", "position": [0.4, 0.0, 0.02]},
            ],
        },
        "final_object_positions": {"red": [0.42, 0.01, 0.02]},
    }
    assert target_cube_position(meta).tolist() == [0.42, 0.01, 0.02]
    del meta["final_object_positions"]
    assert target_cube_position(meta).tolist() == [0.4, 0.0, 0.02]  # the named one, not the first
    assert target_cube_position({}) is None


def test_activation_checkpointing_does_not_change_the_update(preset_path, tmp_path):
    preset = load_training_preset(preset_path)
    params = []
    for mode in ("off", "on"):
        train = dataclasses.replace(
            preset.train, run_dir=tmp_path / mode, activation_checkpointing=mode
        )
        trainer = build_trainer(dataclasses.replace(preset, train=train), CPU, progress=False)
        trainer.fit(2)
        assert trainer.model.gradient_checkpointing is (mode == "on")
        params.append(trainer.model.state_dict())
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], rtol=1e-5, atol=1e-6)


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(preset_path, tmp_path):
    command = [sys.executable, "-m", "aimg", "train", "--config", str(preset_path)]
    command += ["--max-steps", "100000", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(out[out.index("{") :])
    assert 2 <= summary["step"] < 100000
    assert summary["checkpoint"].endswith(f"step_{summary['step']:06d}")


def test_ground_truth_action_images_score_as_successes(preset_path):
    from aimg.codec.decode import decode
    from aimg.training.objective import batch_cameras

    preset = load_training_preset(preset_path)
    dcfg = dataclasses.replace(preset.data, start_at_zero=1.0, max_start_fraction=0.0)
    dataset = EpisodeClipDataset(find_episodes(dcfg.roots), dcfg, 5, 32, 32)
    for index in range(len(dataset)):
        batch = torch.utils.data.default_collate([dataset[(index, index)]])
        images = ((batch["action_images"][0] + 1) / 2).permute(2, 0, 3, 4, 1).numpy()
        decoded = decode(images, batch_cameras(batch, 0))
        truth = batch["poses"][0].numpy()
        result = score_episode(decoded.actions, truth, {}, threshold=0.03)
        assert result["success"] and result["final_error_m"] < 0.005


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(preset_path, tmp_path):
    from aimg.training.evaluate import resolve_checkpoint

    preset = load_training_preset(preset_path)
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=1))
    run_training(preset, resume=False, progress=False)
    source = resolve_checkpoint(tmp_path / "run")
    weights = load_checkpoint(source).model.state_dict()
    train = dataclasses.replace(
        preset.train, run_dir=tmp_path / "again", init_from=source, seed=preset.train.seed + 1
    )
    trainer = build_trainer(dataclasses.replace(preset, train=train), CPU, progress=False)
    started = trainer.model.state_dict()
    for name, tensor in weights.items():
        torch.testing.assert_close(started[name], tensor)
    other = dataclasses.replace(preset.model, blob_sigma=preset.model.blob_sigma * 2)
    with pytest.raises(RunError, match=r"differs from the preset's in \['blob_sigma'\]"):
        build_trainer(dataclasses.replace(preset, model=other, train=train), CPU, progress=False)

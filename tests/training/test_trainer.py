"""The generic trainer: optimisation, checkpoints, exact resume, DDP parity, logging."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from training_toy import ToyDataset, make_toy_model, toy_config, toy_objective

from aimg.training import checkpointing as ckpt
from aimg.training.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from aimg.training.trainer import Trainer, lr_factor

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _trainer(run_dir, ctx=CPU, **overrides) -> Trainer:
    cfg = toy_config(run_dir, **overrides)
    return Trainer(make_toy_model(), toy_objective, ToyDataset(), cfg, ctx, progress=False)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_training_reduces_the_loss(tmp_path):
    trainer = _trainer(tmp_path, max_steps=60, checkpoint_every=60)
    first = trainer.train_step(next(iter(trainer._loader())))["loss"]
    last = trainer.fit()["loss"]
    assert last < first / 5


CPU_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not CPU_BF16, reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_autocast_on_a_cpu_with_native_bf16_trains(tmp_path):
    seen = []

    def objective(model, batch, step):
        out = model(batch["x"])
        seen.append(out.dtype)
        return ((out.float() - batch["y"]) ** 2).mean(), {}

    cfg = toy_config(tmp_path, max_steps=60, checkpoint_every=60, precision="bf16")
    trainer = Trainer(make_toy_model(), objective, ToyDataset(), cfg, CPU, progress=False)
    first = trainer.train_step(next(iter(trainer._loader())))["loss"]
    last = trainer.fit()["loss"]
    assert set(seen) == {torch.bfloat16}
    assert last < first / 5
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.skipif(CPU_BF16, reason="this CPU has native bf16")
def test_bf16_on_a_cpu_without_native_bf16_is_refused(tmp_path):
    with pytest.raises(ValueError, match="native bf16"):
        _trainer(tmp_path, precision="bf16")


@pytest.mark.slow  # inductor compiles C++ for the toy model (tens of seconds)
def test_a_compiled_step_trains_and_checkpoints_the_plain_module(tmp_path):
    trainer = _trainer(tmp_path, max_steps=40, checkpoint_every=40, compile=True)
    first = trainer.train_step(next(iter(trainer._loader())))["loss"]
    last = trainer.fit()["loss"]
    assert last < first / 5
    saved = ckpt.load_model_file(ckpt.latest_checkpoint(trainer.checkpoint_dir))
    assert set(saved) == set(make_toy_model().state_dict())  # no "_orig_mod." prefixes
    resumed = _trainer(tmp_path, max_steps=40, checkpoint_every=40, compile=True)
    assert resumed.resume_latest() and resumed.step == 40


def test_resume_continues_bit_exactly(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit(6)

    first = _trainer(tmp_path / "b")
    first.fit(3)
    resumed = _trainer(tmp_path / "b")
    assert resumed.resume_latest()
    assert resumed.step == 3
    resumed.fit(6)

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = straight.optimizer.state_dict()["state"]
    sb = resumed.optimizer.state_dict()["state"]
    for key in sa:
        assert torch.equal(sa[key]["exp_avg_sq"], sb[key]["exp_avg_sq"])


def test_resume_restores_python_numpy_and_torch_rng(tmp_path):
    import random

    import numpy as np

    trainer = _trainer(tmp_path)
    trainer.fit(3)

    def draws() -> tuple[float, float, float]:
        return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002

    expected = draws()
    resumed = _trainer(tmp_path)
    resumed.resume_latest()
    assert draws() == expected


def test_checkpoints_are_pruned_and_latest_points_to_the_newest(tmp_path):
    trainer = _trainer(tmp_path, max_steps=9, checkpoint_every=3, keep_checkpoints=2)
    trainer.fit()
    checkpoints = tmp_path / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["latest", "step_000006", "step_000009"]
    assert (checkpoints / "latest").read_text().strip() == "step_000009"
    step_dir = checkpoints / "step_000009"
    assert sorted(p.name for p in step_dir.iterdir()) == ["model.safetensors", "trainer_state.pt"]


def test_trainer_state_loads_without_unpickling_code(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit(3)
    state = torch.load(
        tmp_path / "checkpoints" / "step_000003" / ckpt.STATE_FILE, weights_only=True
    )
    assert state["step"] == 3
    assert len(state["rng"]) == 1


def test_incomplete_latest_checkpoint_is_a_clear_error(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_000005").mkdir(parents=True)
    (checkpoints / "latest").write_text("step_000005\n")
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        _trainer(tmp_path).resume_latest()


def test_metrics_are_logged_to_jsonl_and_tensorboard(tmp_path):
    _trainer(tmp_path).fit(4)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "step_time_s"} <= rows[0].keys()
    events = [p.name for p in (tmp_path / "tensorboard").iterdir()]
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_warmup_is_linear_then_constant(tmp_path):
    factor = lr_factor(toy_config(tmp_path, warmup_steps=3, max_steps=10))
    assert [factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_schedule_decays_to_the_floor(tmp_path):
    cfg = toy_config(tmp_path, warmup_steps=0, max_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    factor = lr_factor(cfg)
    assert factor(0) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(0.1)


# -- DDP parity ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, run_dir: str, parallel: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        first = _trainer(run_dir, ctx=ctx, batch_size=2, parallel=parallel)
        wrapped = type(next(first.model.parameters())).__name__ == "DTensor"
        assert wrapped == (parallel == "fsdp")
        first.fit(3)
        resumed = _trainer(run_dir, ctx=ctx, batch_size=2, parallel=parallel)
        assert resumed.resume_latest() and resumed.step == 3
        resumed.fit(6)
        # Leave together, as `aimg train` does: a rank that tears down gloo while the other
        # still finishes its last checkpoint collective aborts on a loaded machine.
        barrier(ctx)
    finally:
        shutdown_distributed()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_with_resume_match_one_process_with_the_same_global_batch(tmp_path, parallel):
    single = _trainer(tmp_path / "one", batch_size=4)
    single.fit(6)
    run_dir = str(tmp_path / "two")
    mp.spawn(_worker, args=(2, _free_port(), run_dir, parallel), nprocs=2, join=True)
    saved = ckpt.load_model_file(tmp_path / "two" / "checkpoints" / "step_000006")
    for name, value in _params(single).items():
        torch.testing.assert_close(saved[name], value, rtol=1e-5, atol=1e-6)


def test_worker_processes_feed_exactly_the_same_batches(tmp_path):
    inline = _trainer(tmp_path / "inline")
    inline.fit(4)
    cfg = toy_config(tmp_path / "workers")
    workers = Trainer(
        make_toy_model(), toy_objective, ToyDataset(), cfg, CPU, num_workers=1, progress=False
    )
    workers.fit(4)
    for name, value in _params(inline).items():
        assert torch.equal(value, _params(workers)[name]), name

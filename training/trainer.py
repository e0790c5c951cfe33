"""The training loop: AdamW, warmup, clipping, autocast, checkpoints, resume, logging.

Model-agnostic: it optimises any `nn.Module` under an `Objective` (batch -> scalar loss), so
the same loop trains world action models and the tiny modules of the tests. One process or
`torchrun` (see `aimg.training.distributed`).
"""

from __future__ import annotations

import functools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from aimg.training import checkpointing as ckpt
from aimg.training.config import TrainConfig
from aimg.training.distributed import (
    DistContext,
    all_gather_objects,
    any_rank,
    barrier,
    enable_activation_checkpointing,
    set_cpu_threads,
    unwrap_model,
    wrap_model,
)
from aimg.training.order import StepBatchSampler


class Objective(Protocol):
    """Computes the training loss of one batch; `step` seeds step-level randomness."""

    def __call__(
        self, model: nn.Module, batch: Any, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of `cfg.lr` at an optimiser step: linear warmup, then constant or cosine."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _init_worker(threads: int, worker_id: int) -> None:
    set_cpu_threads(threads)


def check_cpu_bf16() -> None:
    """bf16 autocast pays on CPUs with native bf16 (AVX512-BF16 or AMX: a sim-tiny step took
    0.27 s instead of 0.44 s on 2 Zen 4 cores); elsewhere it is emulated and slower, so refuse."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError(
            "train.precision 'bf16' on CPU needs native bf16 (AVX512-BF16 or AMX), which this "
            "CPU lacks; use precision 'auto' (fp32 here)"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


class Trainer:
    """Runs `max_steps` optimiser steps of `objective` over `dataset`, resumably.

    `dataset[(index, seed)]` gives one sample (see `aimg.training.order`); batches are made by
    `collate_fn` (torch's default when None). Checkpoints go to `<run_dir>/checkpoints`,
    TensorBoard scalars to `<run_dir>/tensorboard`, and every logged step also to
    `<run_dir>/metrics.jsonl`.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        dataset: torch.utils.data.Dataset,
        cfg: TrainConfig,
        ctx: DistContext,
        run_dir: Path | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        save_model: ckpt.ModelSaver = ckpt.default_model_saver,
        progress: bool = True,
        progress_desc: str = "train",
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        self.objective = objective
        self.dataset = dataset
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.save_model = save_model
        self.progress = progress
        self.progress_desc = progress_desc
        self.step = 0
        self._stop_requested = False

        seed_everything(cfg.seed + ctx.rank)
        on_cuda = ctx.device.type == "cuda"
        if not on_cuda:
            set_cpu_threads(cfg.cpu_threads)
        self.autocast_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_cuda)
        self.autocast_device = ctx.device.type
        if self.autocast_bf16 and not on_cuda:
            check_cpu_bf16()
        ac = cfg.activation_checkpointing
        if ac == "on" or (ac == "auto" and on_cuda):
            enable_activation_checkpointing(model)
        self.model = wrap_model(model, ctx, cfg.parallel)
        # compiled for the step only: checkpoints keep the plain module's parameter names
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg))

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        rngs = all_gather_objects(ckpt.rng_state(), self.ctx)
        path = None
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "world_size": self.ctx.world_size,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,
                "data": {"next_step": self.step, "seed": self.cfg.seed},
            }
            path = ckpt.write_checkpoint(
                self.checkpoint_dir,
                self.step,
                unwrap_model(self.model),
                model_state,
                state,
                self.cfg.keep_checkpoints,
                self.save_model,
            )
        barrier(self.ctx)
        return path

    def load(self, directory: Path) -> None:
        """Restore model, optimiser, scheduler, step and this rank's RNG from a step directory."""
        state = ckpt.read_trainer_state(directory)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, ckpt.load_model_file(directory), options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if state["world_size"] == self.ctx.world_size:
            ckpt.set_rng_state(state["rng"][self.ctx.rank])
        else:
            seed_everything(self.cfg.seed + self.ctx.rank + self.step)
        barrier(self.ctx)

    def resume_latest(self) -> bool:
        """Load the run's latest checkpoint if there is one; returns whether it did."""
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return False
        self.load(latest)
        return True

    # -- loop --------------------------------------------------------------------------------

    def _loader(self) -> torch.utils.data.DataLoader:
        """Batches from this rank's step onwards. Workers are spawned, not forked: torch and
        numba share GNU OpenMP, which aborts a forked child once the parent has used it."""
        sampler = StepBatchSampler(
            len(self.dataset),
            self.cfg.batch_size,
            self.cfg.seed,
            self.ctx.rank,
            self.ctx.world_size,
            start_step=self.step,
        )
        workers: dict[str, Any] = {}
        if self.num_workers > 0:
            workers = {
                "multiprocessing_context": "spawn",
                "worker_init_fn": functools.partial(_init_worker, self.cfg.cpu_threads),
                "persistent_workers": True,
            }
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            **workers,
        )

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on one batch; returns rank-averaged metrics."""
        autocast = (
            torch.autocast(self.autocast_device, dtype=torch.bfloat16)
            if self.autocast_bf16
            else nullcontext()
        )
        with autocast:
            loss, extra = self.objective(self.step_model, batch, self.step)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        values = torch.tensor([loss.detach().float().item(), *extra.values()], dtype=torch.float64)
        if self.ctx.distributed:
            values = values.to(self.ctx.device)
            torch.distributed.all_reduce(values)
            values = values.cpu() / self.ctx.world_size
        metrics = {"loss": float(values[0]), "lr": lr, "grad_norm": float(grad_norm)}
        metrics.update({k: float(v) for k, v in zip(extra, values[1:].tolist(), strict=True)})
        return metrics

    def fit(self, max_steps: int | None = None) -> dict[str, float]:
        """Train until step `max_steps` (default cfg.max_steps); checkpoint on the way and at
        the end, and on SIGINT/SIGTERM (then return early). Returns the last metrics."""
        max_steps = self.cfg.max_steps if max_steps is None else max_steps
        writer = self._writer() if self.ctx.is_main else None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)
            }
        metrics: dict[str, float] = {}
        bar = None
        if self.ctx.is_main and self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=max_steps, initial=self.step, desc=self.progress_desc, dynamic_ncols=True
            )
        try:
            self.model.train()
            batches = iter(self._loader())
            while self.step < max_steps:
                start = time.perf_counter()
                metrics = self.train_step(next(batches))
                metrics["step_time_s"] = time.perf_counter() - start
                self.step += 1
                if writer is not None and (
                    self.step % self.cfg.log_every == 0 or self.step == max_steps
                ):
                    self._log(writer, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                stop = any_rank(self._stop_requested, self.ctx)
                if stop or self.step % self.cfg.checkpoint_every == 0 or self.step == max_steps:
                    self.save()
                if stop:
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return metrics

    def _writer(self) -> Any:
        from aimg.optional import require

        require("tensorboard", "train")
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, writer: Any, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            writer.add_scalar(f"train/{name}", value, self.step)
        writer.flush()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")

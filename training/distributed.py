"""Process groups and model wrapping: DDP on gloo for CPUs, FSDP2 per transformer block on GPUs.

Launch with `torchrun --nproc_per_node N ...`; the environment variables it sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are all this module reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) or run as one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    launched = "RANK" in os.environ  # torchrun sets it, even for one process
    if (launched or world_size > 1) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistContext(rank, world_size, local_rank, dev)


def set_cpu_threads(threads: int) -> None:
    """Cap torch's and numba's CPU threads (they share one OpenMP runtime); 0 = leave as is."""
    if threads <= 0:
        return
    import numba

    # numba first: starting its OpenMP layer resets the shared thread count
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a model (diffusers names them `blocks`)."""
    for name in ("blocks", "transformer_blocks", "layers"):
        for module in (model, getattr(model, "transformer", None)):
            blocks = getattr(module, name, None) if module is not None else None
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return list(blocks)
    return []


def enable_activation_checkpointing(model: nn.Module) -> bool:
    """Recompute block activations in the backward pass (diffusers' switch when present)."""
    if getattr(model, "_supports_gradient_checkpointing", False) and hasattr(
        model, "enable_gradient_checkpointing"
    ):
        model.enable_gradient_checkpointing()
        return True
    blocks = transformer_blocks(model)
    if not blocks:
        return False
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    block_types = tuple({type(b) for b in blocks})
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, block_types))
    return True


def wrap_model(model: nn.Module, ctx: DistContext, parallel: str) -> nn.Module:
    """Move to the device and wrap for data parallelism.

    `parallel`: 'ddp', 'fsdp' or 'auto' (FSDP2 on CUDA, DDP on CPU). FSDP2 shards each
    transformer block, then the root, whenever a process group exists (torchrun, any number of
    processes; it also runs on CPU with gloo, which is how the tests check it). DDP is used
    only with more than one process.
    """
    model = model.to(ctx.device)
    if parallel == "auto":
        parallel = "fsdp" if ctx.device.type == "cuda" else "ddp"
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.fsdp import fully_shard

        blocks = transformer_blocks(model)
        if not blocks:
            raise ValueError(f"{type(model).__name__} has no transformer blocks to shard")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user model inside a DDP wrapper (FSDP2 shards in place: returned as is)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """`obj` from every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True if `flag` is true on any rank (e.g. a stop signal seen by one process)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)

"""Many processes through PyTorch's own engine: torchrun, a process group, DistributedDataParallel.

A run is launched as ``torchrun --nproc_per_node N -m pyrodiff train --distributed …``;
:func:`setup_distributed` reads torchrun's environment and joins the process group (gloo on
CPU, NCCL on GPU), :func:`wrap_module` wraps the ELBO module in DistributedDataParallel, and
:func:`shard_indices` / :func:`rank_seed` give each rank its own data and random stream.

**Sums, not means.** Pyro's ELBO losses (and :class:`~pyrodiff.infer.DiffusionELBO`) are sums
over the batch. DistributedDataParallel averages gradients over the W ranks by default, which
would give 1/W times the gradient of the combined batch. :func:`wrap_module` registers a
communication hook that all-reduces with a *sum* instead: Σ_r ∇ Σ_{n ∈ shard r} ℓ_n is exactly
∇ Σ_{n ∈ combined batch} ℓ_n, so W processes with batch B each take the same step as one
process with batch W·B (up to the order of floating-point additions). Each rank's loss value is
still its own shard's sum.
"""

from __future__ import annotations

import enum
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, DeviceError

__all__ = [
    "Backend",
    "DistributedContext",
    "cleanup_distributed",
    "rank_seed",
    "setup_distributed",
    "shard_indices",
    "wrap_module",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

RANK_SEED_STRIDE = 1_000_003
"""Rank r uses seed + r · stride: distinct streams, reproducible per rank."""


class Backend(enum.Enum):
    """The collective-communication library of the process group."""

    GLOO = "gloo"
    """CPU tensors (and a fallback for GPUs)."""
    NCCL = "nccl"
    """CUDA tensors, one GPU per process."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a distributed run.

    Attributes:
        rank: this process's index, 0 … world_size − 1.
        world_size: the number of processes.
        device: the device this process computes on (``cuda:LOCAL_RANK`` with NCCL, else CPU).
        is_main: whether this is rank 0, the only rank that writes files and prints.
    """

    rank: int
    world_size: int
    device: torch.device
    is_main: bool

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object; e.g. a run folder's name)."""
        if self.world_size == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()


def setup_distributed(backend: Backend | None = None) -> DistributedContext:
    """Join the process group described by torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The
    backend is NCCL when CUDA is available and gloo otherwise, unless given. With NCCL each
    process takes GPU ``LOCAL_RANK``. Calling it again in the same process returns the context
    of the group already joined.

    Raises:
        ConfigError: the environment variables are missing (not launched by torchrun) or the
            backend is not a :class:`Backend`.
        DeviceError: NCCL was asked for without CUDA, or there are fewer GPUs than local ranks.
    """
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(
            f"a distributed run needs torchrun's environment ({', '.join(missing)} not set); "
            "launch it as: torchrun --nproc_per_node N -m pyrodiff train --distributed …"
        )
    if backend is None:
        backend = Backend.NCCL if torch.cuda.is_available() else Backend.GLOO
    if not isinstance(backend, Backend):
        raise ConfigError(f"backend must be a Backend (GLOO or NCCL), got {backend!r}")
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend is Backend.NCCL:
        if not torch.cuda.is_available():
            raise DeviceError("the NCCL backend needs CUDA, which is not available here")
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"local rank {local_rank} needs a GPU of its own, but only "
                f"{torch.cuda.device_count()} are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend.value, init_method="env://", rank=rank, world_size=world_size
        )
    return DistributedContext(rank, world_size, device, is_main=rank == 0)


def cleanup_distributed(*, synchronize: bool = True) -> None:
    """Leave the process group (a no-op outside one).

    With ``synchronize`` (the default) the ranks first meet at a barrier, so that no rank shuts
    its connections down while a peer is still receiving from it: the source of a broadcast
    returns as soon as its sends are buffered, and a peer that is still reading them when the
    source's connections close can bring a process down. Pass ``synchronize=False`` on an
    error path, where peers may never arrive at the barrier.
    """
    if not dist.is_initialized():
        return
    if synchronize and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def _sum_allreduce_hook(process_group, bucket):  # unannotated: DDP checks hooks' annotations
    group = process_group if process_group is not None else dist.group.WORLD
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_module(
    module: nn.Module, ctx: DistributedContext, find_unused_parameters: bool = False
) -> DistributedDataParallel:
    """``module`` (e.g. ``DiffusionELBO()(model, guide)``) in DistributedDataParallel, with
    gradients summed over ranks so that they equal the combined batch's (see the module doc).

    The module must already be on ``ctx.device``. Buffers are not re-broadcast every step: pyrodiff's buffers are constants fixed at construction
    (schedule tables, time-embedding frequencies), identical on every rank after the initial
    synchronisation that DistributedDataParallel does when it is built.
    """
    if not isinstance(ctx, DistributedContext):
        raise ConfigError(f"ctx must be a DistributedContext, got {type(ctx).__name__}")
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # newer torch renames the option; both still synchronise buffers once, at construction
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    ddp = DistributedDataParallel(
        module,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        **no_buffer_sync,
    )
    ddp.register_comm_hook(None, _sum_allreduce_hook)
    return ddp


def shard_indices(num_data: int, rank: int, world_size: int) -> Tensor:
    """The indices of rank ``rank``'s shard of ``num_data`` items: rank, rank + W, rank + 2W, …

    The shards are disjoint and together cover every index once; their sizes differ by at most
    one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if num_data < world_size:
        raise ConfigError(f"{num_data} data cannot give each of {world_size} ranks a shard")
    return torch.arange(rank, num_data, world_size)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` in a run seeded with ``seed``: seed + rank · RANK_SEED_STRIDE."""
    return int(seed) + RANK_SEED_STRIDE * int(rank)

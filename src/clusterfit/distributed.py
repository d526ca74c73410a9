"""The one seam to ``torch.distributed``.

Every function here is a no-op (or the identity) when the process group is not initialised or has
one member, so the same code runs under ``python`` and under ``torchrun``. Nothing else in the
package imports ``torch.distributed``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one member is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of processes in the group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank; 0 without a group."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the process that writes artifacts and prints."""
    return get_rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Returns True when a group is (now) initialised. ``backend`` defaults to NCCL for CUDA tensors
    and gloo for CPU tensors (``cuda:nccl,cpu:gloo``) when CUDA is available, so that the small
    CPU tensors of the stages (loss totals, flags) reduce beside NCCL's GPU collectives; ``gloo``
    otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend:  # (a scheduler may show each process only its own GPU)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it. Identity in one process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s ``tensor`` to every rank, in place; returns it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate (along dim 0) the tensors of all ranks, which may differ in length."""
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def barrier() -> None:
    """Wait for every rank; no-op in one process."""
    if is_distributed():
        dist.barrier()


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` owns (blocks differ in size by <= 1)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))

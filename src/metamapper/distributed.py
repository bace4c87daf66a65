"""Distributed meta-training and evaluation on ``torch.distributed`` (launch with ``torchrun``).

The same ``metamapper train ...`` command runs unchanged under
``torchrun --nproc_per_node N``: each rank takes a disjoint share of every meta-batch's tasks
(rank ``r`` takes tasks ``r, r + N, ...``), the mapper's gradients are averaged across ranks with
one all-reduce of a flattened buffer, every rank takes the same optimizer step, and rank 0 alone
writes checkpoints and logs.

Devices: with ``runtime.device`` ``auto`` or ``cuda``, rank ``r`` of a machine runs on
``cuda:LOCAL_RANK`` (``torch.cuda.set_device`` before the process group is made) and the backend
is NCCL, whose collectives take tensors on that GPU; on CPU (or ``cpu`` asked for explicitly, even
where GPUs exist) the backend is Gloo and the collectives' tensors stay on the CPU.

Why an explicit all-reduce rather than DDP: the mapper has a few million parameters (one bucket
anyway) and MAML evaluates it functionally (``functional_call`` with per-task parameter dicts),
which DDP's forward hooks do not see; one flat all-reduce after ``backward`` is simple and exact.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from metamapper.device import resolve_device, setup_device

T = TypeVar("T")


def init_from_env(device: str | torch.device | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    Args:
        device: the run's device spec (``runtime.device``; None: ``auto``). A CUDA device
            becomes this process's current device and the backend is NCCL; otherwise Gloo.

    Returns ``(rank, world_size)``; ``(0, 1)`` when not launched distributed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dev = setup_device(resolve_device(device))  # cuda:LOCAL_RANK under auto / cuda
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("METAMAPPER_DIST_TIMEOUT", "600")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _comm_device() -> torch.device:
    """Where the backend's collectives take their tensors: this rank's GPU for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's disjoint share: ``items[rank::world]``."""
    return list(items[rank::world])


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average ``.grad`` across ranks in place (one flattened all-reduce)."""
    rank, world = rank_world()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # on the parameters' device
    buf = flat.to(_comm_device())  # a no-op when the gradients already live there
    dist.all_reduce(buf)
    flat = buf.to(flat.device) / world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks skip an update together)."""
    _, world = rank_world()
    if world == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=_comm_device())
    dist.all_reduce(t)
    return bool(t.item() == 0)


def mean_across(value: float) -> float:
    _, world = rank_world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item() / world)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        dev = _comm_device()
        if dev.type == "cuda":  # NCCL's barrier runs on a GPU: name this rank's, not a guess
            dist.barrier(device_ids=[dev.index])
        else:
            dist.barrier()


def shutdown() -> None:
    """Leave the process group once every rank is done (a no-op outside one). A rank that exits
    with its group alive can take a peer down with it: Gloo's connections close under the
    peer's feet and it aborts (exit -6), even after the last collective."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def any_flag(flag: bool) -> bool:
    """Whether ``flag`` holds on at least one rank (e.g. a stop signal)."""
    return not all_true(not flag)


def fault_hook(rank: int, step: int) -> None:
    """Test hook: ``METAMAPPER_TEST_KILL=RANK:STEP`` makes that rank die abruptly after that
    update (how the tests check that one dead rank fails the whole job cleanly)."""
    spec = os.environ.get("METAMAPPER_TEST_KILL")
    if spec and spec == f"{rank}:{step}":
        os._exit(17)

"""Multi-process training under ``torchrun``: DistributedDataParallel, one shard of each batch per rank.

``torchrun --nproc-per-node N -m hires_domain train CONFIG`` (or ``--nnodes``/``--rdzv-endpoint``
across machines) sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; ``process_group`` then joins the
group (NCCL on CUDA, one GPU per local rank; gloo on CPU). The config's ``train.batch_size`` is
the *global* batch: every rank draws the same crops from the same seeded sampler (so the
sequence of global batches is the single-process one, and resume restores it) and keeps rank
``r``'s interleaved share ``r::N``, as ``torch.utils.data.DistributedSampler`` would; DDP
averages the gradients. Only rank 0 writes logs, checkpoints and the exported model.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ..errors import HiresError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """This process writes (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size


def world() -> World:
    """This process's place, from torchrun's environment (a single process without it)."""
    env = os.environ
    try:
        return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise HiresError("RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun)") from None


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group for the run (nothing for a single process); yields the World."""
    w = world()
    if w.size == 1 or torch.distributed.is_initialized():
        yield w
        return
    if device.type == "cuda":
        torch.cuda.set_device(w.local_rank)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield w
    finally:
        torch.distributed.destroy_process_group()


def rank_device(device: torch.device, w: World) -> torch.device:
    """The GPU of this local rank under torchrun; other devices unchanged."""
    return torch.device("cuda", w.local_rank) if device.type == "cuda" and w.size > 1 else device


def wrap(module: torch.nn.Module | None, w: World, device: torch.device):
    """``module`` under DistributedDataParallel when there are several ranks (else itself)."""
    if module is None or w.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def check_batch(batch_size: int, w: World) -> None:
    if batch_size % w.size:
        raise HiresError(f"field 'train.batch_size': {batch_size} (the global batch) is not a multiple of the "
                         f"{w.size} processes")


def mean_over_ranks(values: dict, w: World) -> dict:
    """The float entries of ``values`` averaged over the ranks (for the log)."""
    if w.size == 1:
        return values
    keys = [k for k, v in values.items() if isinstance(v, float)]
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return {**values, **{k: float(v) / w.size for k, v in zip(keys, t.tolist())}}

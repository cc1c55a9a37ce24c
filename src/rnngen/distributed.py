"""Data-parallel plumbing: the process group torchrun describes, sums over ranks, DDP.

Every rank draws the same global batch and trains on its slice (see :mod:`rnngen.train`); rank
0 alone prints, logs and writes. One process without torchrun is rank 0 of 1, and then
nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from rnngen.parent_watch import exit_when_parent_dies


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, logs to MLflow and writes checkpoints and outputs."""
        return self.rank == 0


def ranks() -> Ranks:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[Ranks]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) for
    the ``with`` block: NCCL when this process trains on CUDA, gloo on CPU. Without torchrun,
    one process of one."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield ranks()
        return
    exit_when_parent_dies()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:  # each rank its own GPU: "cuda" below means cuda:LOCAL_RANK
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield ranks()
    finally:
        dist.destroy_process_group()


def all_sum(values: Tensor, r: Ranks) -> Tensor:
    """Sum of ``values`` over the ranks, in place (itself for one process)."""
    if r.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def any_rank(flag: bool, r: Ranks, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call it, or they deadlock)."""
    if r.world == 1:
        return flag
    return bool(all_sum(torch.tensor(float(flag), device=device), r) > 0)


def data_parallel(model: torch.nn.Module, r: Ranks) -> torch.nn.Module:
    """``model`` itself for one process; else DDP, which averages the gradients over the ranks
    after each backward. Building it is a collective: every rank waits there for all others."""
    if r.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def requested_processes(argv: list[str]) -> int:
    """``train.processes`` of the params file in a stage's ``argv`` (``--params``, default
    params.yaml): how many processes the train stage starts itself as. 1 where it (or the file)
    is not valid: the stage reports that itself."""
    import argparse

    from rnngen.config import load_params
    from rnngen.errors import UserError

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    try:
        value = (load_params(parser.parse_known_args(argv)[0].params).get("train") or {}).get("processes", 1)
    except UserError:
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) else 1

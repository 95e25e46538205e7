"""What a Train worker shares with the other ranks of its group: sums and gathered objects.

With one worker these return what they are given, no process group needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    """``values`` summed over the ranks (float64), every rank getting the sums."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return sum_ranks(t, world).tolist()


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), on every rank."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def sum_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` summed over the ranks (in place), every rank getting the sum."""
    if world > 1:
        dist.all_reduce(t)
    return t

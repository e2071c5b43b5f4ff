"""Thin helpers over ``torch.distributed``: identities when no process group is running.

Every statistic that drives training goes through ``all_reduce_mean`` so that a ``torchrun`` run
makes the same decisions on every rank (KL controller, early stop, logged metrics).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; ``x`` itself is untouched)."""
    x = torch.as_tensor(x, dtype=torch.float32).detach().clone()
    if is_initialized():
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        x /= world_size()
    return x


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks (data parallelism without wrapping the HF model)."""
    if not is_initialized():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()

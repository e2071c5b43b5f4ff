"""Data-parallel training over ``torch.distributed``; every helper is an identity without a
process group, so single-process code pays nothing.

How a ``torchrun`` run is laid out
----------------------------------
* **Launch**: ``torchrun --nproc_per_node N -m tokengym train ...`` (``python -m torch.distributed.run``).
  :func:`init_from_env` reads torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``) and starts the process group: ``gloo`` on a CPU-only machine,
  ``cpu:gloo,cuda:nccl`` when CUDA is available (CUDA tensors go through NCCL, the CPU scalars of the
  training statistics through gloo). Without torchrun (or with ``WORLD_SIZE=1``) it does nothing.
* **Data**: every rank runs its own batched env and sampler with its own seed (``seed + 1000*rank``),
  its own reward model and reference model; the per-rank batch is ``batch_size`` episodes, so the
  global batch is ``N * batch_size``.
* **Weights**: rank 0's weights are broadcast at start (:func:`broadcast_module`, as DDP does), and
  gradients are averaged with :func:`all_reduce_grads` once per minibatch, after gradient
  accumulation and before clipping; every rank then takes the same optimiser step and the weights stay
  bit-identical without ever being sent again.
* **Statistics**: everything that drives a decision is global: the token count a minibatch's loss is
  divided by (so N ranks give the same gradient as one process with the N batches: a global token
  mean), advantage/reward whitening moments (``masked_whiten(..., distributed=True)``), running score
  scaling, the KL the adaptive controller sees, the early-stop approx-KL, the skip-a-minibatch
  decision (non-finite loss, ratio threshold) and the logged metrics.
* **Writing**: rank 0 alone writes logs, plots and checkpoints. A checkpoint also holds one
  ``rng_rank{r}.safetensors`` per rank (gathered to rank 0 and written inside its atomic directory),
  so a resumed run continues every rank's sampling stream exactly; all ranks load the checkpoint
  (it must be on a filesystem every node sees).

Why an explicit gradient all-reduce rather than ``DistributedDataParallel``
-------------------------------------------------------------------------
The two compute the same average (DDP also all-reduces gradients with ``SUM / world_size``). DDP's
advantage is overlapping communication with backward through per-bucket hooks; its constraints are
that the wrapped module's ``forward`` must be the thing called (our policy and value head share the
trunk through ``response_forward`` with ``output_hidden_states``; the reference is the same PEFT model
with adapters disabled), that micro-batch accumulation needs ``no_sync()`` on every micro-batch but the
last, and that parameters unused in a step need ``find_unused_parameters``. One all-reduce after
accumulation sends exactly the bytes DDP sends with ``no_sync`` and works unchanged for full
fine-tuning, LoRA/PEFT (only the adapters and the value head have gradients: a few hundred KB) and
every agent subclass that only overrides ``_loss``. The lost overlap is small here: the update is a
minor part of an RLHF iteration (rollout dominates), see ``bench/results/scaling.md``. Gradients are
sent in ~25 MB buckets, so the extra memory is one bucket, not a copy of every gradient.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as tdist

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


# ------------------------------------------------------------------------------------------------
# Process group lifecycle
# ------------------------------------------------------------------------------------------------
def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process run (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    """``gloo`` on CPU; ``cpu:gloo,cuda:nccl`` with CUDA (NCCL for GPU tensors, gloo for CPU ones)."""
    if torch.cuda.is_available() and tdist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> bool:
    """Start the process group that ``torchrun`` describes; return whether one is running.

    A no-op (returns False) outside torchrun or with ``WORLD_SIZE=1``, and idempotent. ``backend``
    defaults to ``$TOKENGYM_DIST_BACKEND`` or :func:`default_backend`; ``timeout_s`` (default
    ``$TOKENGYM_DIST_TIMEOUT`` or 1800 s) bounds how long a rank waits for the others. The group is
    destroyed at interpreter exit (or call :func:`cleanup`).
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not tdist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or os.environ.get("TOKENGYM_DIST_BACKEND") or default_backend()
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get("TOKENGYM_DIST_TIMEOUT", 1800)))
    tdist.init_process_group(backend=backend, timeout=timeout)  # env:// (RANK, WORLD_SIZE, MASTER_*)
    atexit.register(cleanup)
    return True


def cleanup() -> None:
    """Destroy the process group (safe to call twice or without one)."""
    if is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def distributed_from_env(backend: str | None = None) -> Iterator[bool]:
    """``with distributed_from_env() as on: ...``: :func:`init_from_env`, then :func:`cleanup`."""
    started_here = not is_initialized() and init_from_env(backend)
    try:
        yield is_initialized()
    finally:
        if started_here:
            cleanup()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


# ------------------------------------------------------------------------------------------------
# Collectives on statistics (small CPU tensors; gloo)
# ------------------------------------------------------------------------------------------------
def all_reduce_sum(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sum of a tensor over ranks (a copy; ``x`` itself is untouched)."""
    x = torch.as_tensor(x, dtype=dtype).detach().clone()
    if is_initialized():
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: Any) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; ``x`` itself is untouched)."""
    x = all_reduce_sum(x)
    if is_initialized():
        x /= world_size()
    return x


def all_reduce_mean_dict(stats: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of every value of a dict of floats, in one collective (NaN stays NaN)."""
    if not is_initialized() or not stats:
        return dict(stats)
    keys = sorted(stats)
    values = all_reduce_sum(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64), torch.float64)
    return {k: float(v) / world_size() for k, v in zip(keys, values)}


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, in rank order."""
    if not is_initialized():
        return x
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    tdist.all_gather(parts, x)
    return torch.cat(parts)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------
# Weights and gradients
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (DDP does this at
    construction): ranks start identical even if their models were initialised differently."""
    if not is_initialized() or world_size() == 1:
        return
    seen: set[int] = set()
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:  # tied weights
            continue
        seen.add(id(t))
        tdist.broadcast(t.data, src=src)


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same-device, same-dtype tensors of about ``bucket_bytes``."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or t.device != bucket[0].device or size + t.numel() * t.element_size() > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


@torch.no_grad()
def all_reduce_grads(params: Sequence[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average gradients over ranks (data parallelism without wrapping the model, see the module doc).

    A parameter without a gradient on some ranks but not on others gets a zero gradient on those
    (its average is then correct, and every rank's optimiser sees the same set of gradients); one
    without a gradient on every rank keeps ``grad is None``.
    """
    if not is_initialized() or world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = all_reduce_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
    for p, n in zip(params, has.tolist()):
        if n > 0 and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    w = world_size()
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat /= w
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

"""Reward-model losses, one per judgement kind. Inputs are raw scalar rewards (any shape noted).

* :func:`pointwise_loss`: regression of the reward on a (rescaled) scalar score;
* :func:`pairwise_loss`: Bradley-Terry ``-log sigmoid(r_chosen - r_rejected - margin)``;
* :func:`kwise_loss`: one ranking of K responses as all C(K,2) Bradley-Terry pairs of the *same*
  forward pass (InstructGPT): each response is encoded once, and the ranking stays one batch item so
  its correlated pairs do not overfit as K(K-1)/2 separate items would;
* :func:`best_of_n_loss`: softmax cross-entropy of the chosen response among N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pointwise_loss(rewards: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between rewards ``(B,)`` and targets ``(B,)``."""
    return F.mse_loss(rewards, targets)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, averaged over pairs ``(B,)``; ``margin`` demands a gap."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def kwise_loss(rewards: torch.Tensor, margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Loss of one ranking; ``rewards`` ``(K,)`` are ordered best first.

    ``reduction="sum"`` is exactly the sum of the C(K,2) pairwise losses; ``"mean"`` (the default,
    as in InstructGPT) divides by C(K,2) so every ranking weighs the same whatever its K.
    """
    k = rewards.shape[0]
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 rewards, got {k}")
    i, j = torch.triu_indices(k, k, offset=1, device=rewards.device)  # i ranked above j
    losses = -F.logsigmoid(rewards[i] - rewards[j] - margin)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def best_of_n_loss(rewards: torch.Tensor, best: int = 0) -> torch.Tensor:
    """``-log softmax(rewards)[best]`` for one group of N responses ``(N,)``."""
    return -torch.log_softmax(rewards, dim=0)[best]

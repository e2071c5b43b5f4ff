"""Before/after evaluation of a policy on a task's held-out prompts.

This is the one evaluator: ``tokengym train`` (before/after), ``tokengym evaluate`` and the
algorithm comparison (``tokengym bench``) all call :func:`evaluate_policy`, so every table uses the
same metric names:

* ``proxy_score``: the reward the agent is paid (e.g. the learned reward model);
* ``gold_score``: the task's gold judge, never optimised;
* ``kl_to_reference``: KL(policy || reference) summed over each response and averaged, the k1
  estimate (log pi - log pi_ref of the sampled tokens: unbiased, the quantity the KL penalty uses);
* ``kl_to_reference_k3``: the same KL by the k3 estimator (never negative per sample, lower variance);
* ``reference_perplexity``: the reference model's perplexity on the samples (fluency as the base
  model sees it); ``distinct_1`` / ``distinct_2`` (diversity); ``mean_length``; ``eos_rate``.

When the reference gives its whole next-token distributions (as every tokengym caller's does), two
lower-variance forms of the same quantities come with them, computed at the same sampled prefixes:

* ``reference_perplexity_expected``: exp of the mean over sampled prefixes of the reference's
  cross-entropy of the policy's next-token distribution, ``-sum_v pi(v) log ref(v)``. That is the
  average of the sampled token's NLL over the token the policy might have drawn there, so its
  expectation is the perplexity's, without the noise of the single draw;
* ``kl_to_reference_expected``: the exact KL of the next-token distributions, ``sum_v pi(v) log(pi(v) /
  ref(v))``, summed over each response: the same sequence KL in expectation as k1, never negative.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tokengym.envs import BatchedTextEnv

from .advantages import where_mask
from .kl import kl_per_token
from .policy import next_token_logprobs, response_forward, token_logprobs
from .rollout import CachedSampler, entropy_from_logprobs

RefLogprobs = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def distinct_n(texts: list[str], n: int) -> float:
    """Share of distinct word n-grams among all n-grams of ``texts`` (Li et al., 2016)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def reference_logprob_fn(reference: nn.Module, vocab: int, temperature: float = 1.0,
                         pad_id: int | None = None, full: bool = False) -> RefLogprobs:
    """Log-probs of the response tokens under ``reference``, (B, T); ``full``: its whole next-token
    distributions, (B, T, V). ``pad_id`` removes the pad token from its distribution, as the sampler
    does for the policy, so the KL compares like with like."""
    @torch.inference_mode()
    def fn(ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> torch.Tensor:
        logits, _ = response_forward(reference, ids, attn, prompt_len, temperature)
        if full:
            return next_token_logprobs(logits, vocab, pad_id)
        return token_logprobs(logits, ids[:, prompt_len:], vocab, entropy=None, pad_id=pad_id)[0]

    return fn


def _expected_nll_and_kl(policy: nn.Module, ref_all: torch.Tensor, ids: torch.Tensor, attn: torch.Tensor,
                         prompt_len: int, temperature: float, vocab: int, pad_id: int | None,
                         mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response (B,): the summed cross-entropy ``-sum_v pi log ref`` and KL ``sum_v pi log(pi/ref)`` of
    the next-token distributions at each sampled prefix. ``ref_all`` (B, T, V) is the reference's."""
    logits, _ = response_forward(policy, ids, attn, prompt_len, temperature)
    pol_all = next_token_logprobs(logits, vocab, pad_id)
    p = pol_all.exp()
    # A token masked out of both distributions (pad) has p = 0 and log-prob -inf: it adds nothing,
    # where the plain product would be 0 * -inf = NaN.
    cross = -(p * ref_all.clamp(min=torch.finfo(ref_all.dtype).min)).sum(-1)
    entropy = entropy_from_logprobs(pol_all)
    return where_mask(cross, mask).sum(1), where_mask(cross - entropy, mask).sum(1)


@torch.inference_mode()
def evaluate_policy(
    policy: nn.Module, ref_logprobs: RefLogprobs, env: BatchedTextEnv, episodes: int, seed: int = 0,
    temperature: float = 1.0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample ``episodes`` responses (in batches of ``env.num_envs``) on ``env``'s prompts.

    The prompts are the first ``episodes`` items of the env's prompt set in order, so two calls
    (before and after training) see exactly the same prompts and sampling seed.

    ``ref_logprobs`` returns the reference's log-probs of the response tokens, (B, T), or its whole
    next-token distributions, (B, T, V); with the latter the metrics add ``reference_perplexity_expected``
    and ``kl_to_reference_expected`` (see the module docstring), at the cost of one policy forward per batch.

    ``policy`` may be on any device: the samples are moved to it and ``ref_logprobs`` gets them there
    (the reference of the same agent lives on the same device). The evaluation runs in fp32, without
    autocast, even for an agent that trains under bf16: the KL to the reference is a sum of
    differences of log-probs over every token, where bf16's rounding would add up to a bias, and a
    sampler and reference that both run fp32 describe the same distribution. The env and its reward
    models run on the CPU.
    """
    sampler = CachedSampler(policy, temperature=temperature)
    device = next(policy.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    n_prompts = len(env.prompts)
    scores, golds, kls, kls_k3, nlls, lengths, stopped, samples = [], [], [], [], [], [], [], []
    expected_nlls, expected_kls = [], []
    base = getattr(env, "unwrapped", env)
    vocab, pad_id = base.vocab_size, base.pad_token_id  # what the sampler masks, so both sides match
    for start in range(0, episodes, env.num_envs):
        idx = np.arange(start, start + env.num_envs) % n_prompts
        b = sampler.rollout(env, seed=seed + start, generator=gen, options={"prompt_indices": idx}).to(device)
        P = b.prompt_ids.shape[1]
        logp = b.sample_logprobs  # log-probs of the sampled tokens under the policy (temperature applied)
        # Selected, not multiplied, by the mask: a reference that rules out pad gives -inf at the
        # padding positions after a response, and -inf * 0 is NaN.
        # The sampler's log-probs are already 0 off the mask, so masking ``ref`` once zeroes both sums there.
        ref = ref_logprobs(b.input_ids, b.attention_mask, P)
        if ref.dim() == 3:  # the whole next-token distributions
            ref_all = ref
            ref = ref_all.gather(-1, b.input_ids[:, P:].unsqueeze(-1)).squeeze(-1)
            nll, kl = _expected_nll_and_kl(policy, ref_all, b.input_ids, b.attention_mask, P, temperature,
                                           vocab, pad_id, b.response_mask)
            expected_nlls.append(nll)
            expected_kls.append(kl)
            del ref_all
        ref = where_mask(ref, b.response_mask)
        kls.append((logp - ref).sum(1))
        kls_k3.append(kl_per_token(logp, ref, "k3", mask=b.response_mask).sum(1))
        nlls.append((-ref).sum(1))
        lengths.append(b.lengths)
        scores.append(b.scores)
        stopped.append(b.stopped)
        if b.gold_scores is not None:
            golds.append(b.gold_scores)
        for i in range(len(b)):
            samples.append({"prompt": b.prompt_texts[i], "response": b.response_texts[i], "score": float(b.scores[i]),
                            **({"gold": float(b.gold_scores[i])} if b.gold_scores is not None else {})})
    cat = lambda xs: torch.cat(xs)[:episodes]  # noqa: E731
    length = cat(lengths).float()
    tokens = length.sum().clamp(min=1)
    texts = [s["response"] for s in samples[:episodes]]
    metrics = {
        "proxy_score": cat(scores).mean().item(),
        "gold_score": cat(golds).mean().item() if golds else float("nan"),
        "kl_to_reference": cat(kls).mean().item(),
        "kl_to_reference_k3": cat(kls_k3).mean().item(),
        "reference_perplexity": float(np.exp((cat(nlls).sum() / tokens).item())),
        **({"reference_perplexity_expected": float(np.exp((cat(expected_nlls).sum() / tokens).item())),
            "kl_to_reference_expected": cat(expected_kls).mean().item()} if expected_nlls else {}),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "mean_length": length.mean().item(),
        "eos_rate": cat(stopped).float().mean().item(),
        "episodes": float(min(episodes, len(samples))),
    }
    return metrics, samples[:episodes]

"""The held-out evaluator's expected perplexity and KL (computed from whole next-token distributions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokengym.agents.evaluation import evaluate_policy, reference_logprob_fn
from tokengym.agents.rollout import CachedSampler
from tokengym.envs import BatchedTextEnv
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response.split()))


def env_of(tok, n=8, T=4) -> BatchedTextEnv:
    return BatchedTextEnv(n, tokenizer=tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=T, max_prompt_tokens=4,
                          reward=length_reward)


def sharpened(model, factor: float):
    """A toy LM with peaked next-token distributions (a random tiny model's are nearly uniform, under which
    every cross-entropy reads about log V and a wrong one would pass unnoticed)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    return model.eval()


@pytest.fixture
def policy_and_reference(toy_tok, make_toy_lm):
    return sharpened(make_toy_lm(seed=1), 8.0), sharpened(make_toy_lm(seed=2), 8.0)


def test_expected_metrics_equal_a_position_by_position_computation(toy_tok, policy_and_reference):
    policy, reference = policy_and_reference
    env = env_of(toy_tok)
    vocab, pad = env.vocab_size, env.pad_token_id
    full = reference_logprob_fn(reference, vocab, pad_id=pad, full=True)
    metrics, _ = evaluate_policy(policy, full, env, 8, seed=3)

    # The same batch the evaluator sampled (same seeds, same prompt slots), scored one prefix at a time
    # by full forwards of both models, without the evaluator's batching, offsets or masking helpers.
    batch = CachedSampler(policy).rollout(env, seed=3, generator=torch.Generator().manual_seed(3),
                                          options={"prompt_indices": np.arange(8)})
    P = batch.prompt_ids.shape[1]
    cross, kl_sum, tokens = 0.0, 0.0, 0
    with torch.inference_mode():
        for i in range(len(batch)):
            for t in range(int(batch.response_mask[i].sum())):
                ids = batch.input_ids[i : i + 1, : P + t]
                attn = batch.attention_mask[i : i + 1, : P + t]
                pos = (attn.cumsum(-1) - 1).clamp(min=0)
                logs = []
                for m in (policy, reference):
                    z = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[0, -1, :vocab].double()
                    z[pad] = -math.inf
                    logs.append(torch.log_softmax(z, -1))
                p = logs[0].exp()
                keep = p > 0
                cross += float(-(p[keep] * logs[1][keep]).sum())
                kl_sum += float((p[keep] * (logs[0][keep] - logs[1][keep])).sum())
                tokens += 1
    assert metrics["reference_perplexity_expected"] == pytest.approx(math.exp(cross / tokens), rel=1e-4)
    assert metrics["kl_to_reference_expected"] == pytest.approx(kl_sum / len(batch), rel=1e-4, abs=1e-5)


def test_expected_metrics_are_the_sampled_ones_in_expectation(toy_tok, policy_and_reference):
    """Over many samples the expected and the sampled forms agree; only their noise differs."""
    policy, reference = policy_and_reference
    env = env_of(toy_tok, n=64)
    full = reference_logprob_fn(reference, env.vocab_size, pad_id=env.pad_token_id, full=True)
    m, _ = evaluate_policy(policy, full, env, 1024, seed=0)
    assert m["kl_to_reference_expected"] > 1.0  # the two models really differ
    # 1024 responses of up to 4 tokens: the draw's noise on the mean log-perplexity is a few hundredths.
    assert math.log(m["reference_perplexity"]) == pytest.approx(math.log(m["reference_perplexity_expected"]), abs=0.1)
    assert m["kl_to_reference"] == pytest.approx(m["kl_to_reference_expected"], rel=0.1)


def test_same_policy_has_zero_expected_kl_and_token_only_references_still_work(toy_tok, toy_lm):
    _, model = toy_lm
    env = env_of(toy_tok)
    full = reference_logprob_fn(model, env.vocab_size, pad_id=env.pad_token_id, full=True)
    tokens_only = reference_logprob_fn(model, env.vocab_size, pad_id=env.pad_token_id)
    with_full, samples_full = evaluate_policy(model, full, env, 16, seed=1)
    plain, samples_plain = evaluate_policy(model, tokens_only, env, 16, seed=1)
    assert with_full["kl_to_reference_expected"] == pytest.approx(0.0, abs=1e-5)
    assert "reference_perplexity_expected" not in plain and "kl_to_reference_expected" not in plain
    assert samples_full == samples_plain  # the extra policy forward draws nothing
    for key, value in plain.items():
        assert with_full[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), key

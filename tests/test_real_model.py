"""Smoke tests on the real default policy, SmolLM2-135M-Instruct (run in CI too; each well under 60 s)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokengym.agents import CachedSampler
from tokengym.agents.policy import response_forward, token_logprobs
from tokengym.envs import BatchedTextEnv
from tokengym.models import load_causal_lm

pytestmark = [pytest.mark.real_model, pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm()


def test_real_tokenizer_pad_differs_from_eos(smollm2):
    tok, model = smollm2
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id and model.config.eos_token_id == tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    assert not model.training


def test_real_model_batched_rollout_with_vader(smollm2):
    tok, model = smollm2
    T = 8
    env = BatchedTextEnv(4, model="smollm2", reward="vader", max_new_tokens=T, max_prompt_tokens=32)
    assert env.vocab_size == len(tok)
    batch = CachedSampler(model).rollout(env, seed=0)
    assert len(batch) == 4 and batch.response_ids.shape == (4, T)
    assert all(isinstance(t, str) and t.strip() for t in batch.response_texts), batch.response_texts
    assert all(p.strip() for p in batch.prompt_texts)
    assert torch.isfinite(batch.scores).all() and (batch.scores.abs() <= 1).all()  # VADER compound in [-1, 1]
    for i in range(4):
        L = int(batch.lengths[i])
        ids = batch.response_ids[i, :L].tolist()
        if batch.stopped[i]:
            assert ids[-1] == tok.eos_token_id
            ids = ids[:-1]
        else:
            assert L == T
        assert batch.response_texts[i] == tok.decode(ids, skip_special_tokens=True)
    # The cached sampler's log-probs match a full forward of the real model (checklist 7).
    with torch.no_grad():
        logits, _ = response_forward(model, batch.input_ids, batch.attention_mask, env.max_prompt_tokens, 1.0)
        logp, _ = token_logprobs(logits, batch.response_ids, env.vocab_size)
    torch.testing.assert_close(batch.sample_logprobs, logp * batch.response_mask, atol=2e-4, rtol=0)
    assert np.all(np.isfinite(batch.sample_logprobs.numpy())) and math.isfinite(float(batch.scores.mean()))


def test_real_model_greedy_rollout_equals_generate(smollm2):
    tok, model = smollm2
    prompts = ["The film was", "After two hours in the cinema I can say that the acting in this drama was"]
    T, P = 8, 24
    env = BatchedTextEnv(2, tokenizer=tok, reward="length", prompts=prompts, split=None, max_new_tokens=T, max_prompt_tokens=P)
    batch = CachedSampler(model, greedy=True).rollout(env, options={"prompt_indices": [0, 1]})
    lens = batch.prompt_mask.sum(1).tolist()
    assert lens[0] < lens[1]  # unequal lengths: row 0 is left-padded
    with torch.no_grad():
        out = model.generate(
            input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, max_new_tokens=T, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    expected = out[:, P:]
    if expected.shape[1] < T:
        expected = torch.cat([expected, torch.full((2, T - expected.shape[1]), tok.pad_token_id)], 1)
    assert batch.response_ids.tolist() == expected.tolist(), (batch.response_texts, tok.batch_decode(expected))

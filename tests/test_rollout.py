"""KV-cached rollouts through BatchedTextEnv: token-for-token equal to ``generate``; padding and positions
(checklist 2, 3, 5, 6); seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokengym.agents import CachedSampler
from tokengym.agents.policy import ValueHead, response_forward, token_logprobs
from tokengym.agents.rollout import mask_pad_logits, position_ids_from_mask
from tokengym.envs import BatchedTextEnv
from tokengym.rewards import batched

pytestmark = pytest.mark.usefixtures("single_thread")

# Unequal lengths on purpose: 1 to 7 words (the toy tokenizer maps one word to one token).
TOY_PROMPTS_UNEQUAL = [
    "the movie was", "good", "i liked the film and the music", "a long film", "the plot is boring and slow", "sad",
]


@batched
def zero_reward(prompts, responses):
    return np.zeros(len(prompts))


def make_env(tok, prompts, n=None, T=8, P=8, **kw) -> BatchedTextEnv:
    return BatchedTextEnv(
        n or len(prompts), tokenizer=tok, reward=zero_reward, prompts=list(prompts), split=None,
        max_new_tokens=T, max_prompt_tokens=P, **kw,
    )


def greedy_rollout(model, env, indices):
    return CachedSampler(model, greedy=True).rollout(env, options={"prompt_indices": list(indices)})


def generate_like_env(model, batch, T, pad_id, stop_ids):
    """``model.generate(do_sample=False)`` on the same left-padded prompts, right-padded to T columns,
    stopping on the env's stop set and never emitting pad (the sampler masks it)."""
    out = model.generate(
        input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, max_new_tokens=T, do_sample=False,
        pad_token_id=pad_id, eos_token_id=list(stop_ids), suppress_tokens=[pad_id],
    )
    resp = out[:, batch.prompt_ids.shape[1] :]
    if resp.shape[1] < T:  # generate stops early when every row has ended
        resp = torch.cat([resp, torch.full((resp.shape[0], T - resp.shape[1]), pad_id)], dim=1)
    return resp


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def eos_model(request, toy_tok, untied_lm):
    """An untied tiny LM edited so greedy decoding emits EOS mid-sequence in some rows but not all.

    The EOS row of the LM head becomes a slightly scaled copy of the row of a token that greedy
    decoding picks somewhere; where that token's logit is the (positive) max, EOS now wins.
    """
    model = untied_lm(toy_tok, request.param)
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL)
    idx = range(len(TOY_PROMPTS_UNEQUAL))
    head = model.get_output_embeddings().weight
    eos, pad = toy_tok.eos_token_id, toy_tok.pad_token_id
    original = head.detach().clone()
    first = greedy_rollout(model, env, idx)
    for token in first.response_ids[:, 1:].flatten().unique().tolist():
        if token in (eos, pad):
            continue
        with torch.no_grad():
            head.copy_(original)
            head[eos] = original[token] * 1.05
        b = greedy_rollout(model, env, idx)
        mid_stop = (b.stopped & (b.lengths > 1) & (b.lengths < env.max_new_tokens)).any()
        if mid_stop and not b.stopped.all():
            return request.param, model
    pytest.fail("could not make greedy decoding emit EOS in only some rows")


def test_greedy_rollout_equals_generate_with_eos_and_padding(eos_model, toy_tok):
    arch, model = eos_model
    T, P = 8, 8
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL, T=T, P=P)
    b = greedy_rollout(model, env, range(len(TOY_PROMPTS_UNEQUAL)))
    pad, eos = toy_tok.pad_token_id, toy_tok.eos_token_id
    # Prompts really are of unequal length (left padding differs per row).
    assert len(set(b.prompt_mask.sum(1).tolist())) >= 4
    # EOS happens in some rows but not all.
    assert b.stopped.any() and not b.stopped.all(), (arch, b.stopped)
    expected = generate_like_env(model, b, T, pad, env.stop_token_ids)
    torch.testing.assert_close(b.response_ids, expected, rtol=0, atol=0)
    for i in range(len(b)):
        L = int(b.lengths[i])
        row = b.response_ids[i].tolist()
        assert b.response_mask[i].tolist() == [1.0] * L + [0.0] * (T - L)
        if b.stopped[i]:
            assert row[L - 1] == eos and eos not in row[: L - 1]  # EOS kept, inside the mask
            assert row[L:] == [pad] * (T - L)
        else:
            assert L == T and eos not in row
    # Texts are decoded without the EOS.
    for i in range(len(b)):
        L = int(b.lengths[i]) - int(b.stopped[i])
        assert b.response_texts[i] == toy_tok.decode(b.response_ids[i, :L], skip_special_tokens=True)


def test_cached_logprobs_and_values_equal_a_full_forward(eos_model, toy_tok):
    """The sampler's per-step (KV-cached) log-probs and values equal the training forward's (checklist
    6, 7): left-padded prompts, rows that stop at EOS and rows that run to the end."""
    _, model = eos_model
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL)
    head = ValueHead(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    torch.nn.init.normal_(head.linear.weight, generator=torch.Generator().manual_seed(0))
    stopped = False
    for temperature, greedy in ((1.0, True), (1.0, False), (0.7, False)):
        b = CachedSampler(model, temperature=temperature, greedy=greedy, value_head=head).rollout(
            env, seed=1, options={"prompt_indices": list(range(len(TOY_PROMPTS_UNEQUAL)))}
        )
        with torch.no_grad():
            logits, hidden = response_forward(model, b.input_ids, b.attention_mask, env.max_prompt_tokens, temperature, True)
            # The sampled distribution has no pad: the full forward scores it with the same mask.
            logp, ent = token_logprobs(mask_pad_logits(logits, env.pad_token_id), b.response_ids, env.vocab_size)
            logp = logp.masked_fill(b.response_mask == 0, 0.0)  # padding columns hold pad, at -inf
            values = head(hidden)
        torch.testing.assert_close(b.sample_logprobs, logp, atol=1e-5, rtol=0)
        assert (b.sample_logprobs[b.response_mask == 0] == 0).all()
        assert (values * b.response_mask).abs().max() > 0.1
        torch.testing.assert_close(b.values, values * b.response_mask, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.entropy, ent * b.response_mask, atol=1e-5, rtol=0)
        stopped |= bool(b.stopped.any() and not b.stopped.all())
    assert stopped  # some rows ended at EOS while others went on (greedy on the edited LM head)
    assert CachedSampler(model).rollout(env, seed=1).values is None  # no head, no values


def test_greedy_rollout_equals_generate_smollm2_tokenizer(smol_tiny_llama):
    tok, model = smol_tiny_llama
    prompts = ["Hello", "The film was long, slow and", "I think that this movie is one of the best", "Why?"]
    T = 6
    env = make_env(tok, prompts, T=T, P=12)
    b = greedy_rollout(model, env, range(len(prompts)))
    assert len(set(b.prompt_mask.sum(1).tolist())) == len(prompts)
    torch.testing.assert_close(b.response_ids, generate_like_env(model, b, T, tok.pad_token_id, env.stop_token_ids), rtol=0, atol=0)


def test_more_episodes_than_prompts_and_repeated_prompts_agree(eos_model, toy_tok):
    """Rows holding the same prompt produce the same greedy tokens whatever the other rows hold."""
    _, model = eos_model
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL, n=9)
    idx = [0, 1, 2, 3, 4, 5, 2, 0, 5]
    b = greedy_rollout(model, env, idx)
    alone = [greedy_rollout(model, make_env(toy_tok, [TOY_PROMPTS_UNEQUAL[i]], n=1), [0]) for i in (0, 2, 5)]
    for row, single in zip((0, 2, 5), alone):
        assert b.response_ids[row].tolist() == single.response_ids[0].tolist()
    assert b.response_ids[6].tolist() == b.response_ids[2].tolist()
    assert b.response_ids[7].tolist() == b.response_ids[0].tolist()


# ----------------------------------------------------------------------------------------------
# Checklist 2 and 3: padding does not change log-probs or logits
# ----------------------------------------------------------------------------------------------
def _left_pad(seqs, pad):
    L = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_unequal_prompts_give_the_same_logprobs_as_each_alone(arch, toy_tok, untied_lm):
    model = untied_lm(toy_tok, arch)
    pad = toy_tok.pad_token_id
    rng = np.random.default_rng(0)
    prompts = [toy_tok(p)["input_ids"] for p in TOY_PROMPTS_UNEQUAL]
    T = 5
    resp_lens = [5, 2, 4, 5, 1, 3]
    responses = [rng.integers(4, len(toy_tok), size=n).tolist() for n in resp_lens]
    p_ids, p_mask = _left_pad(prompts, pad)
    r_ids = torch.tensor([r + [pad] * (T - len(r)) for r in responses])
    r_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in responses])
    P = p_ids.shape[1]
    with torch.no_grad():
        logits, _ = response_forward(model, torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), P, 1.0)
        batch_logp, _ = token_logprobs(logits, r_ids, len(toy_tok))
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([p + r])
            logits_i, _ = response_forward(model, ids, torch.ones_like(ids), len(p), 1.0)
            alone, _ = token_logprobs(logits_i, torch.tensor([r]), len(toy_tok))
            torch.testing.assert_close(batch_logp[i, : len(r)], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padded_logits_equal_unpadded_logits(arch, toy_tok, untied_lm):
    model = untied_lm(toy_tok, arch)
    seq = toy_tok("the movie was good and the plot")["input_ids"]
    n_pad = 5
    ids, mask = _left_pad([seq, [4] * (len(seq) + n_pad)], toy_tok.pad_token_id)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[0, n_pad:]
        plain = model(input_ids=torch.tensor([seq])).logits[0]
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    assert position_ids_from_mask(mask)[0].tolist() == [0] * n_pad + list(range(len(seq)))


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(toy_lm, toy_tok):
    _, model = toy_lm
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL, n=8)
    sampler = CachedSampler(model)
    a, b, c = sampler.rollout(env, seed=5), sampler.rollout(env, seed=5), sampler.rollout(env, seed=6)
    assert a.prompt_texts == b.prompt_texts
    torch.testing.assert_close(a.response_ids, b.response_ids, rtol=0, atol=0)
    torch.testing.assert_close(a.sample_logprobs, b.sample_logprobs, rtol=0, atol=0)
    assert not torch.equal(a.response_ids, c.response_ids)
    # An explicit generator overrides: same generator state -> same tokens.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    d = sampler.rollout(env, seed=5, generator=g1)
    e = sampler.rollout(env, seed=5, generator=g2)
    torch.testing.assert_close(d.response_ids, e.response_ids, rtol=0, atol=0)


def test_a_shared_prefill_samples_exactly_what_a_fresh_prefill_samples(toy_lm, toy_tok, monkeypatch):
    _, model = toy_lm
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL, n=6)
    fresh = [CachedSampler(model, temperature=T).rollout(env, seed=5) for T in (1.0, 0.7, 1.0)]
    forwards = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(k["input_ids"].shape[1]) or original(*a, **k))
    memo: dict = {}
    shared = [CachedSampler(model, temperature=T, prefill_memo=memo).rollout(env, seed=5) for T in (1.0, 0.7, 1.0)]
    for a, b in zip(fresh, shared):
        torch.testing.assert_close(a.response_ids, b.response_ids, rtol=0, atol=0)
        torch.testing.assert_close(a.sample_logprobs, b.sample_logprobs, rtol=0, atol=0)
    # One prefill (the prompt columns) for three rollouts of the same prompts; the rest are 1-token steps.
    assert len(memo) == 1 and sum(width > 1 for width in forwards) == 1
    # Other prompts are a miss, not a wrong hit.
    CachedSampler(model, prefill_memo=memo).rollout(env, seed=5, options={"prompt_indices": [5, 4, 3, 2, 1, 0]})
    assert len(memo) == 2
    with pytest.raises(ValueError, match="prefill_memo"):
        CachedSampler(model, value_head=ValueHead(8), prefill_memo={})


def test_sampler_draws_from_the_tempered_policy_distribution(toy_tok, untied_lm):
    """Checklist 5/6: tokens come from softmax(logits / temperature) without pad, no top-k/top-p."""
    model = untied_lm(toy_tok, "llama", seed=3)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(60.0)  # a peaked distribution, so temperature matters
    temperature, n = 0.7, 3000
    env = make_env(toy_tok, ["the movie was"], n=n, T=1, P=4)
    b = CachedSampler(model, temperature=temperature).rollout(env, seed=0)
    with torch.no_grad():
        ids = torch.tensor([toy_tok("the movie was")["input_ids"]])
        logits = model(input_ids=ids).logits[0, -1, : len(toy_tok)]
        probs = torch.softmax(mask_pad_logits(logits / temperature, env.pad_token_id), -1)
    assert 0.02 < probs.max() < 0.9  # neither flat nor one-hot: the check below can tell apart temperatures
    counts = torch.bincount(b.response_ids[:, 0], minlength=len(toy_tok)).double() / n
    tv = 0.5 * (counts - probs.double()).abs().sum().item()
    assert tv < 0.05, tv
    probs_t1 = torch.softmax(mask_pad_logits(logits, env.pad_token_id), -1)
    assert 0.5 * (probs_t1 - probs).abs().sum().item() > 0.1  # a wrong temperature would fail the tv check


def test_pad_is_never_sampled_even_where_the_model_prefers_it(toy_tok, untied_lm):
    """Pad is padding, not an action: with its logit far above every other, neither sampling nor the
    argmax picks it, and the recorded log-probs are those of the distribution without pad."""
    model = untied_lm(toy_tok, "llama", seed=1)
    pad = toy_tok.pad_token_id
    bump = torch.zeros(len(toy_tok))
    bump[pad] = 30.0  # unless masked, pad takes ~all the mass
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bump)
    env = make_env(toy_tok, TOY_PROMPTS_UNEQUAL, n=64, T=4, P=8)
    ids = torch.tensor([toy_tok("the movie was")["input_ids"]])
    with torch.no_grad():
        assert torch.softmax(model(input_ids=ids).logits[0, -1], -1)[pad] > 0.99  # the model really prefers pad
    for greedy in (False, True):
        b = CachedSampler(model, greedy=greedy).rollout(env, seed=0)
        real = b.response_mask.bool()
        assert not (b.response_ids[real] == pad).any()
        assert torch.isfinite(b.sample_logprobs).all() and torch.isfinite(b.entropy).all()
        assert (b.sample_logprobs[real] > -30).all()  # renormalised without pad, not log(tiny)


def test_sampler_disables_autoreset_for_the_rollout_and_restores_it(toy_lm, toy_tok):
    """An env made with NEXT_STEP autoreset (Gymnasium's default, and make_vec's) would restart a
    finished row mid-rollout, behind the sampler's KV cache. The sampler disables it for the rollout:
    every row is one consistent episode, and the env autoresets again afterwards."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    _, model = toy_lm
    env = make_env(toy_tok, ["the movie was", "good"], n=8, T=6, P=4)
    assert env.autoreset_mode == AutoresetMode.NEXT_STEP  # the default
    wrapped = gym.wrappers.vector.RecordEpisodeStatistics(env)
    for target in (env, wrapped):
        b = CachedSampler(model).rollout(target, seed=0)
        assert env.autoreset_mode == AutoresetMode.NEXT_STEP
        assert b.stopped.any() and not b.stopped.all()  # rows ended at different steps
        for i in range(len(b)):
            L = int(b.lengths[i])
            assert bool(b.stopped[i]) == (L > 0 and int(b.response_ids[i, L - 1]) in env.stop_token_ids), i
            assert L == int(b.response_mask[i].sum()) and (b.response_ids[i, L:] == toy_tok.pad_token_id).all()
            assert b.prompt_ids[i][b.prompt_mask[i].bool()].tolist() == toy_tok(b.prompt_texts[i])["input_ids"], i
    # The same rollout as on an env made without autoreset.
    plain = make_env(toy_tok, ["the movie was", "good"], n=8, T=6, P=4, autoreset_mode="Disabled")
    c = CachedSampler(model).rollout(plain, seed=0)
    assert torch.equal(b.response_ids, c.response_ids) and plain.autoreset_mode == AutoresetMode.DISABLED
    # After a rollout the NEXT_STEP env restarts its finished rows on the next step.
    env.step(np.zeros(8, dtype=np.int64))
    assert env.active.all() and (env.response_lengths == 0).all()


def test_sampler_refuses_a_vector_env_of_single_envs(toy_lm, toy_tok):
    import gymnasium as gym

    venv = gym.make_vec("tokengym/TextGeneration-v0", num_envs=2, vectorization_mode="sync", tokenizer=toy_tok,
                        reward=zero_reward, max_new_tokens=2)
    with pytest.raises(TypeError, match="BatchedTextEnv"):
        CachedSampler(toy_lm[1]).rollout(venv, seed=0)

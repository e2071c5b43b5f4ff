"""Augmentation (agents.aids.OutputAugmenter / AugmentationMixin) under the constraints of a
distributed run: the score statistics of ``score_scaling`` see sampled rollouts only, and every
rollout adds the same number of augmented episodes whatever its data, so all ranks of a ``torchrun``
run have batches of one size (the same minibatches, hence the same collectives in the same order)."""

from __future__ import annotations

import unittest.mock as mock

import numpy as np
import pytest
import torch

from tokengym.agents import AugmentationMixin, OutputAugmenter, PPOAgent, PPOConfig, RLOOAgent, RLOOConfig, with_aids
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


def toy_env(tok, reward=good_share, n: int = 8) -> BatchedTextEnv:
    return BatchedTextEnv(n, tokenizer=tok, reward=reward, prompts=TOY_PROMPTS, split=None, max_new_tokens=5,
                          max_prompt_tokens=4)


def model(tok):
    return make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)[1]


def cfg(config_cls=PPOConfig, **kw):
    # Full fine-tuning, beta 0.05 and the slow adaptive controller these tests were written with (not the
    # main job's defaults: LoRA r=16, beta 0.1, KL target 3, horizon 32).
    base = dict(batch_size=8, micro_batch_size=4, ppo_epochs=1, learning_rate=1e-2, anneal_lr=False, sample_every=0,
                lora_r=0, kl_coef=0.05, kl_target=6.0, kl_horizon=10000)
    if config_cls is PPOConfig:
        base["minibatch_size"] = 4
    return config_cls(**{**base, **kw})


def test_score_moments_count_the_real_rollouts_only(toy_tok) -> None:
    agent = with_aids(PPOAgent, AugmentationMixin)(toy_env(toy_tok), model(toy_tok), cfg(score_scaling=True),
                                                   augmenter=OutputAugmenter(top_fraction=0.5, n_variants=2))
    for _ in range(2):
        assert agent.step()["aug_episodes"] > 0  # variants were added to the update...
    n, _, _ = agent.score_moments
    assert n == 2 * 8  # ...but only the 2 x 8 sampled episodes fed the running moments


def test_score_moments_equal_those_of_the_same_rollouts_without_augmentation(toy_tok) -> None:
    """Same seeds, same first rollout: the moments after it do not depend on the augmented scores."""
    plain = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(score_scaling=True))
    aug = with_aids(PPOAgent, AugmentationMixin)(toy_env(toy_tok), model(toy_tok), cfg(score_scaling=True),
                                                 augmenter=OutputAugmenter(top_fraction=0.5, n_variants=3))
    plain.step()
    aug.step()
    assert aug.score_moments == pytest.approx(plain.score_moments)


def test_every_rollout_gets_the_same_number_of_augmented_episodes(toy_tok) -> None:
    env = toy_env(toy_tok)
    agent = PPOAgent(env, model(toy_tok), cfg())
    batch = agent.sampler.rollout(env, seed=0, generator=agent.sample_gen)
    augmenter = OutputAugmenter(top_fraction=0.5, n_variants=3)
    assert augmenter.episodes_per_rollout(8) == 4 * 3
    full = augmenter(batch, env)
    assert len(full) == 12 and full.real.all()
    # Nothing qualifies (min_score above every score): the same size, all padding, the reward never called.
    calls = []
    scored = mock.patch.object(env, "reward", side_effect=lambda *a, **k: calls.append(1) or [0.0] * len(a[0]))
    with scored:
        none = OutputAugmenter(top_fraction=0.5, n_variants=3, min_score=2.0)(batch, env)
    assert len(none) == 12 and not none.real.any() and calls == []
    assert (none.response_mask == 0).all() and (none.scores == 0).all() and none.augmented
    # A fixed count below what the settings give trims (the best originals' variants are kept).
    trimmed = OutputAugmenter(top_fraction=0.5, n_variants=3, n_episodes=5)(batch, env)
    assert len(trimmed) == 5 and trimmed.real.all()
    best = int(torch.argsort(batch.scores, descending=True, stable=True)[0])
    assert trimmed.prompt_texts[:3] == [batch.prompt_texts[best]] * 3
    # Above it pads: the variants, then masked episodes.
    padded = OutputAugmenter(top_fraction=0.5, n_variants=3, n_episodes=20)(batch, env)
    assert len(padded) == 20 and padded.real.tolist() == [True] * 12 + [False] * 8
    assert (padded.response_mask[12:] == 0).all() and (padded.response_mask[:12].sum(1) > 0).all()
    with pytest.raises(ValueError, match="n_episodes"):
        OutputAugmenter(n_episodes=0)


def test_groups_stay_whole_with_padding(toy_tok) -> None:
    env = toy_env(toy_tok)
    agent = RLOOAgent(env, model(toy_tok), cfg(RLOOConfig, group_size=4))
    batch = agent.sampler.rollout(env, seed=0, generator=agent.sample_gen, options=agent._rollout_options())
    aug = OutputAugmenter(top_fraction=0.25, n_variants=4, n_episodes=12)(batch, env, group_size=4)
    assert len(aug) == 12
    ids = aug.prompt_ids_str
    assert all(len(set(ids[g: g + 4])) == 1 for g in range(0, 12, 4))
    real = aug.real.view(-1, 4)
    assert (real.all(1) | ~real.any(1)).all()  # a group is all variants or all padding
    with pytest.raises(ValueError, match="multiple of the group size"):
        OutputAugmenter(n_episodes=6)(batch, env, group_size=4)


def test_the_update_size_is_fixed_when_the_number_of_variants_varies(toy_tok) -> None:
    """min_score makes the number of qualifying responses data-dependent; the update's batch is not."""
    Agent = with_aids(PPOAgent, AugmentationMixin)
    agent = Agent(toy_env(toy_tok), model(toy_tok), cfg(),
                  augmenter=OutputAugmenter(top_fraction=0.5, n_variants=2, min_score=0.5))
    # The rollouts' scores are set so that 0, all 4 and 1 of the top 4 responses qualify.
    planned = iter([torch.zeros(8), torch.ones(8), torch.tensor([1.0] + [0.0] * 7)])
    rollout = agent.sampler.rollout

    def scored_rollout(*args, **kwargs):
        batch = rollout(*args, **kwargs)
        batch.scores = next(planned)
        return batch

    agent.sampler.rollout = scored_rollout
    sizes: list[int] = []
    update = PPOAgent._update

    def spy(self, exp):
        sizes.append(len(exp.batch))
        return update(self, exp)

    with mock.patch.object(PPOAgent, "_update", spy):
        rows = [agent.step() for _ in range(3)]
    assert sizes == [8 + 8] * 3
    assert [r["aug_episodes"] for r in rows] == [0.0, 8.0, 2.0]
    assert np.isnan(rows[0]["aug_score"]) and np.isfinite(rows[1]["aug_score"]) and np.isfinite(rows[2]["aug_score"])


def test_padding_episodes_add_nothing_to_the_update(toy_tok) -> None:
    # missing_eos_penalty would give the (never stopped) padding a score of -1 without the mask.
    agent = with_aids(PPOAgent, AugmentationMixin)(toy_env(toy_tok), model(toy_tok), cfg(missing_eos_penalty=1.0),
                                                   augmenter=OutputAugmenter(min_score=2.0, n_episodes=8))
    batch = agent.sampler.rollout(agent.env, seed=0, generator=agent.sample_gen)
    pads = agent.augmenter(batch, agent.env)
    exp = agent._make_experience(pads)
    assert (exp.rewards == 0).all() and (exp.advantages == 0).all() and (exp.returns == 0).all() and (exp.kl == 0).all()
    assert torch.isfinite(exp.old_logprobs).all() and torch.isfinite(exp.ref_logprobs).all()
    # A minibatch without a real token makes no optimiser step (Adam's momentum alone would move the weights).
    before = {n: p.detach().clone() for n, p in agent.ac.named_parameters() if p.requires_grad}
    with mock.patch.object(agent.optimizer, "step", side_effect=AssertionError("stepped on padding")):
        PPOAgent._update(agent, exp)
    assert all(torch.equal(before[n], p) for n, p in agent.ac.named_parameters() if p.requires_grad)

"""The main task's learned reward: registration, the build-once cache, atomic builds.

Everything here uses tiny models (a 2-layer llama on the SmolLM2 tokenizer for the candidates, a
tiny BERT for the reward model) and a private cache folder, so no real model is trained.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from tokengym.feedback import default_rm
from tokengym.feedback.default_rm import DEFAULT_RECIPE, RewardModelRecipe, cached_path, ensure_reward_model
from tokengym.feedback.rm_training import tiny_reward_model
from tokengym.rewards import resolve_reward
from tokengym.rewards.learned import LearnedReward
from tokengym.agents import PPOConfig
from tokengym.train import DEFAULT_ENV, TrainConfig

TINY = RewardModelRecipe(max_prompts=12, temperatures=(1.0, 1.3), max_new_tokens=6, epochs=1.0, rm_batch_size=8,
                         heldout_fraction=0.25)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOKENGYM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_default_task_pays_a_learned_reward_and_judges_with_a_separate_gold():
    assert TrainConfig().env == DEFAULT_ENV == "tokengym/PositiveReview-v1"
    kwargs = gym.spec(DEFAULT_ENV).kwargs
    assert kwargs["reward"] == "sentiment_rm" and kwargs["gold_reward"] == "vader"
    # The VADER-paid version stays for reward-agnostic benchmarks.
    assert gym.spec("tokengym/PositiveReview-v0").kwargs["reward"] == "vader"


def test_the_reward_model_is_built_once_and_reused(cache: Path, smol_tiny_llama, monkeypatch: pytest.MonkeyPatch):
    path = ensure_reward_model(TINY, progress=False, log=None, policy=smol_tiny_llama, reward_model=tiny_reward_model)
    assert path == cached_path(TINY) and path.is_relative_to(cache)
    info = json.loads((path / "build.json").read_text())
    # one pair per prompt of 2 candidates, compared by each annotator
    assert info["candidates"] == 12 * 2 and info["comparisons"] == 12 * TINY.annotators
    assert 0.0 <= info["heldout_gold_accuracy"] <= 1.0
    # A second call must find the cache and build nothing.
    monkeypatch.setattr(default_rm, "build_reward_model", lambda *a, **k: pytest.fail("rebuilt a cached model"))
    assert ensure_reward_model(TINY, progress=False, log=None) == path
    reward = resolve_reward(("sentiment_rm", {"path": str(path)}))
    scores = reward(["A film."], ["It was wonderful."])
    assert scores.shape == (1,) and np.isfinite(scores).all()
    assert isinstance(reward.inner, LearnedReward)


def test_a_changed_recipe_never_reuses_a_stale_model():
    assert cached_path(TINY) != cached_path(replace(TINY, annotator_accuracy=0.8))
    assert cached_path(TINY) != cached_path(replace(TINY, annotators=1))
    # Fields added later leave a recipe's name unchanged at the values it was built with: the model
    # cached by the previous default recipe (one annotator, batches of 128) keeps its folder name.
    assert RewardModelRecipe(annotators=1, rm_batch_size=128).key() == "5fdda98de0f1"


def test_several_annotators_each_compare_every_pair_with_their_own_noise(cache: Path, smol_tiny_llama,
                                                                         monkeypatch: pytest.MonkeyPatch):
    from tokengym.feedback.simulate import LabelSimulator

    seen = []
    original = LabelSimulator.label_pairs

    def recording(self, annotators, pairs):
        seen.extend(annotators)
        return original(self, annotators, pairs)

    monkeypatch.setattr(LabelSimulator, "label_pairs", recording)
    recipe = replace(TINY, annotators=3)
    assert DEFAULT_RECIPE.annotators == 3  # the main task's recipe
    info = default_rm.build_reward_model(cache / "rm3", recipe, progress=False, log=None, policy=smol_tiny_llama,
                                         reward_model=tiny_reward_model)
    assert info["comparisons"] == 3 * 12  # one pair per prompt, compared by each of the 3
    # Independent noise: each annotator draws from its own random stream.
    assert len({a.name for a in seen}) == len({a.seed for a in seen}) == 3


def test_a_killed_build_leaves_no_half_written_cache(cache: Path, smol_tiny_llama, monkeypatch: pytest.MonkeyPatch):
    import tokengym.feedback.rm_training as rm_training

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C in the middle of training raises

    monkeypatch.setattr(rm_training, "train_reward_model", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_reward_model(TINY, progress=False, log=None, policy=smol_tiny_llama, reward_model=tiny_reward_model)
    parent = cached_path(TINY).parent
    assert not cached_path(TINY).exists()
    assert not parent.exists() or list(parent.iterdir()) == []


def test_the_factory_refuses_to_build_when_told_not_to(cache: Path):
    from tokengym.feedback.errors import FeedbackError

    with pytest.raises(FeedbackError, match="tokengym build-rm"):
        default_rm.sentiment_reward_model(build=False)


def test_the_main_jobs_kl_controller_can_move_beta_within_the_run():
    """A controller whose horizon dwarfs the run cannot control anything: at the largest error it
    allows, beta must be able to at least double (or halve) within the default iterations."""
    cfg = TrainConfig()
    assert cfg.ppo == PPOConfig()  # one set of defaults: tokengym train is PPOAgent(env, model)
    step = 0.2 * cfg.ppo.batch_size / cfg.ppo.kl_horizon
    assert (1 + step) ** cfg.iterations >= 2.0
    assert (1 - step) ** cfg.iterations <= 0.5

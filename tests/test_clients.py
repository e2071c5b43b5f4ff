"""Standard Gymnasium and stable-baselines3 clients run on the tokengym envs as they run on any env:
the env checker, ``make_vec`` in every mode with the usual vector loop and wrappers, SB3's
``make_vec_env`` with A2C/PPO and the LM policy, a random agent under the usual wrappers; and a
model load prints no library chatter."""

from __future__ import annotations

import logging
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from tokengym.agents.sb3 import LMActorCriticPolicy
from tokengym.envs import BatchedTextEnv, TextGenerationEnv
from tokengym.testing import TOY_PROMPTS

ENV_ID = "tokengym/TextGeneration-v0"
T = 4
pytestmark = pytest.mark.usefixtures("single_thread")


def task(tok, **kw) -> dict:
    """Env kwargs of a small task; the reward is a registered name, so async workers can rebuild it."""
    return dict(tokenizer=tok, reward=("token_share", {"target": "good"}), prompts=list(TOY_PROMPTS), split=None,
                max_new_tokens=T, max_prompt_tokens=6, **kw)


@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_gymnasium_env_checker_passes_in_every_render_mode(toy_tok, render_mode):
    env = gym.make(ENV_ID, render_mode=render_mode, **task(toy_tok))
    assert isinstance(env.unwrapped, TextGenerationEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # also renders, in the rgb_array case checking an (H, W, 3) uint8 frame
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]


@pytest.mark.parametrize("mode", [None, "vector_entry_point", "sync", "async"])
def test_make_vec_standard_loop_with_episode_statistics_in_every_mode(toy_tok, mode):
    """``venv.reset(seed=0)`` then 30 steps of random actions, the loop every Gymnasium user writes.

    Every mode must autoreset (NEXT_STEP): each row plays several episodes, and the vector
    ``RecordEpisodeStatistics`` reports each one with the env's own score and token count (it would
    count the autoreset step, or miss episodes, if the env and the wrapper disagreed on the mode).
    """
    n, steps = 3, 30
    venv = gym.wrappers.vector.RecordEpisodeStatistics(gym.make_vec(ENV_ID, num_envs=n, vectorization_mode=mode, **task(toy_tok)))
    try:
        assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        if mode in (None, "vector_entry_point"):
            assert isinstance(venv.unwrapped, BatchedTextEnv)
        venv.action_space.seed(0)
        obs, _ = venv.reset(seed=0)
        ends = np.zeros(n, dtype=int)
        for _ in range(steps):
            obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
            assert venv.observation_space.contains(obs)
            done = terminated | truncated
            if done.any():
                assert info["_episode"].tolist() == done.tolist()
                np.testing.assert_allclose(info["episode"]["r"][done], info["score"][done], atol=1e-6)
                assert info["episode"]["l"][done].tolist() == info["num_tokens"][done].tolist()
                assert (info["episode"]["l"][done] <= T).all()
            ends += done
        # An episode lasts at most T steps plus the autoreset step: at least 30 / 5 episodes per row.
        assert (ends >= steps // (T + 1)).all(), ends
        assert venv.episode_count == ends.sum() == len(venv.return_queue)
    finally:
        venv.close()


def test_sb3_make_vec_env_with_a2c_and_ppo_on_the_lm_policy(toy_tok, make_toy_lm):
    """SB3's usual entry point asks for render_mode="rgb_array"; A2C and PPO then train the LM itself."""
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(ENV_ID, n_envs=2, seed=0, env_kwargs=task(toy_tok))
    venv.reset()
    frame = venv.render()  # both envs' frames, tiled
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    for algo, kwargs in ((A2C, {"n_steps": 8}), (PPO, {"n_steps": 32, "batch_size": 32, "n_epochs": 1})):
        lm = make_toy_lm()
        model = algo(LMActorCriticPolicy, venv, policy_kwargs={"lm": lm}, gamma=1.0, seed=0, device="cpu", **kwargs)
        before = [p.detach().clone() for p in lm.parameters()]
        model.learn(128)
        assert any(not torch.equal(a, b) for a, b in zip(before, lm.parameters())), algo.__name__
        # SB3's Monitor saw whole episodes: 128 steps over 2 envs of at most T tokens each.
        episodes = list(model.ep_info_buffer)
        assert len(episodes) >= 128 // T - 2 and all(1 <= e["l"] <= T for e in episodes), algo.__name__
    venv.close()


def test_random_agent_under_time_limit_and_episode_statistics(toy_tok):
    """A time limit shorter than max_new_tokens truncates episodes the env would continue; the next
    reset starts a fresh one, and the statistics count every episode however it ended."""
    limit = 3
    env = gym.wrappers.RecordEpisodeStatistics(
        gym.wrappers.TimeLimit(gym.make(ENV_ID, **task(toy_tok) | {"max_new_tokens": 8}), max_episode_steps=limit)
    )
    env.action_space.seed(0)
    env.reset(seed=0)
    lengths, by_time_limit = [], 0
    for _ in range(90):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            lengths.append(info["episode"]["l"])
            if "score" in info:  # the env ended it (a stop token): the episode's return is its score
                assert info["episode"]["r"] == pytest.approx(info["score"])
            else:  # the time limit ended it: nothing was paid
                assert truncated and info["episode"]["l"] == limit and info["episode"]["r"] == 0.0
                by_time_limit += 1
            env.reset()
    assert len(lengths) == env.episode_count >= 90 // limit and max(lengths) <= limit
    assert by_time_limit > 0


def test_building_a_reward_model_and_loading_a_model_print_no_load_report(toy_tok, tmp_path, capfd):
    """A reward model's head is always new, so transformers prints a LOAD REPORT ("classifier.weight
    MISSING") and a "Loading weights" bar on every build; neither may reach a user's terminal.
    Weights missing beyond the head are still reported (as a warning)."""
    from transformers import BertConfig, BertForSequenceClassification

    from tokengym.models import load_causal_lm, make_tiny_causal_lm
    from tokengym.rewards.learned import new_reward_model

    lm_dir, bert_dir = tmp_path / "lm", tmp_path / "bert"
    _, lm = make_tiny_causal_lm(toy_tok, hidden=16, n_layers=1, n_heads=2)
    lm.save_pretrained(lm_dir)
    toy_tok.save_pretrained(lm_dir)
    cfg = dict(vocab_size=len(toy_tok), hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    BertForSequenceClassification(BertConfig(num_hidden_layers=1, **cfg)).bert.save_pretrained(bert_dir)
    toy_tok.save_pretrained(bert_dir)
    # transformers' log handler keeps the stderr it found at import (pytest's own capture, out of
    # capfd's reach), so its records are collected at the logger; progress bars go through capfd.
    records: list[str] = []
    collector = logging.Handler()
    collector.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(collector)
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_causal_lm(lm_dir)
            _, rm = new_reward_model(bert_dir, seed=0)
            new_reward_model(lm_dir, seed=0)  # a decoder base: its "score" head is new too
    finally:
        hf_logger.removeHandler(collector)
    out, err = capfd.readouterr()
    assert not records, records
    assert "LOAD REPORT" not in out + err and "MISSING" not in out + err and "Loading weights" not in out + err, out + err
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert rm.classifier.out_features == 1
    # The silence is specific: a base checkpoint that lacks encoder weights is named.
    bert2 = tmp_path / "bert2"
    (tmp_path / "bert2").mkdir()
    BertForSequenceClassification(BertConfig(num_hidden_layers=1, **cfg)).bert.save_pretrained(bert2)
    toy_tok.save_pretrained(bert2)
    config = BertConfig.from_pretrained(bert2)
    config.num_hidden_layers = 2
    config.save_pretrained(bert2)
    with pytest.warns(UserWarning, match=r"missing from the checkpoint.*encoder\.layer\.1"):
        new_reward_model(bert2, seed=0)

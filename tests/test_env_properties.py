"""Issue 9 property tests (hypothesis): any sequence of valid actions keeps observations inside the
observation space and ends episodes by ``max_new_tokens``; a seeded reset is deterministic; the
batched env keeps the same invariants row by row."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokengym.envs import BatchedTextEnv, TextGenerationEnv
from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer

TOK = make_toy_tokenizer()  # module level: hypothesis re-runs the test body, not fixtures
VOCAB = len(TOK)
EOS, PAD = TOK.eos_token_id, TOK.pad_token_id
STOPS = {EOS, PAD}  # the toy tokenizer's stop set: its EOS, and pad, which always ends an episode
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def n_words(prompt: str, response: str) -> float:
    return float(len(response.split()))


def single_env(T: int, P: int) -> TextGenerationEnv:
    return TextGenerationEnv(tokenizer=TOK, reward=n_words, prompts=TOY_PROMPTS, split=None, max_new_tokens=T,
                             max_prompt_tokens=P)


# Actions are drawn with the stop tokens over-represented, so short and long episodes both occur.
actions = st.one_of(st.sampled_from(sorted(STOPS)), st.integers(0, VOCAB - 1))


def check_row(ids: np.ndarray, mask: np.ndarray, P: int, T: int) -> int:
    """Layout invariants of one observation row; returns its response length."""
    assert ids.shape == mask.shape == (P + T,) and ids.dtype == mask.dtype == np.int64
    assert ((ids >= 0) & (ids < VOCAB)).all() and set(np.unique(mask)) <= {0, 1}
    prompt_mask, resp_mask = mask[:P], mask[P:]
    # prompt left-padded (zeros then ones), response right-padded (ones then zeros)
    assert (np.diff(prompt_mask) >= 0).all() and prompt_mask[-1] == 1
    assert (np.diff(resp_mask) <= 0).all()
    assert (ids[mask == 0] == PAD).all()
    return int(resp_mask.sum())


@PROPS
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 6), P=st.integers(1, 6),
       steps=st.lists(actions, min_size=1, max_size=30))
def test_single_env_valid_actions_keep_observations_in_space(seed, T, P, steps):
    env = single_env(T, P)
    assert set(env.stop_token_ids) == STOPS
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs) and check_row(obs["input_ids"], obs["attention_mask"], P, T) == 0
    length = 0
    for a in steps:
        assert env.action_space.contains(a)
        obs, reward, terminated, truncated, info = env.step(a)
        length += 1
        assert env.observation_space.contains(obs)
        assert check_row(obs["input_ids"], obs["attention_mask"], P, T) == length <= T
        assert not (terminated and truncated)
        assert terminated == (a in STOPS)  # a stop token ends the episode, also at the last step
        assert truncated == (length == T and a not in STOPS)  # max_new_tokens ends it otherwise
        if terminated or truncated:
            assert np.isfinite(reward) and info["num_tokens"] == length and info["stopped"] == terminated
            with pytest.raises(RuntimeError, match="reset"):
                env.step(a)
            obs, _ = env.reset()
            length = 0
        else:
            assert reward == 0.0


@PROPS
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 5), steps=st.lists(actions, min_size=0, max_size=6))
def test_seeded_reset_is_deterministic(seed, T, steps):
    a, b = single_env(T, 4), single_env(T, 4)
    obs_a, info_a = a.reset(seed=seed)
    obs_b, info_b = b.reset(seed=seed)
    assert info_a == info_b
    for k in obs_a:
        np.testing.assert_array_equal(obs_a[k], obs_b[k])
    # the same actions give the same trajectories, and the next unseeded reset draws the same prompt
    for act in steps:
        ra, rb = a.step(act), b.step(act)
        for k in ra[0]:
            np.testing.assert_array_equal(ra[0][k], rb[0][k])
        assert ra[1:4] == rb[1:4]
        if ra[2] or ra[3]:
            break
    assert a.reset()[1] == b.reset()[1]
    # reseeding an env that was used reproduces the first reset
    again = a.reset(seed=seed)
    for k in obs_a:
        np.testing.assert_array_equal(again[0][k], obs_a[k])


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), T=st.integers(1, 5), P=st.integers(1, 5),
       mode=st.sampled_from([AutoresetMode.DISABLED, AutoresetMode.NEXT_STEP]), data=st.data())
def test_batched_env_keeps_the_invariants_row_by_row(seed, n, T, P, mode, data):
    env = BatchedTextEnv(n, tokenizer=TOK, reward=n_words, prompts=TOY_PROMPTS, split=None, max_new_tokens=T,
                         max_prompt_tokens=P, autoreset_mode=mode)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    twin = BatchedTextEnv(n, tokenizer=TOK, reward=n_words, prompts=TOY_PROMPTS, split=None, max_new_tokens=T,
                          max_prompt_tokens=P, autoreset_mode=mode)
    np.testing.assert_array_equal(twin.reset(seed=seed)[0]["input_ids"], obs["input_ids"])  # deterministic
    lengths = np.zeros(n, dtype=int)
    restart = np.zeros(n, dtype=bool)
    for _ in range(data.draw(st.integers(1, 2 * T + 2), label="steps")):
        if mode == AutoresetMode.DISABLED and env.all_done:
            with pytest.raises(RuntimeError, match="reset"):
                env.step(np.full(n, PAD, dtype=np.int64))
            break
        act = np.asarray(data.draw(st.lists(actions, min_size=n, max_size=n), label="actions"), dtype=np.int64)
        active = env.active.copy()
        obs, rewards, terminated, truncated, info = env.step(act)
        assert env.observation_space.contains(obs)
        assert rewards.shape == terminated.shape == truncated.shape == (n,) and rewards.dtype == np.float32
        assert not (terminated & truncated).any()
        for i in range(n):
            if restart[i]:  # NEXT_STEP: this row was restarted, its action ignored
                lengths[i] = 0
                assert not terminated[i] and not truncated[i]
            elif active[i]:
                lengths[i] += 1
                assert terminated[i] == (act[i] in STOPS) and truncated[i] == (lengths[i] == T and act[i] not in STOPS)
            else:  # a finished row stays finished and unchanged (DISABLED)
                assert not terminated[i] and not truncated[i] and rewards[i] == 0
            assert check_row(obs["input_ids"][i], obs["attention_mask"][i], P, T) == lengths[i] <= T
            if not (terminated[i] or truncated[i]):
                assert rewards[i] == 0.0
        assert np.array_equal(env.response_lengths, lengths)
        restart = (terminated | truncated) if mode == AutoresetMode.NEXT_STEP else np.zeros(n, dtype=bool)

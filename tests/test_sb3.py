"""stable-baselines3 interop: the LM policy under SB3's PPO/A2C/TRPO, and the KL-penalty wrapper."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

from tokengym.agents.policy import response_forward, token_logprobs
from tokengym.agents.rollout import CachedSampler
from tokengym.agents.sb3 import KLPenaltyWrapper, LMActorCriticPolicy, last_token_forward
from tokengym.envs import BatchedTextEnv
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")

GOOD = ("token_share", {"target": "good"})


def make_env(tok, **kw):
    return gym.make("tokengym/TextGeneration-v0", tokenizer=tok, reward=GOOD, prompts=list(TOY_PROMPTS), split=None,
                    max_new_tokens=6, max_prompt_tokens=6, **kw)


def test_sb3_ppo_trains_with_callbacks_logger_and_evaluate_policy(toy_tok, make_toy_lm, tmp_path):
    lm = make_toy_lm()
    env = KLPenaltyWrapper(make_env(toy_tok), reference=copy.deepcopy(lm), policy=lm, beta=0.05)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": lm}, n_steps=32, batch_size=16, n_epochs=2,
                learning_rate=1e-3, gamma=1.0, seed=0, device="cpu")
    assert model.policy.lm is lm  # the wrapper's policy LM is the trained one
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))

    class Count(BaseCallback):
        steps = rollouts = 0

        def _on_step(self):
            Count.steps += 1
            return True

        def _on_rollout_end(self):
            Count.rollouts += 1

    eval_env = Monitor(KLPenaltyWrapper(make_env(toy_tok), reference=copy.deepcopy(lm), policy=model.policy, beta=0.05))
    eval_cb = EvalCallback(eval_env, n_eval_episodes=2, eval_freq=64, log_path=str(tmp_path / "eval"), verbose=0)
    before = [p.detach().clone() for p in lm.parameters()]
    model.learn(128, callback=[Count(), eval_cb])
    assert Count.steps == 128 and Count.rollouts == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, lm.parameters()))  # the LM itself was trained
    log = (tmp_path / "log" / "progress.csv").read_text()
    assert "train/approx_kl" in log and "train/clip_fraction" in log
    assert (tmp_path / "eval" / "evaluations.npz").is_file()
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=3)
    assert np.isfinite(mean) and np.isfinite(std)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert 0 <= int(action) < len(toy_tok)


def test_sb3_policy_logprob_equals_the_lm_logprob_of_the_same_token(toy_tok, toy_lm):
    """SB3 hands observations over as float tensors; the policy's log-prob of a token must equal the
    LM's (response_forward + token_logprobs on the whole sequence) at every response position."""
    _, lm = toy_lm
    env = BatchedTextEnv(4, tokenizer=toy_tok, reward=GOOD, prompts=["the movie", "i liked the film and", "a"],
                         split=None, max_new_tokens=5, max_prompt_tokens=6)
    batch = CachedSampler(lm).rollout(env, seed=0)
    P = batch.prompt_ids.shape[1]
    with torch.no_grad():
        logits, _ = response_forward(lm, batch.input_ids, batch.attention_mask, P, 1.0)
        ref = token_logprobs(logits, batch.response_ids, len(toy_tok))[0]
    space = gym.spaces.Dict({k: gym.spaces.Box(0, len(toy_tok) - 1, shape=(P + 5,), dtype=np.int64) for k in ("input_ids", "attention_mask")})
    policy = LMActorCriticPolicy(space, gym.spaces.Discrete(len(toy_tok)), lambda _: 1e-3, lm=lm)
    obs_ids, obs_mask, actions, expected = [], [], [], []
    for i in range(len(batch)):
        for t in range(int(batch.lengths[i])):
            ids = torch.cat([batch.prompt_ids[i], batch.response_ids[i]]).clone()
            mask = torch.cat([batch.prompt_mask[i], batch.response_mask[i].long()]).clone()
            ids[P + t :] = env.pad_token_id  # the env's observation before step t
            mask[P + t :] = 0
            obs_ids.append(ids)
            obs_mask.append(mask)
            actions.append(batch.response_ids[i, t])
            expected.append(ref[i, t])
    obs = {"input_ids": torch.stack(obs_ids).float(), "attention_mask": torch.stack(obs_mask).float()}  # as SB3's buffer
    with torch.no_grad():
        values, logp, entropy = policy.evaluate_actions(obs, torch.stack(actions).float())
    torch.testing.assert_close(logp, torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, torch.zeros(len(actions), 1))  # zero-initialised value head
    assert (entropy > 0).all()
    # the same distribution through SB3's predict path (int64 obs)
    with torch.no_grad():
        dist = policy.get_distribution({k: v.long() for k, v in obs.items()})
    torch.testing.assert_close(dist.log_prob(torch.stack(actions)), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_last_token_forward_ignores_padding_columns(toy_tok, toy_lm):
    _, lm = toy_lm
    ids = torch.tensor([[0, 0, 4, 5, 6, 0, 0], [0, 7, 8, 9, 10, 11, 0]])
    mask = (torch.arange(7) >= torch.tensor([[2], [1]])) & (torch.arange(7) < torch.tensor([[5], [6]]))
    logits, _ = last_token_forward(lm, ids, mask.long(), len(toy_tok))
    for row, (a, b) in enumerate([(2, 5), (1, 6)]):
        alone = lm(input_ids=ids[row : row + 1, a:b]).logits[0, -1, : len(toy_tok)]
        torch.testing.assert_close(logits[row], alone, atol=1e-5, rtol=1e-5)


def test_kl_wrapper_reports_zero_when_policy_equals_reference(toy_tok, make_toy_lm):
    lm = make_toy_lm()
    env = KLPenaltyWrapper(make_env(toy_tok), reference=copy.deepcopy(lm), policy=lm, beta=0.5)
    base = make_env(toy_tok)
    rng = np.random.default_rng(0)
    for ep in range(3):
        env.reset(seed=ep)
        base.reset(seed=ep)
        done = False
        while not done:
            a = int(rng.integers(4, len(toy_tok)))
            _, r, term, trunc, info = env.step(a)
            _, r_base, term_base, trunc_base, _ = base.step(a)
            assert info["kl"] == pytest.approx(0.0, abs=1e-5)
            assert r == pytest.approx(r_base, abs=1e-5)
            # the length limit ends the episode for real: reported as terminated, so SB3 does not bootstrap
            assert not trunc and term == (term_base or trunc_base) and info.get("truncated_by_length", False) == trunc_base
            done = term or trunc
        assert info["episode_kl"] == pytest.approx(0.0, abs=1e-4) and "score" in info


def test_kl_wrapper_penalty_and_reference_cache(toy_tok, make_toy_lm):
    lm, other = make_toy_lm(seed=0), make_toy_lm(seed=1)
    # constant log-probs: kl = 0.3 - (-0.7) = 1 per step, reward reduced by beta exactly
    env = KLPenaltyWrapper(make_env(toy_tok), reference=lambda o, a: -0.7, policy=lambda o, a: 0.3, beta=0.2)
    base = make_env(toy_tok)
    env.reset(seed=1)
    base.reset(seed=1)
    _, r, *_ , info = env.step(5)
    _, r_base, *_ = base.step(5)
    assert info["kl"] == pytest.approx(1.0) and r == pytest.approx(r_base - 0.2)
    # the reference's KV-cached log-probs equal fresh full forwards
    cached = KLPenaltyWrapper(make_env(toy_tok), reference=other, policy=lm, beta=1.0)
    fresh = KLPenaltyWrapper(make_env(toy_tok), reference=other, policy=lm, beta=1.0)
    fresh._ref.use_cache = False
    cached.reset(seed=3)
    fresh.reset(seed=3)
    for a in [5, 9, 12, 6, 7, 8]:
        _, _, term, trunc, i1 = cached.step(a)
        _, _, _, _, i2 = fresh.step(a)
        assert i1["kl"] == pytest.approx(i2["kl"], abs=1e-5) and abs(i1["kl"]) > 0
        if term or trunc:
            break
    with pytest.raises(RuntimeError, match="no policy"):
        w = KLPenaltyWrapper(make_env(toy_tok), reference=other)
        w.reset(seed=0)
        w.step(5)
    with pytest.raises(ValueError):
        KLPenaltyWrapper(make_env(toy_tok), reference=other, estimator="k2")


def test_kl_wrapper_reuses_the_rollout_forward_of_the_sb3_policy(toy_tok, make_toy_lm, monkeypatch):
    """During SB3's rollout the wrapper reads pi(a|s) from the policy's own forward: no second LM forward."""
    import tokengym.agents.sb3 as sb3

    lm = make_toy_lm()
    env = KLPenaltyWrapper(make_env(toy_tok), reference=copy.deepcopy(lm), policy=None, beta=0.1)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": lm}, n_steps=16, batch_size=16, n_epochs=1, gamma=1.0, seed=0, device="cpu")
    env.policy = model  # an SB3 model is accepted for its policy
    calls = []
    orig = sb3.last_token_forward
    monkeypatch.setattr(sb3, "last_token_forward", lambda *a, **k: calls.append(a[1].shape[0]) or orig(*a, **k))
    model.learn(16)
    # 16 rollout steps, the last step's bootstrap value, one training minibatch (length-limit ends are
    # terminal: SB3 does not bootstrap a value there)
    assert calls == [1] * 16 + [1] + [16]


@pytest.mark.parametrize("algo", ["a2c", "trpo"])
def test_sb3_a2c_and_trpo_run(toy_tok, make_toy_lm, algo):
    lm = make_toy_lm()
    env = KLPenaltyWrapper(make_env(toy_tok), reference=copy.deepcopy(lm), policy=lm, beta=0.05)
    if algo == "a2c":
        model = A2C(LMActorCriticPolicy, env, policy_kwargs={"lm": lm}, n_steps=8, gamma=1.0, seed=0, device="cpu")
    else:
        from sb3_contrib import TRPO

        # TRPO's Hessian-vector products need a double backward through attention: eager attention.
        model = TRPO(LMActorCriticPolicy, env, policy_kwargs={"lm": lm, "attn_implementation": "eager"},
                     n_steps=16, batch_size=16, gamma=1.0, seed=0, device="cpu")
    before = [p.detach().clone() for p in lm.parameters()]
    model.learn(32)
    assert any(not torch.equal(a, b) for a, b in zip(before, lm.parameters()))


def test_policy_refuses_bad_setup(toy_tok, make_toy_lm):
    env = make_env(toy_tok)
    with pytest.raises(ValueError, match="lm"):
        PPO(LMActorCriticPolicy, env, device="cpu")
    small = make_toy_lm()
    small.resize_token_embeddings(8)
    with pytest.raises(ValueError, match="mismatched"):
        PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": small}, device="cpu")


def test_prefix_sharing_gives_the_same_logits_and_gradients(toy_tok, make_toy_lm):
    """SB3 minibatches hold many steps of one episode; rows that are prefixes of another share its forward."""
    lm = make_toy_lm(n_layers=2)
    env = BatchedTextEnv(3, tokenizer=toy_tok, reward=GOOD, prompts=["the movie", "i liked the film and"], split=None,
                         max_new_tokens=5, max_prompt_tokens=6)
    batch = CachedSampler(lm).rollout(env, seed=1)
    P = batch.prompt_ids.shape[1]
    ids, mask = [], []
    for i in range(len(batch)):
        for t in range(int(batch.lengths[i])):  # every step's observation, shuffled below
            x = torch.cat([batch.prompt_ids[i], batch.response_ids[i]]).clone()
            m = torch.cat([batch.prompt_mask[i], batch.response_mask[i].long()]).clone()
            x[P + t :], m[P + t :] = env.pad_token_id, 0
            ids.append(x)
            mask.append(m)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    ids, mask = torch.stack(ids)[perm], torch.stack(mask)[perm]
    from tokengym.agents.sb3 import _prefix_carriers

    carriers, _, _ = _prefix_carriers(ids, mask)
    assert len(carriers) <= len(batch) < len(ids)
    results = []
    for share in (True, False):
        lm.zero_grad()
        logits, hidden = last_token_forward(lm, ids, mask, len(toy_tok), share_prefixes=share)
        (torch.log_softmax(logits, -1)[:, 5].sum() + hidden.pow(2).mean()).backward()
        results.append((logits.detach(), [p.grad.clone() for p in lm.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_sb3_save_and_load_round_trip(toy_tok, make_toy_lm, tmp_path):
    lm = make_toy_lm()
    env = make_env(toy_tok)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": lm}, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(16)
    model.save(tmp_path / "m.zip")
    again = PPO.load(tmp_path / "m.zip", env=env, device="cpu")
    obs = {k: torch.as_tensor(v)[None] for k, v in env.reset(seed=0)[0].items()}
    with torch.no_grad():
        a = model.policy.get_distribution(obs).distribution.logits
        b = again.policy.get_distribution(obs).distribution.logits
    torch.testing.assert_close(a, b)
    assert again.policy.lm is not lm  # a loaded model has its own LM

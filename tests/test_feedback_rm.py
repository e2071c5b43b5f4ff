"""Reward-model losses and training: K-wise = sum of pairwise gradients, a tiny BERT learns, folder format."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from tokengym.feedback.losses import best_of_n_loss, kwise_loss, pairwise_loss, pointwise_loss
from tokengym.feedback.rm_training import RewardModelTrainer, RMConfig, tiny_reward_model, train_reward_model
from tokengym.feedback.simulate import LabelSimulator, SimulatedAnnotator
from tokengym.feedback.store import FeedbackStore

POSITIVE = ["great", "wonderful", "superb", "lovely", "brilliant", "delightful"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "horrible", "dull"]
NEUTRAL = ["film", "plot", "actor", "scene", "music", "story", "camera", "ending"]


def tiny_bert(seed: int = 0):
    """A 2-layer BERT built in code with the MiniLM tokenizer."""
    return tiny_reward_model(hidden=32, layers=2, seed=seed)


def synthetic_judge(prompts, responses):
    """Gold: positive words minus negative words."""
    return [sum(w in POSITIVE for w in r.split()) - sum(w in NEGATIVE for w in r.split()) for r in responses]


def synthetic_store(path: Path, n_prompts: int = 30, k: int = 6, seed: int = 0) -> FeedbackStore:
    rng = np.random.default_rng(seed)
    store = FeedbackStore(path)
    pids = store.add_prompts([f"review number {i} says" for i in range(n_prompts)])
    rows = []
    for pid in pids:
        for _ in range(k):
            words = list(rng.choice(NEUTRAL, 4)) + list(rng.choice(POSITIVE, rng.integers(0, 3))) + \
                list(rng.choice(NEGATIVE, rng.integers(0, 3)))
            rng.shuffle(words)
            rows.append((pid, " ".join(words), "sample", {}, None, 0))
    store.add_candidates(rows)
    return store


def test_head_initialisation() -> None:
    _, model = tiny_bert()
    head = model.classifier
    assert float(head.bias.detach().abs().max()) == 0.0
    assert abs(float(head.weight.detach().std()) - 1 / np.sqrt(33)) < 0.1


def test_kwise_gradient_equals_sum_of_pairwise_gradients() -> None:
    tok, model = tiny_bert()
    trainer = RewardModelTrainer(tok, model, RMConfig(max_length=32))
    prompt = "the film was"
    ranked = ["wonderful and superb", "fine i guess", "long", "awful boring mess of a plot"]

    model.zero_grad()
    kwise_loss(trainer.rewards([prompt] * 4, ranked), reduction="sum").backward()
    kwise_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    for a, b in itertools.combinations(ranked, 2):  # each pair its own forward pass
        r = trainer.rewards([prompt, prompt], [a, b])
        pairwise_loss(r[:1], r[1:]).backward()  # grads accumulate: the sum over pairs
    for g_k, p in zip(kwise_grads, model.parameters()):
        torch.testing.assert_close(g_k, p.grad, rtol=1e-4, atol=1e-6)
    # the default (InstructGPT) reduction divides by C(K,2)
    r = torch.tensor([2.0, 1.0, 0.5])
    torch.testing.assert_close(kwise_loss(r), kwise_loss(r, reduction="sum") / 3)


def test_other_losses_by_hand() -> None:
    r = torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(best_of_n_loss(r, 0), -torch.log(torch.exp(r[0]) / torch.exp(r).sum()))
    torch.testing.assert_close(pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0),
                               torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(pointwise_loss(r, torch.zeros(3)), torch.tensor(2.0 / 3))


def test_tiny_bert_learns_synthetic_preferences(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "fb.sqlite")
    sim = LabelSimulator(store, synthetic_judge, seed=0)
    sim.label_pairs([SimulatedAnnotator("sim", accuracy=0.9)], sim.sample_pairs(400))
    cfg = RMConfig(epochs=3, lr=3e-3, batch_size=16, max_length=24, heldout_fraction=0.2)
    result = train_reward_model(store, tmp_path / "rm", cfg, judge=synthetic_judge, model=tiny_bert(), log=None)
    print(result.summary())
    assert result.heldout_gold_accuracy is not None and result.heldout_gold_accuracy > 0.7, result.summary()
    assert result.heldout_accuracy > 0.6

    # The folder is what LearnedReward loads: HF classifier + tokenizer + tokengym_reward.json.
    meta = json.loads((tmp_path / "rm" / "tokengym_reward.json").read_text())
    assert meta["input_format"] == "pair" and meta["std"] > 0 and "base_model" in meta
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert model.config.num_labels == 1
    from tokengym.rewards import LearnedReward

    reward = LearnedReward(tmp_path / "rm", max_length=24)
    cands = store.candidates(round=0)
    prompts = {p.id: p.text for p in store.prompts()}
    scores = reward([prompts[c.prompt_id] for c in cands], [c.text for c in cands])
    assert abs(scores.mean()) < 1e-3 and abs(scores.std() - 1) < 1e-3  # normalised on reference samples


def test_rankings_and_scores_train_too(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "fb.sqlite", n_prompts=12, k=4)
    sim = LabelSimulator(store, synthetic_judge, seed=1)
    sim.label_rankings([SimulatedAnnotator("r", accuracy=0.95)])
    sim.label_scores([SimulatedAnnotator("s", accuracy=0.95)])
    for loss in ("kwise", "best_of_n"):
        cfg = RMConfig(epochs=1, lr=1e-3, batch_size=8, max_length=24, ranking_loss=loss, heldout_fraction=0.25)
        result = train_reward_model(store, None, cfg, model=tiny_bert(), log=None)
        assert np.isfinite(result.losses).all() and result.n_heldout_pairs > 0


def test_bf16_training_autocasts_the_forwards_and_keeps_fp32_weights(tmp_path: Path) -> None:
    """``RMConfig.dtype="bf16"``: training forwards run in bf16, weights and scores stay fp32, it learns."""
    store = synthetic_store(tmp_path / "fb.sqlite")
    sim = LabelSimulator(store, synthetic_judge, seed=0)
    sim.label_pairs([SimulatedAnnotator("sim", accuracy=0.9)], sim.sample_pairs(400))
    tok, model = tiny_bert()
    seen: list[torch.dtype] = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    cfg = RMConfig(epochs=3, lr=3e-3, batch_size=16, max_length=24, heldout_fraction=0.2, dtype="bf16")
    result = train_reward_model(store, tmp_path / "rm", cfg, judge=synthetic_judge, model=(tok, model), log=None)
    n_steps = len(result.losses)
    assert set(seen[:n_steps]) == {torch.bfloat16}  # every training forward
    assert set(seen[n_steps:]) == {torch.float32}  # accuracy and normalisation scoring
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(result.losses))
    assert result.heldout_gold_accuracy is not None and result.heldout_gold_accuracy > 0.7, result.summary()
    meta = json.loads((tmp_path / "rm" / "tokengym_reward.json").read_text())
    assert meta["training"]["train_dtype"] == "bf16"


def test_rm_dtype_is_checked_and_auto_follows_the_pin() -> None:
    import pytest

    from tokengym.feedback.errors import FeedbackError

    with pytest.raises(FeedbackError, match="RMConfig.dtype"):
        RMConfig(dtype="fp16").validate()
    tok, model = tiny_bert()
    # tests/conftest.py pins "auto" to fp32, so the suite's numbers do not depend on the CPU
    assert RewardModelTrainer(tok, model, RMConfig()).autocast_dtype is None


def test_grouped_batches_keep_prompts_whole_and_score_each_response_once(tmp_path: Path) -> None:
    """group_by_prompt: every judgement of a prompt lands in one step, each distinct response is one
    forward row, and the loss equals scoring every pair separately (the shared rows change nothing)."""
    from tokengym.feedback.rm_training import PairItem, comparison_pairs, store_items

    store = synthetic_store(tmp_path / "fb.sqlite", n_prompts=10, k=5)
    sim = LabelSimulator(store, synthetic_judge, seed=0)
    sim.label_pairs([SimulatedAnnotator("sim", accuracy=0.9)], sim.sample_pairs(100))  # all C(5,2) of 10 prompts
    items = [it for _, it in store_items(store, ("compare",))]
    tok, net = tiny_bert()
    trainer = RewardModelTrainer(tok, net, RMConfig(batch_size=25, max_length=24, group_by_prompt=True, dtype="fp32"))
    batches = trainer.epoch_batches(items, np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(len(items)))  # each judgement once
    owner = {}
    for n, b in enumerate(batches):
        assert len(b) <= 25
        for i in b:
            assert owner.setdefault(items[i].prompt, n) == n  # a prompt never spans two steps

    rows = []
    real = trainer.rewards
    trainer.rewards = lambda p, r: rows.append(len(p)) or real(p, r)
    batch = [items[i] for i in batches[0]]
    grouped = trainer.batch_loss(batch)
    distinct = {(it.prompt, t) for it in batch for t in (it.chosen, it.rejected)}
    assert rows == [len(distinct)] and len(distinct) < 2 * len(batch)
    trainer.rewards = real
    separate = torch.stack([trainer.batch_loss([it]) for it in batch]).mean()
    torch.testing.assert_close(grouped, separate)
    assert all(isinstance(p, PairItem) for p in comparison_pairs(batch))

    # Without grouping, batches are plain shuffled slices of batch_size judgements.
    flat = RewardModelTrainer(tok, net, RMConfig(batch_size=25, max_length=24, dtype="fp32"))
    plain = flat.epoch_batches(items, np.random.default_rng(0))
    assert [len(b) for b in plain] == [25, 25, 25, 25]

"""LearnedReward: padding-side and batch-size invariance, normalisation, the fresh-model helper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
    LlamaConfig, LlamaForSequenceClassification,
)

from tokengym import rewards
from tokengym.models import default_encoder_dir
from tokengym.rewards.learned import (
    NORMALISATION_FILE, LearnedReward, encode_pairs, load_normalisation, new_reward_model, save_normalisation,
    save_reward_model,
)

PROMPTS = ["Write a review:", "Hi", "Tell me a story about a cat who", "Q: 2+2?", "Summarise", "x", "A long prompt " * 5]
RESPONSES = ["Great movie!", "Hello there, how are you today?", "sat.", "4", "It was fine. " * 6, "y", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_encoder_dir())


def _tiny(arch: str, vocab: int, pad: int):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, num_labels=1, pad_token_id=pad)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common)
        return BertForSequenceClassification(cfg)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, **common)
        return GPT2ForSequenceClassification(cfg)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=256, **common)
    return LlamaForSequenceClassification(cfg)


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def model_dir(request, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model = _tiny(request.param, len(tokenizer), tokenizer.pad_token_id)
    return save_reward_model(path / "rm", tokenizer, model, base_model=f"tiny-{request.param}")


def test_scores_do_not_depend_on_padding_side_or_batch_size(model_dir):
    right = LearnedReward(model_dir, batch_size=7, padding_side="right")
    ref = right(PROMPTS, RESPONSES)
    assert ref.shape == (7,) and np.isfinite(ref).all() and np.ptp(ref) > 0
    for side in ("left", "right"):
        for bs in (1, 5, 7):
            r = LearnedReward(model_dir, batch_size=bs, padding_side=side)
            np.testing.assert_allclose(r(PROMPTS, RESPONSES), ref, atol=1e-5, err_msg=f"{side=} {bs=}")


def test_decoder_reads_the_last_real_token_under_left_padding(tokenizer, tmp_path):
    # Unpadded single-sample scores are the ground truth; left padding must reproduce them exactly.
    model = _tiny("gpt2", len(tokenizer), tokenizer.pad_token_id).eval()
    r_single = []
    for p, resp in zip(PROMPTS, RESPONSES):
        enc = tokenizer([p], [resp], return_tensors="pt")  # list form: a bare "" pair would be dropped
        with torch.no_grad():
            r_single.append(model(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"]).logits[0, 0].item())
    batch = encode_pairs(tokenizer, model, PROMPTS, RESPONSES, padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any()  # really left-padded
    with torch.no_grad():
        got = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(got, r_single, atol=1e-5)


def test_normalisation_roundtrip(model_dir):
    r = LearnedReward(model_dir)
    raw = r.raw_scores(PROMPTS, RESPONSES)
    mean, std = r.fit_normalisation(PROMPTS, RESPONSES)
    assert mean == pytest.approx(raw.mean()) and std == pytest.approx(raw.std())
    np.testing.assert_allclose(r(PROMPTS, RESPONSES), (raw - mean) / std, atol=1e-6)
    save_normalisation(model_dir, mean, std)
    data = json.loads((model_dir / NORMALISATION_FILE).read_text())
    assert data["mean"] == mean and data["std"] == std and data["base_model"].startswith("tiny-")
    normed = rewards.resolve_reward("learned", path=model_dir)(PROMPTS, RESPONSES)
    assert normed.dtype == np.float32
    assert normed.mean() == pytest.approx(0.0, abs=1e-5) and normed.std() == pytest.approx(1.0, abs=1e-4)
    save_normalisation(model_dir, 0.0, 1.0)


def test_folder_path_resolves_to_learned(model_dir):
    r = rewards.resolve_reward(str(model_dir))
    assert r.name == "learned" and r(PROMPTS[:2], RESPONSES[:2]).shape == (2,)


def test_bad_normalisation_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive std"):
        save_normalisation(tmp_path, 0.0, 0.0)
    (tmp_path / NORMALISATION_FILE).write_text(json.dumps({"mean": 0.0, "std": -1.0}))
    with pytest.raises(ValueError, match="positive std"):
        load_normalisation(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        LearnedReward(tmp_path / "nothing")


def test_model_is_in_eval_mode_and_rejects_multi_label(tokenizer, tmp_path):
    model = _tiny("bert", len(tokenizer), tokenizer.pad_token_id)
    model.config.num_labels = 2
    model.classifier = torch.nn.Linear(32, 2)
    save_reward_model(tmp_path / "two", tokenizer, model)
    with pytest.raises(ValueError, match="2 labels"):
        LearnedReward(tmp_path / "two")


def test_new_reward_model_on_a_local_folder(tokenizer, tmp_path):
    base = tmp_path / "base"
    _tiny("bert", len(tokenizer), tokenizer.pad_token_id).save_pretrained(base)
    tokenizer.save_pretrained(base)
    tok, model = new_reward_model(base, seed=0)
    head = model.classifier
    assert head.out_features == 1 and torch.all(head.bias == 0)
    assert head.weight.std().item() == pytest.approx(1 / np.sqrt(33), rel=0.5)
    assert not model.training and model.config.pad_token_id == tok.pad_token_id


@pytest.mark.real_model
def test_real_minilm_reward_model(tmp_path):
    tok, model = new_reward_model(seed=0)
    hidden = model.config.hidden_size
    assert model.classifier.weight.shape == (1, hidden)
    assert model.classifier.weight.std().item() == pytest.approx(1 / np.sqrt(hidden + 1), rel=0.25)
    path = save_reward_model(tmp_path / "rm", tok, model, base_model="all-MiniLM-L6-v2")
    ref = LearnedReward(path, batch_size=7)(PROMPTS, RESPONSES)
    assert np.abs(ref).max() < 5  # small head init: unit-scale scores
    for side, bs in (("left", 1), ("left", 5), ("right", 3)):
        np.testing.assert_allclose(LearnedReward(path, batch_size=bs, padding_side=side)(PROMPTS, RESPONSES), ref, atol=1e-5)

"""Built-in rewards on known inputs with known outputs."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tokengym import rewards
from tokengym.rewards import RewardError


def score(spec, responses, prompts=None, **kw):
    prompts = prompts or ["p"] * len(responses)
    return rewards.resolve_reward(spec)(prompts, responses, **kw)


def test_vader_matches_the_library_compound():
    pos, neg = "This movie was wonderful and I loved it.", "This was a terrible, boring waste of time."
    out = score("vader", [pos, neg, ""])
    assert out[0] > 0.5 and out[1] < -0.3 and out[2] == 0.0
    sia = SentimentIntensityAnalyzer()
    np.testing.assert_allclose(out[:2], [sia.polarity_scores(pos)["compound"], sia.polarity_scores(neg)["compound"]], atol=1e-7)
    assert score(("vader", {"field": "pos"}), [pos])[0] == pytest.approx(sia.polarity_scores(pos)["pos"], abs=1e-7)


def test_bleu_and_chrf_match_sacrebleu_scaled_to_unit_interval():
    refs = [["the cat sat on the mat"], "a dog ran in the park today"]
    hyps = ["the cat sat on the mat", "a dog walked in a park"]
    bleu = score("bleu", hyps, references=refs)
    assert bleu[0] == pytest.approx(1.0)
    assert bleu[1] == pytest.approx(sacrebleu.sentence_bleu(hyps[1], [refs[1]]).score / 100, abs=1e-6)
    assert 0.0 < bleu[1] < 1.0
    chrf = score("chrf", hyps, references=refs)
    assert chrf[0] == pytest.approx(1.0)
    assert chrf[1] == pytest.approx(sacrebleu.sentence_chrf(hyps[1], [refs[1]]).score / 100, abs=1e-6)


def test_rouge_takes_best_reference_and_is_configurable():
    hyp = "the quick brown fox"
    out = score("rouge", [hyp], references=[["completely different words", "the quick brown fox jumps"]])
    expected = RougeScorer(["rougeL"], use_stemmer=True).score("the quick brown fox jumps", hyp)["rougeL"].fmeasure
    assert out[0] == pytest.approx(expected, abs=1e-6)
    assert score(("rouge", {"rouge_type": "rouge1", "measure": "precision"}), [hyp], references=["the quick brown fox jumps"])[0] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["bleu", "chrf", "rouge"])
def test_reference_metrics_name_the_sample_without_references(name):
    with pytest.raises(RewardError, match=rf"'{name}' on sample 1 .*'second'"):
        score(name, ["first", "second"], references=["first", None])
    with pytest.raises(RewardError, match=rf"'{name}'.*needs references"):
        score(name, ["first"])


def test_length_in_words_chars_and_tokens():
    assert score(("length", {"target": 4}), ["one two three four", "", "a b c d e f"]).tolist() == [0.0, -1.0, -0.5]
    assert score(("length", {"target": 2, "unit": "chars"}), ["abc"]).tolist() == [-0.5]
    meta = [{"num_tokens": 10}, {"num_tokens": 5}]
    assert score(("length", {"target": 10, "unit": "tokens"}), ["x", "y"], metadata=meta).tolist() == [0.0, -0.5]
    with pytest.raises(RewardError, match="'length' on sample 0.*num_tokens"):
        score(("length", {"unit": "tokens"}), ["x"], metadata=[{}])


def test_keyword_modes():
    texts = ["Great film, truly GREAT", "a greatness of sorts", "good and great and fun"]
    assert score(("keyword", {"keywords": "great"}), texts).tolist() == [1.0, 0.0, 1.0]
    assert score(("keyword", {"keywords": "great", "mode": "count"}), texts).tolist() == [2.0, 0.0, 1.0]
    assert score(("keyword", {"keywords": ["great", "fun"], "mode": "fraction"}), texts).tolist() == [0.5, 0.0, 1.0]
    assert score(("keyword", {"keywords": ["great", "fun"], "mode": "all"}), texts).tolist() == [0.0, 0.0, 1.0]
    assert score(("keyword", {"keywords": r"great\w+", "regex": True}), texts).tolist() == [0.0, 1.0, 0.0]
    assert score(("keyword", {"keywords": "great", "case_sensitive": True, "mode": "count"}), texts).tolist() == [0.0, 0.0, 1.0]


def test_eos_uses_metadata_stopped():
    meta = [{"stopped": True}, {"stopped": False}]
    assert score("eos", ["a", "b"], metadata=meta).tolist() == [1.0, -1.0]
    assert score(("eos", {"bonus": 0.5, "penalty": 0.0}), ["a", "b"], metadata=meta).tolist() == [0.5, 0.0]
    with pytest.raises(RewardError, match="'eos'.*no metadata"):
        score("eos", ["a"])


def test_token_share():
    assert score("token_share", ["the the cat", "The end", ""]).tolist() == pytest.approx([2 / 3, 0.5, 0.0])
    assert score(("token_share", {"target": "the", "case_sensitive": True}), ["The the"]).tolist() == [0.5]
    assert score(("token_share", {"target": "a", "unit": "chars"}), ["aab", ""]).tolist() == pytest.approx([2 / 3, 0.0])
    with pytest.raises(ValueError, match="one character"):
        rewards.make("token_share", target="ab", unit="chars")

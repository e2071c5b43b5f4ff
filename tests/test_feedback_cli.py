"""The feedback subcommands end to end, with tiny models saved to local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokengym.feedback.cli import main
from tokengym.feedback.rm_training import tiny_reward_model
from tokengym.feedback.store import FeedbackStore
from tokengym.models import make_tiny_causal_lm

WORDS = ["great fun", "awful and boring", "lovely", "terrible", "fine", "wonderful superb", "bad", "ok"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    tok, lm = make_tiny_causal_lm(seed=0)
    lm.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    rtok, rm = tiny_reward_model(seed=0)
    rm.save_pretrained(root / "encoder")
    rtok.save_pretrained(root / "encoder")
    return root / "policy", root / "encoder"


def test_candidates_command(tmp_path: Path, tiny_dirs, capsys) -> None:
    (tmp_path / "prompts.txt").write_text("The film was\nMy dinner was\n")
    store = str(tmp_path / "fb.sqlite")
    code = main(["candidates", "--store", store, "--prompts", str(tmp_path / "prompts.txt"), "--per-prompt", "3",
                 "--strategies", "greedy,top_k:5,top_p:0.8", "--model", str(tiny_dirs[0]), "--max-new-tokens", "4"])
    assert code == 0 and "wrote 6 candidates for 2 prompts" in capsys.readouterr().out
    with FeedbackStore(store) as s:
        assert [c.strategy for c in s.candidates()] == ["greedy", "top_k", "top_p"] * 2


def test_simulate_train_export_import(tmp_path: Path, tiny_dirs, capsys) -> None:
    store = str(tmp_path / "fb.sqlite")
    with FeedbackStore(store) as s:
        for i in range(8):
            pid = s.add_prompt(f"review {i}:")
            for j, w in enumerate(WORDS):
                s.add_candidate(pid, f"the movie was {w} {i} {j}", "sample")
    assert main(["simulate-labels", "--store", store, "--pairs", "150", "--annotators", "2",
                 "--disagreement", "0.3", "--judge", "vader"]) == 0
    assert "wrote 300 simulated compare judgements" in capsys.readouterr().out
    assert main(["agreement", "--store", store, "--kind", "compare"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["annotators"] == ["sim-0", "sim-1"] and 0.5 < report["percent_agreement"] <= 1

    assert main(["train-rm", "--store", store, "--out", str(tmp_path / "rm"), "--base-model", str(tiny_dirs[1]),
                 "--lr", "1e-3", "--batch-size", "16", "--max-length", "32", "--heldout", "0.25",
                 "--gold", "vader"]) == 0
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy:" in out and "vs gold judge vader" in out
    assert json.loads((tmp_path / "rm" / "tokengym_reward.json").read_text())["base_model"] == str(tiny_dirs[1])

    assert main(["feedback-export", "--store", store, "--out", str(tmp_path / "fb.jsonl")]) == 0
    assert main(["feedback-import", "--store", str(tmp_path / "copy.sqlite"), str(tmp_path / "fb.jsonl")]) == 0
    assert "300 comparison(s)" in capsys.readouterr().out


def test_refusals_exit_2_with_the_problem_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "junk.sqlite").write_bytes(b"garbage" * 1000)
    assert main(["feedback-export", "--store", str(tmp_path / "junk.sqlite"), "--out", str(tmp_path / "x")]) == 2
    assert "NotAFeedbackStoreError" in capsys.readouterr().err
    assert main(["train-rm", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "rm")]) == 2
    assert "no feedback store" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()

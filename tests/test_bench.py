"""``tokengym bench``: equal token budgets, JSON that combines across invocations, Markdown table, PNG."""

from __future__ import annotations

import argparse
import json

import pytest

from tokengym import compare as bench

pytestmark = pytest.mark.usefixtures("single_thread")


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.add_commands(sub)
    return parser.parse_args(["bench", *argv])


def test_bench_toy_runs_combine_and_render(tmp_path):
    common = ["--model", "toy", "--seeds", "1", "--budget", "96", "--batch-size", "8", "--max-new-tokens", "4",
              "--eval-prompts", "8", "--out", str(tmp_path)]
    args = parse(["--algos", "ppo,grpo,sb3-ppo", *common])
    assert args.func is bench.bench_command
    bench.run(args, command="tokengym bench first")
    bench.run(parse(["--algos", "reinforce", *common]), command="tokengym bench second")
    data = json.loads((tmp_path / "algos.json").read_text())
    assert sorted(r["algo"] for r in data["runs"]) == ["grpo", "ppo", "reinforce", "sb3-ppo"]
    for r in data["runs"]:
        assert 96 <= r["tokens"] < 96 + 8 * 4 + 1  # equal budgets, overshoot at most one rollout
        assert r["curve"] and r["curve"][-1]["tokens"] == r["tokens"] or r["algo"].startswith("sb3")
        assert set(r["final"]) >= {"proxy_score", "gold_score", "kl_to_reference", "kl_to_reference_k3", "mean_length"}
    assert abs(data["initial"]["kl_to_reference"]) < 1e-3  # the policy is the reference
    md = (tmp_path / "algos.md").read_text()
    assert "| ppo | 1 |" in md and "| sb3-ppo | 1 |" in md and "(initial policy)" in md
    assert "tokengym bench first" in md and "tokengym bench second" in md
    assert (tmp_path / "algos.png").stat().st_size > 1000


def test_bench_rejects_unknown_algorithms(tmp_path):
    with pytest.raises(SystemExit, match="unknown algorithm"):
        bench.run(parse(["--algos", "ppo,dqn", "--model", "toy", "--out", str(tmp_path)]))

"""``tokengym bench``: equal token budgets, held-out checkpoints for matched-KL tables, best-of-n,
confidence intervals, resumable JSON that never mixes settings, Markdown and PNG."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokengym import benchstats
from tokengym import compare as bench

pytestmark = pytest.mark.usefixtures("single_thread")

COMMON = ["--model", "toy", "--budget", "96", "--batch-size", "8", "--max-new-tokens", "4", "--eval-prompts", "8",
          "--eval-points", "2", "--best-of-n", "4"]


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.add_commands(sub)
    return parser.parse_args(["bench", *argv])


def test_bench_toy_runs_combine_and_render(tmp_path):
    common = [*COMMON, "--seeds", "1", "--out", str(tmp_path)]
    args = parse(["--algos", "ppo,grpo,sb3-ppo", *common])
    assert args.func is bench.bench_command
    bench.run(args, command="tokengym bench first")
    bench.run(parse(["--algos", "reinforce", *common]), command="tokengym bench second")
    data = json.loads((tmp_path / "algos.json").read_text())
    assert data["settings"]["env"] == "tokengym/PositiveReview-v0"  # toy models get the VADER-paid task
    assert sorted(r["algo"] for r in data["runs"]) == ["grpo", "ppo", "reinforce", "sb3-ppo"]
    for r in data["runs"]:
        assert 96 <= r["tokens"] < 96 + 8 * 4 + 1  # equal budgets, overshoot at most one rollout
        assert r["curve"] and r["curve"][-1]["tokens"] == r["tokens"] or r["algo"].startswith("sb3")
        assert all("wall_s" in c for c in r["curve"])
        assert set(r["final"]) >= {"proxy_score", "gold_score", "kl_to_reference", "kl_to_reference_k3", "mean_length"}
        # --eval-points 2: one held-out evaluation halfway, one at the end
        assert len(r["checkpoints"]) == 1 and 48 <= r["checkpoints"][0]["tokens"] < 96
    assert abs(data["initial"]["kl_to_reference"]) < 1e-3  # the policy is the reference
    assert [p["n"] for p in data["best_of_n"]] == [1, 2, 4]
    assert data["best_of_n"][0]["kl"] == 0 and data["best_of_n"][2]["kl"] == pytest.approx(math.log(4) - 0.75)
    assert "cpu_model" in data["machine"]
    md = (tmp_path / "algos.md").read_text()
    assert "| ppo | 1 |" in md and "| sb3-ppo | 1 |" in md and "(initial policy)" in md and "best-of-4" in md
    assert "Gold score at matched KL" in md and "| best-of-n |" in md
    assert "tokengym bench first" in md and "tokengym bench second" in md
    assert (tmp_path / "algos.png").stat().st_size > 1000


def test_bench_trains_sb3_contrib_trpo(tmp_path, monkeypatch):
    """sb3-trpo runs end to end on the toy setup, gets its row, and its natural-gradient steps move the LM."""
    import torch

    moved = []
    real = bench.train_sb3

    def checked(algo, model, *a, **k):
        before = [p.detach().clone() for p in model.parameters()]
        res = real(algo, model, *a, **k)
        assert res["policy"] is model and model.config._attn_implementation == "eager"  # double backward
        moved.append(any(not torch.equal(b, p) for b, p in zip(before, model.parameters())))
        return res

    monkeypatch.setattr(bench, "train_sb3", checked)
    data = bench.run(parse(["--algos", "sb3-trpo", *COMMON, "--seeds", "1", "--out", str(tmp_path)]))
    assert moved == [True]  # a TRPO whose line search never accepted a step would leave the weights as they were
    assert data == json.loads((tmp_path / "algos.json").read_text())
    [r] = data["runs"]
    assert r["algo"] == "sb3-trpo" and 96 <= r["tokens"] < 96 + 8 * 4 + 1  # the same generated-token budget
    assert r["curve"] and len(r["checkpoints"]) == 1
    assert set(r["final"]) >= {"proxy_score", "gold_score", "kl_to_reference"}
    assert "| sb3-trpo | 1 |" in (tmp_path / "algos.md").read_text()


def test_a_killed_bench_continues_where_it_stopped(tmp_path, monkeypatch):
    argv = ["--algos", "reinforce,a2c", *COMMON, "--seeds", "2", "--out", str(tmp_path)]
    trained = []
    real = bench.train_tokengym

    def dies_on_third(algo, *a, **k):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append((algo, a[4]))
        return real(algo, *a, **k)

    monkeypatch.setattr(bench, "train_tokengym", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        bench.run(parse(argv))
    done = json.loads((tmp_path / "algos.json").read_text())
    assert [(r["algo"], r["seed"]) for r in done["runs"]] == [("reinforce", 0), ("a2c", 0)]
    trained.clear()
    monkeypatch.setattr(bench, "train_tokengym", lambda algo, *a, **k: trained.append((algo, a[4])) or real(algo, *a, **k))
    bench.run(parse(argv))
    assert trained == [("reinforce", 1), ("a2c", 1)]  # only what the killed run had not finished
    data = json.loads((tmp_path / "algos.json").read_text())
    assert sorted((r["algo"], r["seed"]) for r in data["runs"]) == [("a2c", 0), ("a2c", 1), ("reinforce", 0), ("reinforce", 1)]
    assert data["runs"][:2] == done["runs"]  # the finished runs were kept as they were


def test_results_of_other_settings_are_refused_not_mixed(tmp_path):
    bench.run(parse(["--algos", "reinforce", *COMMON, "--seeds", "1", "--out", str(tmp_path)]))
    before = (tmp_path / "algos.json").read_bytes()
    with pytest.raises(FileExistsError, match="other settings .*lr"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--seeds", "1", "--lr", "0.5", "--out", str(tmp_path)]))
    assert (tmp_path / "algos.json").read_bytes() == before
    # The precision is a setting too, resolved to what ran ("auto" is fp32 under the suite's pin):
    # seeds measured in bf16 on one machine are never mixed with fp32 seeds from another.
    assert json.loads(before)["settings"]["dtype"] == "fp32"
    with pytest.raises(FileExistsError, match="other settings .*dtype"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--seeds", "1", "--dtype", "bf16", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="--dtype"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--dtype", "fp16", "--out", str(tmp_path)]))
    assert (tmp_path / "algos.json").read_bytes() == before
    (tmp_path / "mine.json").write_text('{"my": "data"}')
    with pytest.raises(FileExistsError, match="not a tokengym bench result"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--name", "mine", "--out", str(tmp_path)]))
    assert (tmp_path / "mine.json").read_text() == '{"my": "data"}'
    (tmp_path / "notes.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="notes.md .* not from a tokengym bench"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--name", "notes", "--out", str(tmp_path)]))
    assert (tmp_path / "notes.md").read_text() == "my notes"


def test_runs_paid_by_another_build_of_the_reward_model_are_refused(tmp_path, monkeypatch):
    from tokengym.feedback import default_rm

    # The fingerprint hashes the weights: the same recipe built twice (bf16 on one machine, fp32 on
    # another) gives two fingerprints, one build read twice gives one.
    import torch
    from safetensors.torch import save_file

    builds = []
    for i, weight in enumerate((0.25, 0.5)):
        folder = tmp_path / f"rm{i}"
        folder.mkdir()
        save_file({"score.weight": torch.full((1, 4), weight)}, folder / "model.safetensors")
        (folder / "build.json").write_text("{}")
        builds.append(folder)
    assert default_rm.fingerprint(builds[0]) == default_rm.fingerprint(builds[0]) != default_rm.fingerprint(builds[1])
    # Only a task paid by the learned reward has one, looked up through the cached build.
    monkeypatch.setattr(default_rm, "ensure_reward_model", lambda progress=False: builds[0])
    assert bench.reward_model_of("tokengym/PositiveReview-v1") == default_rm.fingerprint(builds[0])
    assert bench.reward_model_of("tokengym/PositiveReview-v0") is None
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "reward_model_of", lambda env, progress=False: default_rm.fingerprint(builds[0]))
    bench.run(parse(["--algos", "reinforce", *COMMON, "--seeds", "1", "--out", str(out)]))
    before = (out / "algos.json").read_bytes()
    assert json.loads(before)["settings"]["reward_model"] == default_rm.fingerprint(builds[0])
    assert "reward model weights" in (out / "algos.md").read_text()
    monkeypatch.setattr(bench, "reward_model_of", lambda env, progress=False: default_rm.fingerprint(builds[1]))
    with pytest.raises(FileExistsError, match="other settings .*reward_model"):
        bench.run(parse(["--algos", "reinforce", *COMMON, "--seeds", "2", "--out", str(out)]))
    assert (out / "algos.json").read_bytes() == before


def test_an_algo_at_lr_variant_trains_at_its_own_rate_as_its_own_row(tmp_path, monkeypatch):
    from tokengym.agents import ReinforceAgent

    rates = []
    real_init = ReinforceAgent.__init__

    def spy(self, env, model, cfg):
        rates.append(cfg.learning_rate)
        real_init(self, env, model, cfg)

    monkeypatch.setattr(ReinforceAgent, "__init__", spy)
    bench.run(parse(["--algos", "reinforce,reinforce@2.5E-2", *COMMON, "--seeds", "1", "--best-of-n", "0",
                     "--out", str(tmp_path)]))
    assert rates == [1e-2, 0.025]  # --lr (toy default), then the variant's
    data = json.loads((tmp_path / "algos.json").read_text())
    assert [r["algo"] for r in data["runs"]] == ["reinforce", "reinforce@0.025"]  # one canonical label
    md = (tmp_path / "algos.md").read_text()
    assert "| reinforce | 1 |" in md and "| reinforce@0.025 | 1 |" in md
    assert "{" not in md.split("Produced by")[0]  # every caption field filled in
    # Rerun with the same variant typed another way: already measured, nothing trains.
    bench.run(parse(["--algos", "reinforce@0.025", *COMMON, "--seeds", "1", "--best-of-n", "0", "--out", str(tmp_path)]))
    assert len(rates) == 2
    for bad, match in (("rloo@fast", "after '@' must be a number"), ("rloo@-1", "must be > 0"),
                       ("dqn@1e-3", "unknown algorithm 'dqn'"), ("sb3-trpo@1e-3", "no policy learning rate")):
        with pytest.raises(ValueError, match=match):
            bench.run(parse(["--algos", bad, *COMMON, "--out", str(tmp_path / "bad")]))
    assert not (tmp_path / "bad").exists()


def test_bench_rejects_bad_flags(tmp_path):
    with pytest.raises(ValueError, match="--algos: unknown algorithm"):
        bench.run(parse(["--algos", "ppo,dqn", "--model", "toy", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="--kl-levels"):
        bench.run(parse(["--kl-levels", "1,x", "--model", "toy", "--out", str(tmp_path)]))
    assert not (tmp_path / "algos.json").exists()


def test_bootstrap_interval_and_iqm():
    x = [0.1, 0.5, 0.4, 0.3]
    low, high = benchstats.bootstrap_ci(x)
    assert low <= np.mean(x) <= high and (low, high) == benchstats.bootstrap_ci(x)  # seeded
    assert min(x) <= low and high <= max(x)
    assert benchstats.bootstrap_ci([2.0]) == (2.0, 2.0)
    assert benchstats.iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # the middle two
    assert benchstats.iqm([1, 2, 100, 3, 4, 5, 6, 7]) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert benchstats.iqm([0, 1, 10]) == pytest.approx((0.25 * 0 + 1 + 0.25 * 10) / 1.5)
    s = benchstats.summary([0.2, 0.4, float("nan")])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.3)


def test_score_at_matched_kl_interpolates_and_never_extrapolates():
    kls, scores = [0.0, 1.0, 3.0, 2.5, 5.0], [0.1, 0.3, 0.7, 0.6, 0.9]
    assert benchstats.score_at_kl(kls, scores, 0.5) == pytest.approx(0.2)
    assert benchstats.score_at_kl(kls, scores, 2.0) == pytest.approx(0.5)  # first crossing, between 1 and 3
    assert benchstats.score_at_kl(kls, scores, 6.0) is None
    assert benchstats.score_at_kl([1.0, 2.0], [0.1, 0.2], 0.5) is None  # starts above the level


def test_results_run_side_by_side_merge_only_when_settings_match():
    from tokengym.compare_report import merge_results

    def part(runs, lr=1e-2):
        return {"settings": {"lr": lr}, "commands": [f"bench {runs}"], "initial": {"gold_score": 0.1},
                "best_of_n": None, "runs": [{"algo": a, "seed": s} for a, s in runs]}

    merged = merge_results([part([("ppo", 0), ("ppo", 1)]), part([("rloo@0.02", 0)])])
    assert [(r["algo"], r["seed"]) for r in merged["runs"]] == [("ppo", 0), ("ppo", 1), ("rloo@0.02", 0)]
    assert len(merged["commands"]) == 2 and merged["initial"] == {"gold_score": 0.1}
    with pytest.raises(ValueError, match="other settings .*lr"):
        merge_results([part([("ppo", 0)]), part([("rloo", 0)], lr=0.5)])
    # One part may measure the best-of-n baseline while the others skip it; different n are refused.
    with_bon = part([("rloo", 0)])
    with_bon["settings"]["best_of_n"], with_bon["best_of_n"] = 16, {"n": [1, 16]}
    skip = part([("ppo", 0)])
    skip["settings"]["best_of_n"] = 0
    merged = merge_results([skip, with_bon])
    assert merged["settings"]["best_of_n"] == 16 and merged["best_of_n"] == {"n": [1, 16]}
    other = part([("ppo", 1)])
    other["settings"]["best_of_n"] = 8
    with pytest.raises(ValueError, match="different best-of-n"):
        merge_results([with_bon, other])
    with pytest.raises(ValueError, match="ppo seed 0 is in more than one"):
        merge_results([part([("ppo", 0)]), part([("ppo", 0)])])


@pytest.mark.parametrize("flag", [["--lrs", "-1"], ["--lrs", "x"], ["--rm-batch-sizes", "0"], ["--group", "yes"],
                                  ["--candidates", "9"]])
def test_annotation_budget_refuses_bad_flags_before_any_work(tmp_path, flag):
    script = Path(__file__).resolve().parents[1] / "bench" / "annotation_budget.py"
    cache = tmp_path / "samples.json"
    proc = subprocess.run([sys.executable, str(script), *flag, "--samples-cache", str(cache), "--name", "t"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert flag[0] in proc.stderr.splitlines()[-1]
    assert not cache.exists() and list(tmp_path.iterdir()) == []


def test_a_benchmark_resumed_on_another_machine_keeps_each_runs_machine(tmp_path, monkeypatch):
    import tokengym.hardware as hardware

    args = ["--algos", "reinforce", *COMMON, "--best-of-n", "0", "--out", str(tmp_path)]
    bench.run(parse([*args, "--seeds", "1"]))
    first = json.loads((tmp_path / "algos.json").read_text())["machines"][0]
    monkeypatch.setattr(hardware, "hardware_record", lambda *a, **k: {"cpu_model": "another CPU", "cpus": 64})
    bench.run(parse([*args, "--seeds", "2"]))  # seed 0 is measured: only seed 1 runs, on "another CPU"
    data = json.loads((tmp_path / "algos.json").read_text())
    assert data["machines"] == [first, {"cpu_model": "another CPU", "cpus": 64}]
    assert [(r["seed"], r["machine"]) for r in data["runs"]] == [(0, 0), (1, 1)]
    md = (tmp_path / "algos.md").read_text()
    assert "Machine 1 (reinforce seeds 0)" in md and "Machine 2 (reinforce seeds 1)" in md and "another CPU" in md


def test_merged_results_keep_each_runs_machine():
    from tokengym.compare_report import merge_results

    a = {"settings": {"lr": 1}, "runs": [{"algo": "ppo", "seed": 0}], "machine": {"cpu_model": "A"}}  # older file
    b = {"settings": {"lr": 1}, "runs": [{"algo": "ppo", "seed": 1, "machine": 1}, {"algo": "ppo", "seed": 2, "machine": 0}],
         "machines": [{"cpu_model": "A"}, {"cpu_model": "B"}]}
    merged = merge_results([a, b])
    assert merged["machines"] == [{"cpu_model": "A"}, {"cpu_model": "B"}]
    assert [(r["seed"], merged["machines"][r["machine"]]["cpu_model"]) for r in merged["runs"]] == [(0, "A"), (1, "B"), (2, "A")]


def test_bench_ppo_runs_without_the_kl_stop_so_every_iteration_of_the_budget_updates(toy_tok, toy_lm):
    from tokengym.agents import PPOConfig
    from tokengym.envs import BatchedTextEnv
    from tokengym.testing import TOY_PROMPTS

    assert PPOConfig().kl_stop is not None  # the main job's default stops; the benchmark must not
    args = parse([*COMMON, "--batch-size", "4"])
    args.lora_r, args.lr, args.dtype = 0, 1e-2, "fp32"  # what the command resolves for the toy model
    env = BatchedTextEnv(num_envs=4, tokenizer=toy_tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=3,
                         max_prompt_tokens=4, reward=lambda p, r: 0.0)
    agent = bench.make_agent("ppo", env, toy_lm[1], args, seed=0)
    assert agent.config.kl_stop is None

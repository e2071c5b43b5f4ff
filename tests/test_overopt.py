"""``tokengym overopt``: Gao et al.'s fits recover known coefficients, best-of-n is exact, and a
CI-sized run writes its table, JSON and plot."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tokengym import overopt
from tokengym.cli import main
import yaml

from tokengym.testing import tiny_train_config


def write_config(folder: Path, **overrides) -> None:
    """``folder/c.yaml``: the toy task with a tiny saved model, 4 episodes a batch, 3 new tokens."""
    data = tiny_train_config(folder, max_new_tokens=3, eval_episodes=4, **overrides,
                             ppo={"batch_size": 4, "minibatch_size": 4, "micro_batch_size": 4, "lora_r": 0,
                                  "learning_rate": 1e-3})
    for key in ("iterations", "output_dir"):  # the commands' flags say these
        data.pop(key)
    (folder / "c.yaml").write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(("a", "b"), [(0.8, 0.3), (0.5, 0.05), (1.2, 0.9)])
def test_rl_fit_recovers_known_coefficients(a, b):
    d = np.linspace(0.0, 3.0, 12)
    rng = np.random.default_rng(0)
    gain = overopt.rl_form(d, a, b) + rng.normal(0, 1e-3, d.shape)
    fa, fb = overopt.fit_rl(d, gain)
    assert fa == pytest.approx(a, abs=0.01) and fb == pytest.approx(b, abs=0.01)
    peak = overopt.rl_peak(fa, fb)
    # The closed-form peak is where the fitted curve is highest on a fine grid.
    grid = np.linspace(1e-6, 3 * peak, 300001)
    assert peak == pytest.approx(grid[np.argmax(overopt.rl_form(grid, fa, fb))], rel=1e-3)


@pytest.mark.parametrize(("a", "b"), [(0.6, 0.2), (1.0, 0.05)])
def test_bon_fit_recovers_known_coefficients(a, b):
    d = np.sqrt([overopt.best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128)])
    fa, fb = overopt.fit_bon(d, overopt.bon_form(d, a, b))
    assert fa == pytest.approx(a, abs=1e-9) and fb == pytest.approx(b, abs=1e-9)
    assert overopt.bon_peak(fa, fb) == pytest.approx(a / (2 * b))


def test_no_peak_while_gold_still_rises():
    assert overopt.rl_peak(1.0, -0.1) is None and overopt.bon_peak(1.0, 0.0) is None


def test_best_of_n_kl_formula():
    assert overopt.best_of_n_kl(1) == 0.0
    assert overopt.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert overopt.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_n_expectation_is_exact_over_all_subsets():
    rng = np.random.default_rng(1)
    proxy, gold = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    for n in range(1, 7):
        brute = np.mean([np.mean([g[list(s)][np.argmax(p[list(s)])] for s in itertools.combinations(range(6), n)])
                         for p, g in zip(proxy, gold)])
        assert overopt.best_of_n_expectation(proxy, gold, n) == pytest.approx(brute, abs=1e-12)
    assert overopt.best_of_n_expectation(proxy, gold, 1) == pytest.approx(gold.mean())
    assert overopt.best_of_n_expectation(proxy, proxy, 6) == pytest.approx(proxy.max(1).mean())
    with pytest.raises(ValueError, match="n must be in 1..6"):
        overopt.best_of_n_expectation(proxy, gold, 7)


def test_overopt_command_writes_its_study(tmp_path: Path, capsys):
    write_config(tmp_path, gold_reward="eos")
    out = tmp_path / "study"
    code = main(["overopt", "--config", str(tmp_path / "c.yaml"), "--iterations", "4", "--eval-every", "2",
                 "--samples-per-prompt", "4", "--output-dir", str(out), "--no-progress"])
    assert code == 0
    result = json.loads((out / "overopt.json").read_text())
    assert [p["iteration"] for p in result["rl"]["points"]] == [0, 2, 4]
    assert [p["n"] for p in result["best_of_n"]["points"]] == [1, 2, 4]
    assert result["best_of_n"]["points"][0]["kl"] == 0.0
    assert {"a", "b", "fitted_peak_kl"} <= result["rl"].keys() and "cpu_model" in result["machine"]
    assert (out / "overopt.png").stat().st_size > 0
    assert "| PPO |" in (out / "overopt.md").read_text() and "best-of-n" in capsys.readouterr().out
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in heldout] == [0, 2, 4]


def test_overopt_refuses_bad_flags_before_work(tmp_path: Path, capsys):
    out = tmp_path / "study"
    assert main(["overopt", "--eval-every", "0", "--output-dir", str(out)]) == 2
    assert "--eval-every" in capsys.readouterr().err and not out.exists()
    assert main(["overopt", "--samples-per-prompt", "1", "--output-dir", str(out)]) == 2
    assert "--samples-per-prompt" in capsys.readouterr().err and not out.exists()


def test_held_out_evaluations_do_not_change_the_training_run(tmp_path: Path):
    """eval_every samples with its own generator on the test env: the training numbers are the same."""
    write_config(tmp_path)
    rows = {}
    for every in (0, 1):
        out = tmp_path / f"run{every}"
        assert main(["train", "--config", str(tmp_path / "c.yaml"), "--iterations", "3", "--output-dir", str(out),
                     "--set", f"eval_every={every}", "--no-progress"]) == 0
        rows[every] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        points = [json.loads(line)["iteration"] for line in (out / "heldout.jsonl").read_text().splitlines()]
        assert points == ([0, 3] if every == 0 else [0, 1, 2, 3])
    for a, b in zip(rows[0], rows[1], strict=True):
        assert (a["score"], a["kl"], a["pg_loss"]) == (b["score"], b["kl"], b["pg_loss"])

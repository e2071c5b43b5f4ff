"""Issue 9 crash safety: training killed with SIGKILL at any point leaves a loadable last checkpoint,
and ``--resume`` finishes the run exactly as an uninterrupted run would.

Each run is a real process killed with SIGKILL (see ``_crash_harness.py``: a zygote process imports
torch once and forks one child per run, because importing torch + transformers costs 10-15 s here).
After every kill the test checks, from this process:

* the child really died of SIGKILL at the injected point;
* ``run/checkpoint`` is complete and loads into a fresh agent, at the expected iteration; a
  half-written ``.checkpoint.*.tmp`` sibling is never what loads;
* resuming completes the run: ``metrics.jsonl`` / ``metrics.csv`` / ``samples.jsonl`` hold each
  iteration exactly once, and the final weights and metrics equal those of an uninterrupted run.

The feedback store under a killed labeller is covered by the feedback tests
(``test_feedback_terminal.py::test_killed_terminal_labeller_keeps_every_submitted_judgement`` and
``test_feedback_web.py::test_killed_server_keeps_every_submitted_judgement``); reward-model training
killed mid-training / mid-save is tested at the end of this file.
"""

from __future__ import annotations

import ast
import csv
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import _crash_harness as harness

pytestmark = pytest.mark.usefixtures("single_thread")

N = 4  # iterations of every toy run
HARNESS = Path(__file__).with_name("_crash_harness.py")
SIGKILL = -signal.SIGKILL


class Zygote:
    """The harness process: ``run(request)`` forks one child there and returns its exit code and log."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=HARNESS.parent)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._expect("ready", timeout=240)

    def _pump(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.put(line)
        self.lines.put("")  # EOF

    def _expect(self, prefix: str, timeout: float) -> str:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"harness silent for {timeout}s; output so far: {seen[-20:]}") from None
            if line == "":
                raise AssertionError(f"harness exited; output: {seen[-40:]}")
            if line.startswith(prefix):
                return line
            seen.append(line)

    def run(self, timeout: float = 180, **request) -> dict:
        self.n += 1
        request["log"] = str(self.log_dir / f"child{self.n}.log")
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._expect("{", timeout))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # idle between requests: nothing of interest to shut down cleanly
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("crash_logs"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def straight(zygote, tmp_path_factory):
    """An uninterrupted run: the reference every killed-and-resumed run must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    res = zygote.run(cmd="train", run_dir=str(run), iterations=N)
    assert res["rc"] == 0, res["log"]
    return run


# ------------------------------------------------------------------------------------ checks
def metric_iterations(run: Path) -> dict[str, list[int]]:
    out = {}
    jsonl = run / "metrics.jsonl"
    out["jsonl"] = [json.loads(line)["iteration"] for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    csv_path = run / "metrics.csv"
    out["csv"] = [int(r["iteration"]) for r in csv.DictReader(csv_path.open())] if csv_path.exists() else []
    samples = run / "samples.jsonl"
    out["samples"] = sorted({json.loads(line)["iteration"] for line in samples.read_text().splitlines()}) if samples.exists() else []
    return out


def check_after_kill(run: Path, res: dict, expected_iteration: int | None) -> None:
    """The child died of SIGKILL; the last checkpoint is complete and loads; no temp dir is taken for it."""
    assert res["rc"] == SIGKILL, f"the child was not killed at the injected point (rc={res['rc']}):\n{res['log']}"
    ckpt = run / "checkpoint"
    for p in run.iterdir():  # every other directory is a hidden leftover, never named like a checkpoint
        if p.is_dir() and p.name not in ("checkpoint", "tb"):
            assert p.name.startswith(".checkpoint.") and p.name.endswith((".tmp", ".old")), p.name
    if expected_iteration is None:
        assert not ckpt.exists() and not (run / ".checkpoint.old").exists()
        return
    fresh = harness.build_agent()  # no run_dir: loading must not touch the run's files
    fresh.load_checkpoint(ckpt)  # also repairs a swap interrupted between its two renames
    assert fresh.iteration == expected_iteration
    assert {f.name for f in ckpt.iterdir()} == harness.CHECKPOINT_FILES
    assert json.loads((ckpt / "trainer_state.json").read_text())["iteration"] == expected_iteration
    for tmp in run.glob(".checkpoint.*.tmp"):  # an uncommitted (newer) checkpoint is hidden, never loaded
        state = tmp / "trainer_state.json"
        assert not state.exists() or json.loads(state.read_text())["iteration"] > expected_iteration


def check_finished(run: Path, straight_run: Path, res: dict) -> None:
    """A resumed run completed: each iteration logged once, results equal to the uninterrupted run."""
    assert res["rc"] == 0, res["log"]
    assert metric_iterations(run) == {k: list(range(1, N + 1)) for k in ("jsonl", "csv", "samples")}
    fresh = harness.build_agent()
    fresh.load_checkpoint(run / "checkpoint")
    assert fresh.iteration == N
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    for row, ref in zip(rows, ref_rows):
        for k in ("score", "kl", "beta", "pg_loss", "vf_loss", "lr"):
            assert row[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), (row["iteration"], k)
    got = load_file(run / "checkpoint" / "policy.safetensors")
    want = load_file(straight_run / "checkpoint" / "policy.safetensors")
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=k)
    assert not (run / ".checkpoint.old").exists()
    assert not list(run.glob(".checkpoint.*.tmp"))  # a killed write's temporary is removed by the next save


# -------------------------------------------------------------------------------------- tests
KILLS = [
    # (crash spec, iteration of the checkpoint that must load after the kill)
    pytest.param("rollout:2:2", 1, id="during-rollout"),
    pytest.param("update:3:1", 2, id="during-update"),
    pytest.param("ckpt_write:3", 2, id="during-checkpoint-write"),
    pytest.param("ckpt_swap:2", 1, id="between-checkpoint-renames"),
    pytest.param("ckpt_cleanup:3", 3, id="before-old-checkpoint-removed"),
    pytest.param("ckpt_write:1", None, id="during-first-checkpoint"),
]


@pytest.mark.parametrize("crash, expected", KILLS)
def test_sigkill_leaves_a_loadable_checkpoint_and_resume_finishes(zygote, straight, tmp_path, crash, expected):
    run = tmp_path / "run"
    res = zygote.run(cmd="train", run_dir=str(run), iterations=N, crash=crash)
    check_after_kill(run, res, expected)
    res = zygote.run(cmd="train", run_dir=str(run), iterations=N, resume=True)
    check_finished(run, straight, res)


def test_sigkill_while_resume_drops_stale_metrics(zygote, straight, tmp_path):
    """Killed while writing the final checkpoint (row 4 logged, checkpoint 4 not saved), then the
    resume is killed while it drops row 4 from the metrics files: no kept row is ever lost."""
    run = tmp_path / "run"
    check_after_kill(run, zygote.run(cmd="train", run_dir=str(run), iterations=N, crash=f"ckpt_write:{N}"), N - 1)
    assert metric_iterations(run)["jsonl"] == [1, 2, 3, 4]
    res = zygote.run(cmd="train", run_dir=str(run), iterations=N, resume=True, crash="truncate")
    check_after_kill(run, res, N - 1)
    logged = metric_iterations(run)
    assert logged["jsonl"] == [1, 2, 3] and logged["csv"] == [1, 2, 3, 4]  # killed between the two rewrites
    check_finished(run, straight, zygote.run(cmd="train", run_dir=str(run), iterations=N, resume=True))


def test_repeated_sigkills_at_random_points(zygote, straight, tmp_path):
    """Kill, resume, kill again... at seeded random points (rollout, update, checkpoint write/swap/cleanup,
    each drawn after the resumed iteration); then the finished run must equal the uninterrupted one."""
    run = tmp_path / "run"
    seen = []
    for seed in range(4):
        res = zygote.run(cmd="train", run_dir=str(run), iterations=N, resume=True, crash=f"random:{seed}")
        line = next(x for x in res["log"].splitlines() if x.startswith("crash point:"))
        point = ast.literal_eval(line.split(":", 1)[1].strip())
        seen.append(point)
        committed = [d / "trainer_state.json" for d in (run / "checkpoint", run / ".checkpoint.old")]
        committed = [f for f in committed if f.is_file()]  # the latter only after a kill mid-swap
        ckpt_iter = json.loads(committed[0].read_text())["iteration"] if committed else None
        check_after_kill(run, res, ckpt_iter)
        # the last checkpoint is the one before the drawn iteration (or that one, if killed at cleanup)
        assert ckpt_iter == (point[1] if point[0] == "ckpt_cleanup" else point[1] - 1), (point, ckpt_iter)
        jsonl = metric_iterations(run)["jsonl"]
        assert jsonl == list(range(1, len(jsonl) + 1)), jsonl  # never a duplicated or missing row
        if ckpt_iter == N:  # killed after the final checkpoint was committed: nothing left to draw
            break
    res = zygote.run(cmd="train", run_dir=str(run), iterations=N, resume=True)
    check_finished(run, straight, res)
    assert len({p[0] for p in seen}) >= 2, seen  # the seeds exercise different points


# ------------------------------------------------------------------------- reward-model training
def _rm_store(path: Path) -> None:
    from tokengym.feedback.store import FeedbackStore

    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "great", "dull", "story", "actor"]
    with FeedbackStore(path) as store:
        ann = store.add_annotator("sim", kind="simulated")
        pids = store.add_prompts([f"review {i} says" for i in range(6)])
        rows = [(pid, " ".join(rng.choice(words, 4)), "sample", {}, None, 0) for pid in pids for _ in range(3)]
        cids = store.add_candidates(rows)
        store.add_comparisons(ann, [(cids[3 * i], cids[3 * i + 1], "a") for i in range(6)]
                              + [(cids[3 * i + 1], cids[3 * i + 2], "b") for i in range(6)])


def _complete_reward_folder(out: Path) -> None:
    from tokengym.rewards.learned import LearnedReward

    reward = LearnedReward(out)
    scores = reward(["review 0 says"], ["good film"])
    assert scores.shape == (1,) and np.isfinite(scores).all()
    assert json.loads((out / "tokengym_reward.json").read_text())["std"] > 0


def test_reward_model_training_killed_leaves_no_or_a_complete_folder(zygote, tmp_path):
    store, out = tmp_path / "fb.sqlite", tmp_path / "rm"
    _rm_store(store)
    for crash in ("rm_train:2", "rm_save"):
        res = zygote.run(cmd="rm", store=str(store), out=str(out), crash=crash)
        assert res["rc"] == SIGKILL, (crash, res["log"])
        assert not out.exists(), crash  # absent, never half-written
        assert not any(p.name == "rm" for p in tmp_path.iterdir() if p.is_dir() and p != out)
    res = zygote.run(cmd="rm", store=str(store), out=str(out))
    assert res["rc"] == 0, res["log"]
    _complete_reward_folder(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Retraining over an existing model, killed between the two renames of the swap: the folder is
    # absent (the previous one sits complete in ".rm.old") - never a mix of the two.
    res = zygote.run(cmd="rm", store=str(store), out=str(out), crash="rm_swap")
    assert res["rc"] == SIGKILL, res["log"]
    assert not out.exists() and {p.name: p.read_bytes() for p in (tmp_path / ".rm.old").iterdir()} == before
    from tokengym.utils import recover_directory

    assert recover_directory(out)  # what the checkpoint loader does: the previous folder comes back whole
    _complete_reward_folder(out)
    shutil.rmtree(out)

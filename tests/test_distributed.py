"""Issue 8 acceptance: data-parallel PPO over torch.distributed (2 CPU processes, gloo, torchrun).

* 2 ranks x B/2 episodes give the same update as 1 process x B episodes on the same samples
  (global token mean, global whitening moments, averaged gradients), within 1e-5;
* after a full iteration (each rank sampling its own episodes) every rank holds identical weights
  and the same KL coefficient beta, and rank 0's weights were broadcast at start;
* ``train-rm``'s loop on 2 ranks gives the one-process reward model within 1e-5;
* a distributed run SIGKILLed after a checkpoint resumes, replays every rank's episodes exactly
  (per-rank RNG state) and finishes with each iteration logged once.

The workers are ``tests/dist_worker.py`` under ``python -m torch.distributed.run``; each launch costs
mostly the imports of torch and transformers (~10-20 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dist_worker as W
from tokengym import distributed as dist
from tokengym.agents import CachedSampler, PPOAgent, masked_whiten
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import make_toy_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

WORKER = Path(__file__).with_name("dist_worker.py")
B = 8  # global batch: 2 ranks x 4 episodes
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), *map(str, args)]


def worker_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", TOKENGYM_DIST_TIMEOUT="120")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKER.parent), env.get("PYTHONPATH")]))
    return env


def run_torchrun(nproc: int, *args: str, timeout: float = 120) -> None:
    proc = subprocess.run(torchrun_cmd(nproc, *args), env=worker_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


# ------------------------------------------------------------------------------------------------
# Without a process group every helper is an identity (single-process runs are unchanged)
# ------------------------------------------------------------------------------------------------
def test_helpers_are_identities_without_a_process_group():
    assert not dist.is_initialized() and dist.rank() == 0 and dist.world_size() == 1
    assert dist.init_from_env() is False  # no WORLD_SIZE > 1 in the test environment
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(x), x) and torch.equal(dist.all_gather_cat(x), x)
    assert dist.all_reduce_mean_dict({"a": 1.5}) == {"a": 1.5} and dist.all_gather_object(3) == [3]
    torch.manual_seed(0)
    adv, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).float()
    torch.testing.assert_close(masked_whiten(adv, mask, distributed=True), masked_whiten(adv, mask), atol=0, rtol=0)


def test_cpu_threads_are_split_between_local_processes(monkeypatch):
    from tokengym.utils import set_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(os.cpu_count() or 1))
        set_cpu_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# 2 ranks vs 1 process on the same episodes; identical weights and beta after an iteration
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def check_results(tmp_path_factory):
    """One torchrun launch of 2 ranks (``dist_worker.py check``) on a fixed batch of B episodes."""
    out = tmp_path_factory.mktemp("dist_check")
    tok = make_toy_tokenizer()
    _, sampler_model = make_tiny_causal_lm(tok, hidden=32, n_layers=1, n_heads=2, seed=1)
    batch = CachedSampler(sampler_model).rollout(W.make_env(tok, B), seed=123)
    lengths = batch.lengths
    # Unequal token counts on the two halves, so a per-rank token mean would differ from the global one.
    assert lengths[: B // 2].sum() != lengths[B // 2 :].sum(), lengths
    torch.save(vars(batch), out / "batch.pt")
    run_torchrun(2, "check", out, B)
    ranks = [torch.load(out / f"check_rank{r}.pt", weights_only=True) for r in range(2)]
    # The same update in one process holding all B episodes.
    _, model = make_tiny_causal_lm(tok, hidden=32, n_layers=1, n_heads=2, seed=0)
    single = PPOAgent(W.make_env(tok, B), model, W.check_config(B))
    exp = single._make_experience(batch)
    single._update(exp)
    # The same reward-model fit in one process.
    from tokengym.feedback.rm_training import RewardModelTrainer

    rm_tok, rm = W.tiny_reward_model(seed=0)
    rm_start = {k: v.detach().clone() for k, v in rm.state_dict().items()}
    with W.rm_adam_eps():
        rm_losses = RewardModelTrainer(rm_tok, rm, W.rm_config()).fit(W.rm_items())
    return ranks, {"after_update": W.trainable(single), "advantages": exp.advantages, "returns": exp.returns,
                   "rm_start": rm_start, "rm": rm.state_dict(), "rm_losses": rm_losses}


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max |difference| {worst:.3g} > {atol}"
    return worst


def test_two_ranks_update_equals_one_process_with_the_whole_batch(check_results):
    ranks, single = check_results
    # Global whitening: the two halves' advantages are those of the whole batch.
    adv = torch.cat([r["advantages"] for r in ranks])
    torch.testing.assert_close(adv, single["advantages"], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([r["returns"] for r in ranks]), single["returns"], atol=ATOL, rtol=0)
    for r in ranks:
        assert_states_close(r["after_update"], single["after_update"], ATOL)
    moved = max((ranks[0]["after_update"][k] - ranks[0]["start"][k]).abs().max().item() for k in ranks[0]["start"])
    assert moved > 1e-3, "the update did not move the weights: the comparison would be vacuous"


def test_ranks_start_from_rank0_weights_and_stay_identical(check_results):
    ranks, _ = check_results
    assert [r["world_size"] for r in ranks] == [2, 2]
    # The ranks built their models with different seeds; rank 0's were broadcast.
    assert_states_close(ranks[0]["start"], ranks[1]["start"], 0.0)
    assert_states_close(ranks[0]["after_update"], ranks[1]["after_update"], 0.0)
    assert_states_close(ranks[0]["after_step"], ranks[1]["after_step"], 0.0)
    # Each rank sampled its own episodes (seed + 1000 * rank) ...
    assert ranks[0]["responses"] != ranks[1]["responses"]
    # ... yet the adaptive controller saw the same all-reduced KL: beta moved, identically.
    assert ranks[0]["beta"] == ranks[1]["beta"] != ranks[0]["beta0"]
    m0, m1 = ranks[0]["metrics"], ranks[1]["metrics"]
    for key in ("score", "kl", "pg_loss", "approx_kl", "epochs_run"):
        assert m0[key] == pytest.approx(m1[key], abs=1e-6), key


def test_reward_model_fit_on_two_ranks_equals_one_process(check_results):
    """``tokengym train-rm``'s loop: each rank takes its share of every global batch (unequal shards,
    an empty one on the last step), gradients are averaged; the result is the one-process fit."""
    ranks, single = check_results
    for r in ranks:
        assert_states_close(r["rm"], single["rm"], ATOL)
        assert r["rm_losses"] == pytest.approx(single["rm_losses"], abs=1e-5)
    moved = max((single["rm"][k] - single["rm_start"][k]).abs().max().item() for k in single["rm"])
    assert moved > 1e-3


# ------------------------------------------------------------------------------------------------
# Kill a 2-rank run after a checkpoint, resume it, finish
# ------------------------------------------------------------------------------------------------
def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a killed orphan may linger as a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_killed_distributed_run_resumes_and_finishes(tmp_path):
    iters, hang_after = 4, 2
    proc = subprocess.Popen(torchrun_cmd(2, "train", tmp_path, iters, "--hang-after", hang_after), env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ckpt = tmp_path / "run" / "checkpoint"
    deadline = time.monotonic() + 120
    try:
        # Iteration 1 is checkpointed; iteration 2 is logged, then every rank hangs: kill everything.
        while not all((tmp_path / f"hanging_rank{r}").exists() for r in range(2)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the run did not reach iteration {hang_after}:\n{proc.communicate()[0][-5000:]}")
            time.sleep(0.1)
    finally:
        pids = [int((tmp_path / f"pid_rank{r}").read_text()) for r in range(2) if (tmp_path / f"pid_rank{r}").exists()]
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun (its own session, started here)
        for pid in pids:  # the workers run in sessions of their own
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in pids:
            t = time.monotonic()
            while not _dead(pid) and time.monotonic() - t < 30:
                time.sleep(0.05)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["iteration"] == hang_after - 1 and state["world_size"] == 2
    assert {p.name for p in ckpt.glob("rng_rank*.safetensors")} == {"rng_rank0.safetensors", "rng_rank1.safetensors"}

    run_torchrun(2, "train", tmp_path, iters, "--resume")

    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["iteration"] == iters
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, iters + 1))
    for r in range(2):
        rows = [json.loads(line) for line in (tmp_path / f"episodes_rank{r}.jsonl").read_text().splitlines()]
        first = [row for row in rows if not row["resumed"]]
        again = [row for row in rows if row["resumed"]]
        assert [row["iteration"] for row in first] == list(range(1, hang_after + 1))
        assert [row["iteration"] for row in again] == list(range(hang_after, iters + 1))
        # The resumed rank replays the killed iteration exactly: its own sampler/env RNG came back.
        assert again[0]["responses"] == first[-1]["responses"] and again[0]["beta"] == first[-1]["beta"]
    responses = [[json.loads(line)["responses"] for line in (tmp_path / f"episodes_rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert responses[0] != responses[1]  # the ranks sample different episodes

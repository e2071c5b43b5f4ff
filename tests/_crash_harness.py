"""Fault-injection harness for ``test_crash_safety.py``: toy PPO runs (and reward-model training)
that kill themselves with SIGKILL at a chosen point.

Importing torch + transformers costs 10-15 s on the small shared test machines, so this file runs
as one long-lived **zygote** process: it imports everything once, then for each request read from
stdin (one JSON object a line) it ``fork()``s a child that does the work and may be killed; the
zygote waits for the child and answers one JSON line ``{"rc": <exit code, -9 for SIGKILL>, "log": ...}``.
The zygote never runs a torch op itself, so forking it is safe (no thread pools exist yet).

Requests::

    {"cmd": "train", "run_dir": D, "iterations": N, "resume": bool, "crash": "POINT:K[:n]" | "random:SEED" | null}
    {"cmd": "rm", "store": S, "out": O, "crash": "rm_train:n" | "rm_save" | "rm_swap" | null}

Training kill points (``K`` is the 1-based iteration, ``n`` the n-th event inside it, default 1):

* ``rollout:K:n``    - inside iteration K's rollout, before its n-th env step;
* ``update:K:n``     - inside iteration K's PPO update, right after its n-th optimiser step (the
  in-memory weights have moved, nothing of iteration K is on disk);
* ``ckpt_write:K``   - while checkpoint K is written: ``policy.safetensors`` is in the temporary
  directory, ``value_head.safetensors`` / ``optimizer.pt`` / ``trainer_state.json`` are not;
* ``ckpt_swap:K``    - checkpoint K: after the previous checkpoint was renamed aside to
  ``.checkpoint.old``, before the new one is renamed into place (no ``checkpoint`` dir exists);
* ``ckpt_cleanup:K`` - checkpoint K is in place, the previous one (``.checkpoint.old``) not yet deleted;
* ``truncate``       - (a resumed run) while the metrics logged after the checkpoint are being dropped:
  ``metrics.jsonl`` is rewritten, ``metrics.csv`` not yet;
* ``random:SEED``    - one of the points above (not ``truncate``), K (after the resumed iteration)
  and n drawn from ``SEED``.

This is test-harness fault injection (monkeypatching in the child process), not library code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import traceback
from pathlib import Path

import tokengym  # noqa: F401
import tokengym.utils
from tokengym.agents import PPOAgent, PPOConfig
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer

N_ENVS, T, P = 4, 4, 4
RANDOM_POINTS = ("rollout", "update", "ckpt_write", "ckpt_swap", "ckpt_cleanup")
CHECKPOINT_FILES = {"policy.safetensors", "value_head.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json"}
# Folders tokengym writes carry its marker file (tokengym.utils), checkpoints included.
_MARKER = getattr(tokengym.utils, "MARKER", None)
if _MARKER:
    CHECKPOINT_FILES.add(_MARKER)


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


def config() -> PPOConfig:
    return PPOConfig(
        batch_size=N_ENVS, minibatch_size=2, micro_batch_size=2, ppo_epochs=1, learning_rate=3e-3, lora_r=0,
        anneal_lr=True, adaptive_kl=True, kl_target=0.5, kl_horizon=40, sample_every=1, checkpoint_every=1,
    )


def build_agent(run_dir: str | os.PathLike | None = None) -> PPOAgent:
    """The toy agent every run uses (the tests build the same one to load checkpoints)."""
    tok = make_toy_tokenizer()
    _, model = make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)
    env = BatchedTextEnv(N_ENVS, tokenizer=tok, reward=good_share, prompts=TOY_PROMPTS, split=None,
                         max_new_tokens=T, max_prompt_tokens=P)
    return PPOAgent(env, model, config(), run_dir=None if run_dir is None else str(run_dir))


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def parse_crash(spec: str | None, start: int, iterations: int) -> tuple[str, int, int] | None:
    """``(point, K, n)`` of a crash spec; ``random:SEED`` draws K after ``start`` (the resumed iteration)."""
    if not spec:
        return None
    parts = spec.split(":")
    if parts[0] == "random":
        rng = random.Random(int(parts[1]))
        point = rng.choice(RANDOM_POINTS)
        k = rng.randint(max(start + 1, 2), iterations)  # checkpoint 1 has no predecessor to swap with
        n = rng.randint(1, 2)  # T=4 env steps per rollout, 2 optimiser steps per update
        return point, k, n
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 1


def install_crash(agent: PPOAgent, run_dir: Path, point: str, k: int, n: int) -> None:
    ckpt, old = run_dir / "checkpoint", run_dir / ".checkpoint.old"
    count = [0]
    if point == "rollout":
        real_step = agent.env.step

        def step(actions):
            if agent.iteration + 1 == k:
                count[0] += 1
                if count[0] == n:
                    _die()
            return real_step(actions)

        agent.env.step = step
    elif point == "update":
        real_opt_step = agent.optimizer.step

        def opt_step(*a, **kw):
            out = real_opt_step(*a, **kw)
            if agent.iteration + 1 == k:
                count[0] += 1
                if count[0] == n:
                    _die()
            return out

        agent.optimizer.step = opt_step
    elif point == "ckpt_write":
        ppo_module = sys.modules["tokengym.agents.checkpoint"]  # where checkpoints are written
        real_save_file = ppo_module.save_file

        def save_file(tensors, filename, *a, **kw):
            if agent.iteration == k and Path(filename).name == "value_head.safetensors":
                assert (Path(filename).parent / "policy.safetensors").is_file()
                _die()
            return real_save_file(tensors, filename, *a, **kw)

        ppo_module.save_file = save_file
    elif point in ("ckpt_swap", "ckpt_cleanup"):
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            real_replace(src, dst, *a, **kw)
            if agent.iteration == k and (
                (point == "ckpt_swap" and Path(dst) == old) or (point == "ckpt_cleanup" and Path(dst) == ckpt)
            ):
                _die()

        os.replace = replace
    elif point == "truncate":
        logger_module = sys.modules[type(agent.logger).__module__]
        real_write = logger_module.atomic_write_text

        def write(path, text):
            if Path(path).name == "metrics.csv":
                _die()
            return real_write(path, text)

        logger_module.atomic_write_text = write
    else:
        raise ValueError(f"unknown crash point {point!r}")


def train(run_dir: str, iterations: int, resume: bool, crash: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    run = Path(run_dir)
    agent = build_agent(run)
    if crash == "truncate":
        install_crash(agent, run, "truncate", 0, 1)
    if resume and ((run / "checkpoint").is_dir() or (run / ".checkpoint.old").is_dir()):
        agent.load_checkpoint(run / "checkpoint")
        print(f"resumed at iteration {agent.iteration}", flush=True)
    else:
        agent.logger.truncate_after(0)  # a fresh start drops the rows of an attempt that saved no checkpoint
    if crash and crash != "truncate":
        chosen = parse_crash(crash, agent.iteration, iterations)
        print(f"crash point: {chosen}", flush=True)
        install_crash(agent, run, *chosen)
    agent.learn(iterations, callback=lambda i, m: print(f"iteration {i} score {m['score']:.4f}", flush=True), progress=False)
    print("done", flush=True)


# ------------------------------------------------------------------------------ reward models
def tiny_reward_model():
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tokengym.models import default_encoder_dir

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(default_encoder_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tok, BertForSequenceClassification(cfg).eval()


def train_rm(store_path: str, out: str, crash: str | None) -> None:
    import torch

    from tokengym.feedback import rm_training
    from tokengym.feedback.store import FeedbackStore

    torch.set_num_threads(1)
    tok, model = tiny_reward_model()
    if crash and crash.startswith("rm_train"):
        n = int(crash.split(":")[1])
        real_loss = rm_training.RewardModelTrainer.batch_loss
        count = [0]

        def batch_loss(self, items):
            count[0] += 1
            if count[0] == n:
                _die()
            return real_loss(self, items)

        rm_training.RewardModelTrainer.batch_loss = batch_loss
    elif crash == "rm_save":
        def save_pretrained(*a, **kw):  # the weights are in the temporary folder, the tokenizer is not
            _die()

        tok.save_pretrained = save_pretrained
    elif crash == "rm_swap":
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            real_replace(src, dst, *a, **kw)
            if Path(dst).name == f".{Path(out).name}.old":
                _die()

        os.replace = replace
    store = FeedbackStore(store_path, create=False)
    cfg = rm_training.RMConfig(batch_size=4, max_length=32, heldout_fraction=0.25, epochs=1.0, lr=1e-3)
    rm_training.train_reward_model(store, out, cfg, model=(tok, model), log=None)
    print("done", flush=True)


# ------------------------------------------------------------------------------------- zygote
def _child(request: dict) -> None:
    if request["cmd"] == "train":
        train(request["run_dir"], request["iterations"], request.get("resume", False), request.get("crash"))
    elif request["cmd"] == "rm":
        train_rm(request["store"], request["out"], request.get("crash"))
    else:
        raise ValueError(f"unknown command {request['cmd']!r}")


def serve() -> None:
    # Warm what the children import lazily, so each fork starts in milliseconds.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import tokengym.feedback.rm_training  # noqa: F401
    from transformers import BertForSequenceClassification  # noqa: F401

    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        pass
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        log_path = Path(request["log"])
        pid = os.fork()
        if pid == 0:  # the child: everything it prints goes to the log file
            code = 0
            try:
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                _child(request)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        print(json.dumps({"rc": rc, "log": log[-4000:]}), flush=True)


if __name__ == "__main__":
    serve()

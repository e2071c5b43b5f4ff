"""Issue 9 offline and safe by default.

* The default pipeline (real SmolLM2 policy from its cached conversion, the default
  ``tokengym/PositiveReview-v0`` env, a rollout and a PPO step, a learned reward on MiniLM) runs with
  every socket connection and DNS lookup blocked, and attempts none.
* Nothing in the package unpickles: every ``torch.load`` passes ``weights_only=True``; no
  ``pickle.load(s)``, no unsafe YAML loader, no ``np.load(allow_pickle=True)``.
* The labelling server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import ast
import inspect
import os
import socket
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import tokengym

ROOT = Path(tokengym.__file__).resolve().parent.parent
PACKAGE_DIRS = [ROOT / d for d in ("tokengym", "envs", "agents", "rewards")]


@pytest.fixture
def no_network(monkeypatch):
    """Every way out (connect, connect_ex, create_connection, DNS) raises and is recorded."""
    attempts: list[tuple[str, tuple]] = []

    def blocked(name):
        def fn(*args, **kwargs):
            attempts.append((name, args[1:] if name.startswith("socket.") else args))
            raise OSError(f"network access blocked by the test ({name})")

        return fn

    monkeypatch.setattr(socket.socket, "connect", blocked("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", blocked("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", blocked("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
    return attempts


@pytest.mark.real_model
@pytest.mark.usefixtures("single_thread")
def test_default_pipeline_runs_with_the_network_blocked(no_network, tmp_path):
    from tokengym.agents import PPOAgent, PPOConfig
    from tokengym.models import load_causal_lm
    from tokengym.rewards import resolve_reward
    from tokengym.rewards.learned import new_reward_model, save_reward_model

    # the package switched the Hugging Face libraries offline when it was imported
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"

    tok, model = load_causal_lm()  # the default policy: SmolLM2-135M-Instruct (cached conversion)
    env = gym.make("tokengym/PositiveReview-v0")  # the default env: reads the tokenizer of "smollm2"
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["prompt_text"]
    _, reward, terminated, truncated, _ = env.step(tok.eos_token_id)
    assert terminated and np.isfinite(reward)

    vec = gym.make_vec("tokengym/PositiveReview-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       tokenizer=tok, max_new_tokens=3)
    agent = PPOAgent(vec, model, PPOConfig(batch_size=2, minibatch_size=2, micro_batch_size=2, ppo_epochs=1,
                                           lora_r=2, lora_alpha=16, sample_every=0))
    metrics = agent.step()  # one rollout, scoring with VADER (the default reward and gold judge), one update
    assert np.isfinite(metrics["score"]) and metrics["nonfinite_total"] == 0

    rm_tok, rm = new_reward_model(seed=0)  # the default reward-model base: all-MiniLM-L6-v2 from its wheel
    save_reward_model(tmp_path / "rm", rm_tok, rm)
    learned = resolve_reward(("learned", {"path": str(tmp_path / "rm")}))
    scores = learned(["the film was"], ["wonderful"])
    assert scores.shape == (1,) and np.isfinite(scores).all()

    assert no_network == [], f"network access was attempted: {no_network}"


def test_the_network_block_itself_works(no_network):
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("example.org", 443), timeout=1)
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert [a[0] for a in no_network] == ["create_connection", "getaddrinfo"]


# -------------------------------------------------------------------------- no unpickling
def package_sources() -> list[Path]:
    files = [f for d in PACKAGE_DIRS for f in d.rglob("*.py")]
    assert len(files) > 20, files
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    problems, torch_loads = [], 0
    for path in package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = lambda n: f"{path.relative_to(ROOT)}:{n.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name for a in node.names}
                module = getattr(node, "module", None) or ""
                if "pickle" in names or "cPickle" in names or module in ("pickle", "dill", "cloudpickle"):
                    problems.append(f"{where(node)}: imports pickle")
                if module == "torch" and "load" in names:
                    problems.append(f"{where(node)}: 'from torch import load' hides the weights_only check")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                torch_loads += 1
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where(node)}: torch.load without weights_only=True")
            elif name.endswith(("pickle.load", "pickle.loads")) or name in ("pickle.Unpickler", "marshal.loads"):
                problems.append(f"{where(node)}: {name}")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(f"{where(node)}: {name} (use yaml.safe_load)")
            elif name.endswith("np.load") or name.endswith("numpy.load"):
                flag = kwargs.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where(node)}: np.load with allow_pickle")
    assert problems == []
    assert torch_loads >= 1  # the optimiser state of a checkpoint (the scan does see them)


def test_yaml_configs_are_read_with_safe_load():
    from tokengym import config

    assert "yaml.safe_load" in inspect.getsource(config.read_config_file)


# -------------------------------------------------------------------------- labelling server
def test_labelling_server_binds_to_loopback_only(tmp_path):
    from tokengym.feedback.annotators import TaskQueue
    from tokengym.feedback.server import LOOPBACK, LabelServer
    from tokengym.feedback.store import FeedbackStore

    assert LOOPBACK == "127.0.0.1"
    assert "host" not in inspect.signature(LabelServer).parameters  # no way to ask for another interface
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        ann = store.add_annotator("ann")
        server = LabelServer(store, TaskQueue(store, ann), "ann", port=0)
        try:
            assert server.httpd.server_address[0] == "127.0.0.1"
            assert server.url.startswith("http://127.0.0.1:")
        finally:
            server.httpd.server_close()
    from tokengym.feedback.cli import add_commands  # the CLI offers no --host / --bind flag either
    import argparse

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    help_text = " ".join(a.format_help() for a in parser._subparsers._group_actions[0].choices.values())
    assert "--host" not in help_text and "--bind" not in help_text and "0.0.0.0" not in help_text

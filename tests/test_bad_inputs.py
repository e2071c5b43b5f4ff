"""Issue 9 bad-input table: public entry points fed their typical bad inputs.

Every row checks the exception type, a message that names the culprit (file and line, config key,
reward and sample, action value, checkpoint path, schema version ...), and that nothing was
written: the test's whole directory is byte-for-byte the same before and after (no partial output),
and where an object was being loaded into (an agent restoring a checkpoint) it is unchanged too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from tokengym.agents import PPOAgent, PPOConfig
from tokengym.cli import TrainConfig, main
from tokengym.config import ConfigError, from_dict, read_config_file
from tokengym.envs import BatchedTextEnv, PromptFileError, TextGenerationEnv
from tokengym.feedback.errors import NotAFeedbackStoreError, SchemaVersionError
from tokengym.feedback.store import SCHEMA_VERSION, FeedbackStore
from tokengym.models import check_same_vocabulary, make_tiny_causal_lm
from tokengym.rewards import RewardError, batched
from tokengym.testing import TOY_PROMPTS, TOY_WORDS, make_toy_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

TOK = make_toy_tokenizer()
VOCAB = len(TOK)


class CliFailed(Exception):
    """``tokengym.cli.main`` returned a non-zero code; the message is ``rc=N: <stderr>``."""


def cli(*argv: str) -> Callable[[], None]:
    def run() -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(list(argv))
        if rc != 0:
            raise CliFailed(f"rc={rc}: {err.getvalue()}")

    return run


def words_reward(prompt: str, response: str) -> float:
    return float(len(response.split()))


def env(prompts: Any = TOY_PROMPTS, tok=TOK, n: int = 2, **kw) -> BatchedTextEnv:
    kw.setdefault("reward", words_reward)
    return BatchedTextEnv(n, tokenizer=tok, prompts=prompts, split=None, max_new_tokens=3, max_prompt_tokens=4, **kw)


def tiny_lm(tok=TOK, hidden: int = 16):
    return make_tiny_causal_lm(tok, hidden=hidden, n_layers=1, n_heads=2, seed=0)[1]


def agent(hidden: int = 16) -> PPOAgent:
    return PPOAgent(env(), tiny_lm(hidden=hidden), PPOConfig(batch_size=2, minibatch_size=2, micro_batch_size=2, lora_r=0))


def finish_episode(reward: Any) -> Callable[[], None]:
    """An env whose only episode ends at its first step (T=1), so the reward is called at once."""
    e = TextGenerationEnv(tokenizer=TOK, reward=reward, prompts=TOY_PROMPTS, split=None, max_new_tokens=1, max_prompt_tokens=4)
    e.reset(seed=0)
    return lambda: e.step(TOK.convert_tokens_to_ids("good"))


def stepped_env(action: Any, n: int = 1) -> Callable[[], Any]:
    if n == 1:
        e = TextGenerationEnv(tokenizer=TOK, reward=words_reward, prompts=TOY_PROMPTS, split=None, max_new_tokens=3,
                              max_prompt_tokens=4)
    else:
        e = env(n=n)
    e.reset(seed=0)
    return lambda: e.step(action)


# ---------------------------------------------------------------------------------------- rows
@dataclasses.dataclass
class Row:
    """``setup(tmp)`` prepares the inputs (before the snapshot) and returns the call that must fail,
    and optionally a check run afterwards."""

    setup: Callable[[Path], Any]
    exc: type[BaseException]
    match: str  # regex; ``{tmp}`` is replaced by the escaped test directory


def prompt_file(name: str, data: bytes) -> Callable[[Path], Any]:
    def setup(tmp: Path):
        (tmp / name).write_bytes(data)
        return lambda: env(prompts=str(tmp / name))

    return setup


def config_file(name: str, text: str, *extra: str) -> Callable[[Path], Any]:
    def setup(tmp: Path):
        (tmp / name).write_text(text)
        return cli("train", "--config", str(tmp / name), "--output-dir", str(tmp / "out"), *extra)

    return setup


def code_yaml(tmp: Path):
    marker = tmp.parent / f"{tmp.name}-PWNED"  # outside the snapshot: checked explicitly below
    (tmp / "evil.yaml").write_text(f'iterations: !!python/object/apply:os.system ["touch {marker}"]\n')

    def run():
        try:
            cli("train", "--config", str(tmp / "evil.yaml"), "--output-dir", str(tmp / "out"))()
        finally:
            assert not marker.exists(), "the YAML file executed code"
        read_config_file(tmp / "evil.yaml")  # the library function refuses it the same way

    return run


def code_yaml_direct(tmp: Path):
    (tmp / "evil.yaml").write_text("model: !!python/object/new:subprocess.Popen [[\"true\"]]\n")
    return lambda: read_config_file(tmp / "evil.yaml")


def checkpoint(corrupt: Callable[[Path], None], loader_hidden: int = 16) -> Callable[[Path], Any]:
    """A checkpoint of a fresh toy agent, damaged by ``corrupt``; the call loads it into another agent,
    which must be left exactly as it was."""

    def setup(tmp: Path):
        agent(hidden=16).save_checkpoint(tmp / "ckpt")
        corrupt(tmp / "ckpt")
        target = agent(hidden=loader_hidden)
        with torch.no_grad():  # distinguishable from the saved weights (the frozen reference stays the same)
            for p in [*target.ac.policy.parameters(), *target.ac.value_head.parameters()]:
                p.add_(0.01)
        before = {k: v.clone() for k, v in target.ac.state_dict().items()}

        def run():
            try:
                target.load_checkpoint(tmp / "ckpt")
            finally:
                after = target.ac.state_dict()
                assert all(torch.equal(before[k], after[k]) for k in before), "a failed load changed the agent"
                assert target.iteration == 0 and not target.optimizer.state

        return run

    return setup


def truncate(name: str, keep: int = 100) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        f = ckpt / name
        f.write_bytes(f.read_bytes()[:keep])

    return corrupt


def feedback_db(tmp: Path, user_version: int | None = None, foreign: bool = False):
    path = tmp / "fb.sqlite"
    if foreign:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
        conn.commit()
        conn.close()
    else:
        FeedbackStore(path).close()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version={user_version}")
        conn.commit()
        conn.close()
    return lambda: FeedbackStore(path)


OTHER_WORDS = [w + "x" for w in TOY_WORDS]  # same size, different words
MORE_WORDS = list(TOY_WORDS) + ["extra", "words", "here"]

ROWS = {
    # -- prompt files
    "prompts-bad-json": Row(prompt_file("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "broken"\n'),
                            PromptFileError, r"{tmp}/p\.jsonl:2: invalid JSON"),
    "prompts-missing-field": Row(prompt_file("p.jsonl", b'{"prompt": "ok"}\n{"text": "no prompt key"}\n'),
                                 PromptFileError, r"{tmp}/p\.jsonl:2: missing or empty 'prompt' field"),
    "prompts-empty-file": Row(prompt_file("p.jsonl", b""), PromptFileError, r"{tmp}/p\.jsonl: the prompt file holds no prompts"),
    "prompts-not-utf8": Row(prompt_file("p.txt", b"the film was\nun caf\xe9 noir\n"),
                            PromptFileError, r"{tmp}/p\.txt:2: not valid UTF-8"),
    "prompts-csv-without-prompt-column": Row(prompt_file("p.csv", b"text,id\nhello,1\n"),
                                             PromptFileError, r"{tmp}/p\.csv:1: CSV header must have a 'prompt' column"),
    "prompts-missing-file": Row(lambda tmp: (lambda: env(prompts=str(tmp / "nope.jsonl"))),
                                PromptFileError, r"{tmp}/nope\.jsonl: prompt file not found"),
    # -- vocabularies of policy, env, reference and reward model
    "policy-fewer-embeddings-than-env-vocab": Row(
        lambda tmp: (lambda: PPOAgent(env(tok=make_toy_tokenizer(MORE_WORDS)), tiny_lm(),
                                      PPOConfig(batch_size=2, minibatch_size=2, micro_batch_size=2, lora_r=0))),
        ValueError, rf"mismatched tokenizers: the model has {VOCAB} embeddings but the env's vocabulary has {VOCAB + 3} tokens"),
    "vocab-policy-vs-reference": Row(
        lambda tmp: (lambda: check_same_vocabulary(TOK, make_toy_tokenizer(OTHER_WORDS), "policy and reference")),
        ValueError, rf"mismatched tokenizers between policy and reference: vocab sizes {VOCAB} vs {VOCAB}"),
    "vocab-policy-vs-reward-model": Row(
        lambda tmp: (lambda: check_same_vocabulary(TOK, make_toy_tokenizer(MORE_WORDS), "policy and reward model")),
        ValueError, rf"mismatched tokenizers between policy and reward model: vocab sizes {VOCAB} vs {VOCAB + 3}"),
    # -- rewards
    "reward-returns-nan": Row(lambda tmp: finish_episode(lambda p, r: float("nan")),
                              RewardError, r"reward '<lambda>' on sample 0 \(prompt=.*, response='good'\): returned a non-finite score nan"),
    "reward-returns-inf": Row(lambda tmp: finish_episode(_inf_reward),
                              RewardError, r"reward '_inf_reward' on sample 0 .*non-finite score inf"),
    "reward-wrong-shape": Row(lambda tmp: finish_episode(_two_scores),
                              RewardError, r"reward '_two_scores': returned shape \(2,\); expected \(1,\)"),
    "reward-raises": Row(lambda tmp: finish_episode(_raising_reward),
                         RewardError, r"reward '_raising_reward' on sample 0 .*KeyError: 'sentiment'"),
    # -- actions
    "action-out-of-range": Row(lambda tmp: stepped_env(VOCAB), ValueError,
                               rf"action {VOCAB} \(episode 0\) is outside the vocabulary \[0, {VOCAB}\)"),
    "action-negative": Row(lambda tmp: stepped_env(np.array([5, -1]), n=2), ValueError,
                           rf"action -1 \(episode 1\) is outside the vocabulary \[0, {VOCAB}\)"),
    "action-float-dtype": Row(lambda tmp: stepped_env(np.array([1.0, 2.0]), n=2), ValueError,
                              r"actions must be integer token ids, got dtype float64"),
    "action-bool": Row(lambda tmp: stepped_env(True), ValueError, r"action must be an integer token id, got bool True"),
    "action-wrong-shape": Row(lambda tmp: stepped_env(np.array([1, 2, 3]), n=2), ValueError,
                              r"expected 2 action\(s\) of shape \(2,\), got shape \(3,\)"),
    # -- episode length
    "max-new-tokens-zero": Row(lambda tmp: (lambda: TextGenerationEnv(tokenizer=TOK, reward=words_reward, prompts=TOY_PROMPTS,
                                                                      max_new_tokens=0)),
                               ValueError, r"max_new_tokens must be positive, got 0"),
    "max-new-tokens-negative-batched": Row(lambda tmp: (lambda: BatchedTextEnv(2, tokenizer=TOK, reward=words_reward,
                                                                               prompts=TOY_PROMPTS, max_new_tokens=-2)),
                                           ValueError, r"max_new_tokens must be positive, got -2"),
    # -- config files through the CLI (exit code 2, message on stderr, nothing written) and from_dict
    "cli-config-unknown-key": Row(config_file("c.yaml", "iteratons: 3\n"), CliFailed,
                                  r"rc=2: tokengym train: error: unknown config key\(s\) \['iteratons'\] for TrainConfig"),
    "cli-config-wrong-type": Row(config_file("c.yaml", "iterations: ten\n"), CliFailed,
                                 r"rc=2: .*config key 'iterations': expected an integer, got str 'ten'"),
    "cli-config-unknown-ppo-key": Row(config_file("c.toml", "[ppo]\nlerning_rate = 0.001\n"), CliFailed,
                                      r"rc=2: .*unknown config key\(s\) \['lerning_rate'\] for PPOConfig"),
    "cli-config-wrong-ppo-type": Row(config_file("c.yaml", "ppo:\n  ppo_epochs: 2.5\n"), CliFailed,
                                     r"rc=2: .*config key 'ppo_epochs': expected an integer, got float 2\.5"),
    "cli-config-invalid-batch-sizes": Row(config_file("c.yaml", "ppo:\n  batch_size: 10\n  minibatch_size: 4\n"), CliFailed,
                                          r"rc=2: .*batch_size \(10\) must be a multiple of minibatch_size \(4\)"),
    "cli-bad-override": Row(config_file("c.yaml", "iterations: 1\n", "--set", "ppo.learning_rate"), CliFailed,
                            r"rc=2: .*override 'ppo\.learning_rate' must look like key=value"),
    "cli-missing-config": Row(lambda tmp: cli("train", "--config", str(tmp / "none.yaml"), "--output-dir", str(tmp / "out")),
                              CliFailed, r"rc=2: .*{tmp}/none\.yaml: config file not found"),
    "from-dict-unknown-key": Row(lambda tmp: (lambda: PPOConfig.from_dict({"batchsize": 4})), ConfigError,
                                 r"unknown config key\(s\) \['batchsize'\] for PPOConfig"),
    "from-dict-wrong-type": Row(lambda tmp: (lambda: from_dict(TrainConfig, {"ppo": [1, 2]})), ConfigError,
                                r"config key 'ppo': expected a dict, got list"),
    "yaml-python-object-apply": Row(code_yaml, CliFailed, r"rc=2: .*evil\.yaml: cannot parse config .*python/object/apply:os\.system"),
    "yaml-python-object-new": Row(code_yaml_direct, ConfigError, r"{tmp}/evil\.yaml: cannot parse config .*python/object/new"),
    # -- checkpoints
    "checkpoint-of-another-model": Row(checkpoint(lambda c: None, loader_hidden=32), ValueError,
                                       r"checkpoint {tmp}/ckpt is from another model"),
    "checkpoint-truncated-policy-safetensors": Row(checkpoint(truncate("policy.safetensors")), ValueError,
                                                   r"checkpoint {tmp}/ckpt is corrupt or incompatible: SafetensorError"),
    "checkpoint-truncated-value-head": Row(checkpoint(truncate("value_head.safetensors", keep=20)), ValueError,
                                           r"checkpoint {tmp}/ckpt is corrupt or incompatible"),
    "checkpoint-truncated-optimizer": Row(checkpoint(truncate("optimizer.pt", keep=300)), ValueError,
                                          r"checkpoint {tmp}/ckpt is corrupt or incompatible"),
    "checkpoint-garbled-trainer-state": Row(checkpoint(lambda c: (c / "trainer_state.json").write_text('{"iteration": 3,')),
                                            ValueError, r"checkpoint {tmp}/ckpt is corrupt: trainer_state\.json"),
    "checkpoint-missing": Row(lambda tmp: (lambda: agent().load_checkpoint(tmp / "nothing")), FileNotFoundError,
                              r"{tmp}/nothing is not a tokengym checkpoint"),
    # -- feedback store
    "feedback-db-newer-schema": Row(lambda tmp: feedback_db(tmp, user_version=SCHEMA_VERSION + 1), SchemaVersionError,
                                    rf"{{tmp}}/fb\.sqlite has feedback schema version {SCHEMA_VERSION + 1}, newer than this tokengym's {SCHEMA_VERSION}"),
    "feedback-db-of-another-application": Row(lambda tmp: feedback_db(tmp, foreign=True), NotAFeedbackStoreError,
                                              r"{tmp}/fb\.sqlite is an SQLite database of another application .*invoices"),
}


def _inf_reward(prompt: str, response: str) -> float:
    return float("inf")


@batched
def _two_scores(prompts, responses):
    return [0.0, 1.0]


def _raising_reward(prompt: str, response: str) -> float:
    return {"score": 1.0}["sentiment"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_bad_input_is_refused_with_a_clear_error_and_no_partial_output(row: Row, tmp_path: Path):
    call = row.setup(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(row.exc, match=row.match.replace("{tmp}", re.escape(str(tmp_path)))) as info:
        call()
    assert type(info.value) is row.exc or row.exc is ValueError, type(info.value)
    assert snapshot(tmp_path) == before, "a refused input left partial output behind"


def test_the_table_is_large_enough():
    assert len(ROWS) >= 15

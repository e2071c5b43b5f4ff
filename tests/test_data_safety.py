"""No command deletes a user's files: every folder tokengym writes replaces only what tokengym wrote.

A folder tokengym creates holds a ``.tokengym`` marker file. Given a user's folder (notes, source
files), an existing regular file, ``.`` or a non-empty folder without the marker, every command that
writes a folder refuses before any work, with one line saying how to proceed and exit code 2, and
the path stays byte-for-byte the same. Folders written by earlier versions (no marker) are still
recognised by tokengym's own files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from test_feedback_helpers import small_store
from tokengym.cli import main
from tokengym.feedback.rm_training import tiny_reward_model
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer
from tokengym.utils import (
    MARKER,
    NotReplaceableError,
    atomic_directory,
    check_replaceable,
    check_run_folder,
    written_by_tokengym,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def user_folder(path: Path) -> Path:
    """A user's folder with notes and source files (and a sub-folder)."""
    (path / "src").mkdir(parents=True)
    (path / "notes.txt").write_text("do not lose these notes\n")
    (path / "src" / "main.py").write_text("print('hello')\n")
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def refused(tmp: Path, *argv: str, match: str = "tokengym did not write|existing file|current directory") -> str:
    before = snapshot(tmp)
    rc, err = run_cli(*argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    assert re.search(r"give (a new|another|the path)|choose another", err), err  # says how to proceed
    assert snapshot(tmp) == before, "a refused command changed the user's files"
    return err


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "encoder"
    tok, model = tiny_reward_model(hidden=16, layers=1, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def labelled(path: Path) -> Path:
    from tokengym.feedback.simulate import LabelSimulator, SimulatedAnnotator

    store = small_store(path, n_prompts=4, k=3)
    sim = LabelSimulator(store, lambda ps, rs: [float(len(r)) + int(r.split()[1]) for r in rs], seed=0)
    sim.label_pairs([SimulatedAnnotator("sim", 0.9)], sim.sample_pairs(12))
    store.close()
    return path


# ------------------------------------------------------------------------------- the helpers
def test_atomic_directory_replaces_only_its_own_folders(tmp_path: Path) -> None:
    # new, empty and marked folders are written; the new folder carries the marker
    for name, prepare in (("new", None), ("empty", Path.mkdir)):
        if prepare:
            prepare(tmp_path / name)
        with atomic_directory(tmp_path / name, what="test") as tmp:
            (tmp / "a.txt").write_text("1")
        assert json.loads((tmp_path / name / MARKER).read_text())["what"] == "test"
    with atomic_directory(tmp_path / "new") as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [MARKER, "b.txt"]

    # a user's folder, a file, a symbolic link: refused before the block runs, nothing changed
    user_folder(tmp_path / "mine")
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    before = snapshot(tmp_path)
    for target in ("mine", "file.txt", "link"):
        with pytest.raises(NotReplaceableError, match="give a new path"):
            with atomic_directory(tmp_path / target):
                raise AssertionError("the block must not run")
    assert snapshot(tmp_path) == before


def test_check_replaceable_refuses_the_current_directory_and_its_parents(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / MARKER).write_text("{}")  # even a marked folder: it is where the user stands
    monkeypatch.chdir(tmp_path / "work")
    for path in (".", "..", str(tmp_path / "work")):
        with pytest.raises(NotReplaceableError, match="current directory"):
            check_replaceable(path, "--out")


def test_folders_of_earlier_versions_are_recognised(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "trainer_state.json").write_text("{}")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "tokengym_reward.json").write_text("{}")
    run = tmp_path / "run"
    (run / "final_model").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "final_model" / "config.json").write_text("{}")
    (run / "final_model" / "model.safetensors").write_bytes(b"")
    assert all(written_by_tokengym(tmp_path / p) for p in ("ckpt", "rm", "run/final_model"))
    assert check_run_folder(run) == run
    (tmp_path / "lone" / "final_model").mkdir(parents=True)  # a final_model outside a run is not ours
    (tmp_path / "lone" / "final_model" / "config.json").write_text("{}")
    (tmp_path / "lone" / "final_model" / "model.safetensors").write_bytes(b"")
    assert not written_by_tokengym(tmp_path / "lone" / "final_model")


def test_cache_rule_matches_the_models_module(monkeypatch, tmp_path: Path) -> None:
    from tokengym import models, utils

    assert utils._cache_root() == models.cache_dir()
    monkeypatch.setenv("TOKENGYM_CACHE", str(tmp_path))
    assert utils._cache_root() == models.cache_dir() == tmp_path
    (tmp_path / "models" / "conv").mkdir(parents=True)
    (tmp_path / "models" / "conv" / "config.json").write_text("{}")
    assert written_by_tokengym(tmp_path / "models" / "conv")


def test_an_interrupted_swap_in_the_way_must_be_ours(tmp_path: Path) -> None:
    user_folder(tmp_path / ".out.old")  # a user's folder that happens to have the backup's name
    before = snapshot(tmp_path)
    with pytest.raises(NotReplaceableError, match=r"\.out\.old is in the way"):
        check_replaceable(tmp_path / "out")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- every command
def test_train_rm_refuses_a_user_folder_a_file_and_dot(tmp_path: Path, encoder: Path, monkeypatch) -> None:
    store = labelled(tmp_path / "lab.sqlite")
    user_folder(tmp_path / "important")
    (tmp_path / "model.txt").write_text("an existing file")
    base = ("train-rm", "--store", store, "--base-model", encoder, "--batch-size", "4", "--max-length", "16")
    refused(tmp_path, *base, "--out", tmp_path / "important", match="important is a folder tokengym did not write")
    refused(tmp_path, *base, "--out", tmp_path / "model.txt", match="model.txt is an existing file")
    monkeypatch.chdir(tmp_path)
    refused(tmp_path, *base, "--out", ".", match="current directory")
    assert not (tmp_path / ".model.txt.old").exists()

    # its own output is replaced, and carries the marker
    rc, err = run_cli(*base, "--out", tmp_path / "rm")
    assert rc == 0, err
    first = (tmp_path / "rm" / MARKER).read_bytes()
    rc, err = run_cli(*base, "--out", tmp_path / "rm", "--seed", "1")
    assert rc == 0, err
    assert (tmp_path / "rm" / MARKER).read_bytes() == first and (tmp_path / "rm" / "tokengym_reward.json").is_file()


def test_train_rm_library_refuses_before_training(tmp_path: Path) -> None:
    from tokengym.feedback.rm_training import RMConfig, train_reward_model
    from tokengym.feedback.store import FeedbackStore

    store = FeedbackStore(labelled(tmp_path / "lab.sqlite"))
    user_folder(tmp_path / "important")
    before = snapshot(tmp_path / "important")
    with pytest.raises(NotReplaceableError):
        train_reward_model(store, tmp_path / "important", RMConfig(batch_size=4, max_length=16),
                           model=tiny_reward_model(hidden=16, layers=1), log=None)
    assert snapshot(tmp_path / "important") == before
    store.close()


def test_train_refuses_a_user_output_dir_before_loading_anything(tmp_path: Path) -> None:
    user_folder(tmp_path / "important")
    refused(tmp_path, "train", "--output-dir", tmp_path / "important", "--env", "tokengym/PositiveReview-v0",
            match="important is a folder tokengym did not write")
    (tmp_path / "file").write_text("x")
    refused(tmp_path, "train", "--output-dir", tmp_path / "file", "--env", "tokengym/PositiveReview-v0",
            match="is an existing file")


def test_train_output_dir_rules(tmp_path: Path) -> None:
    from tokengym.train import _prepare_output

    _prepare_output(tmp_path / "run", resume=False, overwrite=False)  # new: created and marked
    assert json.loads((tmp_path / "run" / MARKER).read_text())["what"] == "tokengym train"
    _prepare_output(tmp_path / "run", resume=False, overwrite=False)  # its own: fine again
    # a user's folder where the run's checkpoint or final model would go is refused up front
    user_folder(tmp_path / "run" / "final_model")
    before = snapshot(tmp_path)
    with pytest.raises(NotReplaceableError, match=r"final_model is a folder tokengym did not write"):
        _prepare_output(tmp_path / "run", resume=False, overwrite=False)
    assert snapshot(tmp_path) == before
    # a run folder of an earlier version (no marker) is recognised by its metrics
    legacy = tmp_path / "legacy"
    (legacy / "final_model").mkdir(parents=True)
    (legacy / "metrics.jsonl").write_text("")
    (legacy / "final_model" / "config.json").write_text("{}")
    (legacy / "final_model" / "model.safetensors").write_bytes(b"")
    _prepare_output(legacy, resume=False, overwrite=True)
    assert (legacy / MARKER).is_file() and not (legacy / "metrics.jsonl").exists()


def test_save_pretrained_and_checkpoints_refuse_a_user_folder(tmp_path: Path) -> None:
    from tokengym.agents import PPOAgent, PPOConfig
    from tokengym.envs import BatchedTextEnv

    tok = make_toy_tokenizer()
    env = BatchedTextEnv(2, tokenizer=tok, reward=lambda p, r: 0.0, prompts=TOY_PROMPTS, split=None,
                         max_new_tokens=2, max_prompt_tokens=4)
    lm = make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)[1]
    agent = PPOAgent(env, lm, PPOConfig(batch_size=2, minibatch_size=2, micro_batch_size=2, lora_r=0))
    user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    with pytest.raises(NotReplaceableError):
        agent.save_pretrained(tmp_path / "mine")
    with pytest.raises(NotReplaceableError):
        agent.save_checkpoint(tmp_path / "mine")
    assert snapshot(tmp_path) == before
    agent.save_pretrained(tmp_path / "policy")  # a new folder: written, marked, and replaceable again
    assert (tmp_path / "policy" / MARKER).is_file()
    agent.save_pretrained(tmp_path / "policy")


def test_save_reward_model_refuses_a_user_folder(tmp_path: Path) -> None:
    from tokengym.rewards.learned import save_reward_model

    tok, model = tiny_reward_model(hidden=16, layers=1)
    user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    with pytest.raises(NotReplaceableError):
        save_reward_model(tmp_path / "mine", tok, model)
    assert snapshot(tmp_path) == before


def test_candidates_store_never_replaces_a_user_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("The film was\n")
    (tmp_path / "notes.sqlite").write_text("my notes, not a database\n" * 50)
    user_folder(tmp_path / "folder.sqlite")
    for store in ("notes.sqlite", "folder.sqlite"):
        refused(tmp_path, "candidates", "--store", tmp_path / store, "--prompts", tmp_path / "p.txt",
                match="not a readable SQLite database|is a folder, not a feedback store")


def test_export_overwrites_only_its_own_exports(tmp_path: Path) -> None:
    store = labelled(tmp_path / "lab.sqlite")
    (tmp_path / "notes.jsonl").write_text('{"my": "data"}\n')
    user_folder(tmp_path / "dir")
    refused(tmp_path, "feedback-export", "--store", store, "--out", tmp_path / "notes.jsonl",
            match="notes.jsonl exists and is not feedback exports written by tokengym")
    refused(tmp_path, "feedback-export", "--store", store, "--out", tmp_path / "dir", match="is a folder, not a file")
    assert run_cli("feedback-export", "--store", store, "--out", tmp_path / "out.jsonl")[0] == 0
    assert run_cli("feedback-export", "--store", store, "--out", tmp_path / "out.jsonl")[0] == 0  # its own: replaced


def test_evaluate_output_refuses_a_user_file_before_loading_models(tmp_path: Path) -> None:
    tok, lm = make_tiny_causal_lm(make_toy_tokenizer(), hidden=16, n_layers=1, n_heads=2)
    lm.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    (tmp_path / "results.json").write_text('{"mine": 1}')
    refused(tmp_path, "evaluate", "--model", tmp_path / "policy", "--output", tmp_path / "results.json",
            match="results.json exists and is not evaluation results written by tokengym")


def test_refused_import_leaves_no_new_store(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"type": "meta", "schema_version": 2}\n'
                                       '{"type": "annotator", "id": 1, "name": "a"}\n'
                                       '{"type": "score", "id": 1, "annotator_id": 1, "candidate_id": 9, '
                                       '"value": 3, "created_at": 1.0}\n')
    before = snapshot(tmp_path)
    rc, err = run_cli("feedback-import", "--store", tmp_path / "new.sqlite", tmp_path / "in.jsonl")
    assert rc == 2 and "candidate id 9" in err
    assert snapshot(tmp_path) == before


def test_marker_content_names_tokengym(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "x", what="reward model") as tmp:
        (tmp / "f").write_text("")
    data = json.loads((tmp_path / "x" / MARKER).read_text())
    assert data["written_by"] == "tokengym" and data["what"] == "reward model" and "version" in data
    assert os.path.getsize(tmp_path / "x" / MARKER) < 200


def test_train_writes_a_marked_run_and_replaces_only_its_own_outputs(tmp_path: Path) -> None:
    """A tiny real run: the run folder, its checkpoint and final model are marked, and --overwrite and
    --resume replace them; a user's folder put where the final model goes is refused before work."""
    tok, lm = make_tiny_causal_lm(make_toy_tokenizer(), hidden=16, n_layers=1, n_heads=2)
    lm.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    (tmp_path / "p.txt").write_text("\n".join(TOY_PROMPTS) + "\n")
    (tmp_path / "c.yaml").write_text(
        f"env: tokengym/TextGeneration-v0\nmodel: {tmp_path / 'policy'}\nreward: length\nprompts: {tmp_path / 'p.txt'}\n"
        "max_new_tokens: 2\nmax_prompt_tokens: 4\neval_episodes: 2\nthreads: 1\n"
        "ppo: {batch_size: 2, minibatch_size: 2, micro_batch_size: 2, ppo_epochs: 1, checkpoint_every: 1, sample_every: 0}\n")
    run = tmp_path / "run"
    base = ("train", "--config", tmp_path / "c.yaml", "--output-dir", run, "--no-progress", "--iterations")
    assert run_cli(*base, "1")[0] == 0
    assert all((run / p / MARKER).is_file() for p in ("", "checkpoint", "final_model"))
    assert run_cli(*base, "1", "--overwrite")[0] == 0
    assert run_cli(*base, "2", "--resume")[0] == 0
    shutil.rmtree(run / "final_model")
    user_folder(run / "final_model")
    refused(tmp_path, *base, "2", "--resume", match="final_model is a folder tokengym did not write")

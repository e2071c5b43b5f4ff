"""The command line fed its typical bad inputs: every one exits with code 2 and one line on stderr
naming the flag, field or file, before any model is loaded, and the test's directory (stores, model
folders, files given as outputs) is byte-for-byte what it was: no empty store, no 0-byte file, no
registered annotator, no half-written output.

Tiny models in local folders keep every case fast; most are refused before those are even read.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
from pathlib import Path
from typing import Callable

import pytest
import torch

from test_feedback_helpers import small_store
from tokengym.cli import main
from tokengym.feedback.rm_training import tiny_reward_model
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import make_toy_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders shared by the module (read-only; outside the per-test snapshot)."""
    root = tmp_path_factory.mktemp("models")
    tok, lm = make_tiny_causal_lm(make_toy_tokenizer(), hidden=16, n_layers=1, n_heads=2, seed=0)
    lm.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    rtok, rm = tiny_reward_model(hidden=16, layers=1, seed=0)
    rm.save_pretrained(root / "pickle_encoder")
    rtok.save_pretrained(root / "pickle_encoder")
    (root / "pickle_encoder" / "model.safetensors").unlink()  # only a pickle of the weights is left
    torch.save(rm.state_dict(), root / "pickle_encoder" / "pytorch_model.bin")
    return {"policy": root / "policy", "pickle": root / "pickle_encoder"}


def reward_dir(tmp: Path, normalisation: str | None) -> Path:
    """A learned reward folder whose tokengym_reward.json holds ``normalisation`` (None: valid)."""
    rtok, rm = tiny_reward_model(hidden=16, layers=1, seed=0)
    out = tmp / "rm"
    rm.save_pretrained(out)
    rtok.save_pretrained(out)
    (out / "tokengym_reward.json").write_text(normalisation or '{"mean": 0.0, "std": 1.0}')
    return out


def labelled_store(tmp: Path) -> Path:
    store = small_store(tmp / "fb.sqlite", n_prompts=3, k=3)
    store.close()
    return tmp / "fb.sqlite"


def corrupted_store(tmp: Path) -> Path:
    """A store whose first page (header, schema) is intact and every later page is garbage."""
    path = tmp / "fb.sqlite"
    store = small_store(path, n_prompts=40, k=4)
    store.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    path.write_bytes(bytes(data))
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# Each case: setup(tmp, models) -> argv (strings; "{tmp}" is the test's directory), and a regex that
# the single stderr line must match.
Setup = Callable[[Path, dict], list[str]]


def args(*argv: str) -> Setup:
    return lambda tmp, models: [a.format(tmp=tmp, **{k: str(v) for k, v in models.items()}) for a in argv]


def with_store(make: Callable[[Path], Path], *argv: str) -> Setup:
    def setup(tmp: Path, models: dict) -> list[str]:
        make(tmp)
        return args(*argv)(tmp, models)

    return setup


def with_reward(normalisation: str, *argv: str) -> Setup:
    def setup(tmp: Path, models: dict) -> list[str]:
        reward_dir(tmp, normalisation)
        return args(*argv)(tmp, models)

    return setup


def with_file(name: str, data: bytes, *argv: str) -> Setup:
    def setup(tmp: Path, models: dict) -> list[str]:
        (tmp / name).write_bytes(data)
        return args(*argv)(tmp, models)

    return setup


STORE = ("--store", "{tmp}/fb.sqlite")
NEW_STORE = ("--store", "{tmp}/new.sqlite")  # must still not exist afterwards
PROMPTS = "{tmp}/p.txt"


def candidates(*argv: str) -> Setup:
    return with_file("p.txt", b"The film was\nMy dinner was\n", "candidates", *NEW_STORE, "--prompts", PROMPTS,
                     "--model", "{policy}", *argv)


def candidates_into(name: str, make: Callable[[Path], object]) -> Setup:
    """``candidates`` with ``--store`` naming ``name``, which ``make`` prepares first."""
    def setup(tmp: Path, models: dict) -> list[str]:
        make(tmp / name)
        argv = candidates()(tmp, models)
        argv[argv.index("--store") + 1] = str(tmp / name)
        return argv

    return setup


CASES: dict[str, tuple[Setup, str]] = {
    # -- train: checked before the output folder is made or a model is loaded
    "train-model-missing": (args("train", "--model", "/nonexistent", "--output-dir", "{tmp}/out"),
                            r"--model\) /nonexistent: no such file or folder"),
    "train-unknown-reward": (args("train", "--reward", "nope", "--output-dir", "{tmp}/out"),
                             r"--reward\): unknown reward 'nope'; known rewards: .*vader"),
    "train-unknown-gold": (args("train", "--set", "gold_reward=nope", "--output-dir", "{tmp}/out"),
                           r"config key 'gold_reward': unknown reward 'nope'"),
    "train-unknown-env": (args("train", "--env", "tokengym/Nope-v0", "--output-dir", "{tmp}/out"),
                          r"--env\): unknown environment 'tokengym/Nope-v0'"),
    "train-learned-without-path": (args("train", "--reward", "learned", "--output-dir", "{tmp}/out"),
                                   r"--reward\): the 'learned' reward needs a reward model folder"),
    "train-threads-negative": (args("train", "--set", "threads=-2", "--output-dir", "{tmp}/out"),
                               r"config key 'threads' .*must be at least 0, got -2"),
    "train-iterations-negative": (args("train", "--iterations", "-3", "--output-dir", "{tmp}/out"),
                                  r"config key 'iterations' \(--iterations\) must be positive, got -3"),
    "train-iterations-zero": (args("train", "--iterations", "0", "--output-dir", "{tmp}/out"),
                              r"--iterations\) must be positive, got 0"),
    "train-eval-episodes-zero": (args("train", "--set", "eval_episodes=0", "--output-dir", "{tmp}/out"),
                                 r"config key 'eval_episodes' must be positive, got 0"),
    "train-pickle-model": (args("train", "--model", "{pickle}", "--output-dir", "{tmp}/out"),
                           r"--model\) .*pickle_encoder: holds only pickle weights \(pytorch_model\.bin\)"),
    "train-reward-json-not-a-number": (with_reward('{"mean": "abc", "std": 1.0}', "train", "--reward", "{tmp}/rm",
                                                   "--output-dir", "{tmp}/out"),
                                       r"{tmp}/rm/tokengym_reward\.json: 'mean' must be a finite number, got 'abc'"),
    "train-reward-json-invalid": (with_reward('{"mean": 0.0,', "train", "--reward", "{tmp}/rm",
                                              "--output-dir", "{tmp}/out"),
                                  r"{tmp}/rm/tokengym_reward\.json is not valid JSON"),
    "train-prompts-missing": (args("train", "--set", "prompts={tmp}/none.txt", "--output-dir", "{tmp}/out"),
                              r"config key 'prompts' {tmp}/none\.txt: neither a built-in prompt set"),
    "train-config-not-utf8": (with_file("c.yaml", b"iterations: 3\nmodel: caf\xe9\n", "train", "--config",
                                        "{tmp}/c.yaml"), r"{tmp}/c\.yaml: not valid UTF-8"),
    # -- evaluate
    "evaluate-model-missing": (args("evaluate", "--model", "/nonexistent", "--output", "{tmp}/m.json"),
                               r"--model /nonexistent: no such file or folder"),
    "evaluate-unknown-env": (args("evaluate", "--model", "{policy}", "--env", "nope"),
                             r"--env: unknown environment 'nope'"),
    "evaluate-unknown-reward": (args("evaluate", "--model", "{policy}", "--reward", "nope"),
                                r"--reward: unknown reward 'nope'"),
    "evaluate-episodes-zero": (args("evaluate", "--model", "{policy}", "--episodes", "0"),
                               r"--episodes must be positive, got 0"),
    # -- candidates: no store is created by a refused run
    "candidates-model-missing": (with_file("p.txt", b"The film was\n", "candidates", *NEW_STORE, "--prompts", PROMPTS,
                                           "--model", "/nonexistent"), r"--model /nonexistent: no such file or folder"),
    "candidates-batch-size-negative": (candidates("--batch-size", "-3"), r"--batch-size must be positive, got -3"),
    "candidates-limit-negative": (candidates("--limit", "-1"), r"--limit must be positive, got -1"),
    "candidates-per-prompt-zero": (candidates("--per-prompt", "0"), r"--per-prompt must be positive, got 0"),
    "candidates-max-new-tokens-zero": (candidates("--max-new-tokens", "0"), r"--max-new-tokens must be positive"),
    "candidates-round-negative": (candidates("--round", "-1"), r"--round must be at least 0, got -1"),
    "candidates-bad-score-range": (candidates("--score-range", "5", "1"), r"--score-range must be two finite numbers"),
    "candidates-nan-score-range": (candidates("--score-range", "nan", "7"), r"--score-range must be two finite"),
    "candidates-beam-too-narrow": (candidates("--strategies", "beam:2", "--per-prompt", "3"),
                                   r"strategy beam:2 would have to return 3 candidates"),
    "candidates-unknown-strategy": (candidates("--strategies", "nucleus"), r"unknown decoding strategy 'nucleus'"),
    "candidates-prompts-missing": (args("candidates", *NEW_STORE, "--prompts", "{tmp}/none.txt"),
                                   r"--prompts {tmp}/none\.txt: neither a built-in prompt set"),
    "candidates-store-is-a-folder": (candidates_into("dir.sqlite", Path.mkdir),
                                     r"{tmp}/dir\.sqlite is a folder, not a feedback store file"),
    "candidates-store-0-bytes": (candidates_into("empty.sqlite", lambda p: p.write_bytes(b"")),
                                 r"{tmp}/empty\.sqlite is empty \(0 bytes\), not a feedback store"),
    "candidates-store-not-sqlite": (candidates_into("notes.txt", lambda p: p.write_text("my notes\n" * 100)),
                                    r"NotAFeedbackStoreError: {tmp}/notes\.txt is not a readable SQLite database"),
    # -- train-rm: every number, the base model and the gold judge before any training
    "train-rm-batch-size-zero": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--batch-size", "0"),
                                 r"--batch-size must be positive, got 0"),
    "train-rm-batch-size-negative": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                                "--batch-size", "-4"), r"--batch-size must be positive, got -4"),
    "train-rm-epochs-zero": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--epochs", "0"),
                             r"--epochs must be > 0, got 0"),
    "train-rm-epochs-negative": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--epochs", "-1"),
                                 r"--epochs must be > 0, got -1"),
    "train-rm-max-length-zero": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                            "--max-length", "0"), r"--max-length must be at least 8, got 0"),
    "train-rm-heldout-above-one": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                              "--heldout", "1.5"), r"--heldout must be in \[0, 1\), got 1\.5"),
    "train-rm-heldout-negative": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                             "--heldout", "-0.5"), r"--heldout must be in \[0, 1\), got -0\.5"),
    "train-rm-heldout-one": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--heldout", "1.0"),
                             r"--heldout must be in \[0, 1\), got 1"),
    "train-rm-lr-zero": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--lr", "0"),
                         r"--lr must be > 0, got 0"),
    "train-rm-unknown-kind": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--kinds", "votes"),
                              r"--kinds must be a comma-separated subset of score,rank,compare, got 'votes'"),
    "train-rm-pickle-base-model": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                              "--base-model", "{pickle}"),
                                   r"--base-model .*pickle_encoder: holds only pickle weights"),
    "train-rm-base-model-missing": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm",
                                               "--base-model", "/nonexistent"), r"--base-model /nonexistent: no such"),
    "train-rm-unknown-gold": (with_store(labelled_store, "train-rm", *STORE, "--out", "{tmp}/rm", "--gold", "nope"),
                              r"--gold: unknown reward 'nope'"),
    "train-rm-store-is-a-folder": (lambda tmp, m: ((tmp / "s").mkdir(), ["train-rm", "--store", str(tmp / "s"),
                                                                         "--out", str(tmp / "rm")])[1],
                                   r"{tmp}/s is a folder, not a feedback store file"),
    "train-rm-store-0-bytes": (with_file("fb.sqlite", b"", "train-rm", *STORE, "--out", "{tmp}/rm"),
                               r"{tmp}/fb\.sqlite is empty \(0 bytes\)"),
    "train-rm-store-missing": (args("train-rm", *STORE, "--out", "{tmp}/rm"), r"no feedback store at {tmp}/fb\.sqlite"),
    "train-rm-corrupted-store-page": (with_store(corrupted_store, "train-rm", *STORE, "--out", "{tmp}/rm"),
                                      r"NotAFeedbackStoreError: {tmp}/fb\.sqlite is damaged or unreadable "
                                      r"\(database disk image is malformed\)"),
    # -- simulate-labels
    "simulate-annotators-zero": (with_store(labelled_store, "simulate-labels", *STORE, "--annotators", "0"),
                                 r"--annotators must be positive, got 0"),
    "simulate-annotators-negative": (with_store(labelled_store, "simulate-labels", *STORE, "--annotators", "-2"),
                                     r"--annotators must be positive, got -2"),
    "simulate-pairs-zero": (with_store(labelled_store, "simulate-labels", *STORE, "--pairs", "0"),
                            r"--pairs must be positive, got 0"),
    "simulate-accuracy-too-low": (with_store(labelled_store, "simulate-labels", *STORE, "--accuracy", "0.4"),
                                  r"--accuracy must be in \(0\.5, 1\], got 0\.4"),
    "simulate-unknown-judge": (with_store(labelled_store, "simulate-labels", *STORE, "--judge", "nope"),
                               r"--judge: unknown reward 'nope'"),
    "simulate-learned-judge-without-path": (with_store(labelled_store, "simulate-labels", *STORE, "--judge", "learned"),
                                            r"--judge: the 'learned' reward needs a reward model folder"),
    "simulate-too-many-pairs": (with_store(labelled_store, "simulate-labels", *STORE, "--pairs", "999"),
                                r"asked for 999 pairs but the store has only 9 within-prompt pairs"),
    # -- label: the port is checked (and taken) before the annotator is registered
    "label-port-too-large": (with_store(labelled_store, "label", *STORE, "--serve", "--port", "99999"),
                             r"--port must be at most 65535, got 99999"),
    "label-port-negative": (with_store(labelled_store, "label", *STORE, "--serve", "--port", "-1"),
                            r"--port must be at least 0, got -1"),
    "label-unknown-kind": (with_store(labelled_store, "label", *STORE, "--serve", "--port", "0", "--kinds", "vote"),
                           r"--kinds must be a comma-separated subset"),
    "label-store-0-bytes": (with_file("fb.sqlite", b"", "label", *STORE, "--kind", "score"),
                            r"{tmp}/fb\.sqlite is empty \(0 bytes\)"),
    # -- read-only commands never initialise a store
    "agreement-store-0-bytes": (with_file("fb.sqlite", b"", "agreement", *STORE), r"{tmp}/fb\.sqlite is empty"),
    "export-store-0-bytes": (with_file("fb.sqlite", b"", "feedback-export", *STORE, "--out", "{tmp}/x.jsonl"),
                             r"{tmp}/fb\.sqlite is empty"),
    "agreement-corrupted-store-page": (with_store(corrupted_store, "agreement", *STORE),
                                       r"{tmp}/fb\.sqlite is damaged or unreadable"),
    "export-corrupted-store-page": (with_store(corrupted_store, "feedback-export", *STORE, "--out", "{tmp}/x.jsonl"),
                                    r"{tmp}/fb\.sqlite is damaged or unreadable"),
    # -- import: a refused import leaves no new store
    "import-file-missing": (args("feedback-import", *NEW_STORE, "{tmp}/none.jsonl"), r"file {tmp}/none\.jsonl: no such file"),
    "import-not-json": (with_file("in.jsonl", b'{"type": "meta", "schema_version": 1}\n{oops\n', "feedback-import",
                                  *NEW_STORE, "{tmp}/in.jsonl"), r"{tmp}/in\.jsonl:2: not JSON"),
    "import-not-utf8": (with_file("in.jsonl", b'{"type": "prompt", "id": 1, "text": "caf\xe9"}\n', "feedback-import",
                                  *NEW_STORE, "{tmp}/in.jsonl"), r"{tmp}/in\.jsonl:1: not valid UTF-8"),
    "import-unknown-candidate": (with_file("in.jsonl", b'{"type": "annotator", "id": 1, "name": "x"}\n'
                                                       b'{"type": "score", "annotator_id": 1, "candidate_id": 5, '
                                                       b'"value": 3, "created_at": 1.0, "id": 1}\n',
                                           "feedback-import", *NEW_STORE, "{tmp}/in.jsonl"),
                                 r"line 2: import refers to candidate id 5, which the file does not define"),
}


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def check_refusal(argv: list[str], pattern: str, tmp: Path) -> str:
    before = snapshot(tmp)
    rc, err = run_cli(argv)
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err  # exactly one line
    assert re.search(pattern.replace("{tmp}", re.escape(str(tmp))), err), err
    assert snapshot(tmp) == before, "a refused command changed the directory"
    return err


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_flag_exits_2_with_one_line_and_changes_nothing(case: str, tmp_path: Path, models, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    setup, pattern = CASES[case]
    argv = setup(tmp_path, models)
    check_refusal(argv, pattern, tmp_path)
    assert not (tmp_path / "new.sqlite").exists() and not (tmp_path / "out").exists()


def test_label_port_in_use_registers_no_annotator(tmp_path: Path) -> None:
    labelled_store(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        check_refusal(["label", "--store", str(tmp_path / "fb.sqlite"), "--serve", "--port", str(port)],
                      rf"--port {port}: cannot listen on 127\.0\.0\.1:{port}: .*choose another port", tmp_path)


def test_read_only_store_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    """A store the user cannot write (tests run as root, so the permission is taken away by hand)."""
    import os

    store = labelled_store(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) in (store, tmp_path) and mode & os.W_OK
                        else real_access(p, mode, **kw))
    for argv in (["label", "--store", str(store), "--kind", "compare"],
                 ["simulate-labels", "--store", str(store), "--pairs", "3"]):
        check_refusal(argv, r"ReadOnlyStoreError: --store {tmp}/fb\.sqlite is read-only", tmp_path)
    # reading still works
    rc, err = run_cli(["feedback-export", "--store", str(store), "--out", str(tmp_path.parent / f"{tmp_path.name}.jsonl")])
    assert rc == 0, err


def test_store_read_only_write_raises_a_feedback_error(tmp_path: Path, monkeypatch) -> None:
    import os

    from tokengym.feedback.errors import ReadOnlyStoreError
    from tokengym.feedback.store import FeedbackStore

    path = labelled_store(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    with FeedbackStore(path, create=False) as store:
        assert store.read_only and len(store.candidates()) == 9
        with pytest.raises(ReadOnlyStoreError, match=r"fb\.sqlite is read-only"):
            store.add_annotator("x")


def test_corrupted_page_is_a_feedback_error_in_the_library(tmp_path: Path) -> None:
    from tokengym.feedback.errors import FeedbackError
    from tokengym.feedback.store import FeedbackStore

    path = corrupted_store(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(FeedbackError, match=r"fb\.sqlite is damaged or unreadable"):
        with FeedbackStore(path, create=False) as store:
            store.candidates()
    assert snapshot(tmp_path) == before


def test_bad_score_range_leaves_no_file(tmp_path: Path) -> None:
    from tokengym.feedback.errors import FeedbackError
    from tokengym.feedback.store import FeedbackStore

    for bad in ((5, 1), (1, float("inf")), (3, 3)):
        with pytest.raises(FeedbackError, match="score range"):
            FeedbackStore(tmp_path / "fb.sqlite", score_range=bad)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_sqlite_file_is_not_taken_for_a_new_store(tmp_path: Path) -> None:
    import sqlite3

    from tokengym.feedback.errors import NotAFeedbackStoreError
    from tokengym.feedback.store import FeedbackStore

    conn = sqlite3.connect(tmp_path / "other.db")  # a valid database file with no tables, of some other program
    conn.execute("CREATE TABLE t (x)")
    conn.execute("DROP TABLE t")
    conn.commit()
    conn.close()
    assert (tmp_path / "other.db").stat().st_size > 0
    before = snapshot(tmp_path)
    with pytest.raises(NotAFeedbackStoreError, match="is an empty SQLite database, not a feedback store"):
        FeedbackStore(tmp_path / "other.db")
    assert snapshot(tmp_path) == before


def test_the_case_table_covers_the_issue() -> None:
    assert len(CASES) >= 60

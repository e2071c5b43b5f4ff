"""Human-feedback subcommands for the ``tokengym`` CLI.

The main CLI calls :func:`add_commands` on its subparsers; ``python -m tokengym.feedback.cli`` runs
them stand-alone. Every handler returns an exit code; a refused operation (a
:class:`~tokengym.feedback.errors.FeedbackError`, or a bad flag) prints one line to stderr naming
the flag, field or file, and returns 2. Every flag is checked before any model is loaded and before
anything is written, so a refused command leaves every file as it was (no new or empty store, no
registered annotator, no half-written output).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tokengym import checks
from tokengym.checks import ArgumentError

from .errors import FeedbackError, ReadOnlyStoreError

DEFAULT_STRATEGIES = "greedy,beam:4,sample,temperature:0.7,top_k:50,top_p:0.9"


def _refusals(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exception as exc:
            if not _is_refusal(exc):
                raise
            # One line naming the flag, field or file; nothing was written.
            print(f"error: {type(exc).__name__}: " + " ".join(str(exc).split()), file=sys.stderr)
            return 2
    run.__name__ = handler.__name__
    return run


def _is_refusal(exc: BaseException) -> bool:
    from tokengym.cli import _is_refusal as main_refusal

    return isinstance(exc, FeedbackError) or main_refusal(exc)


def _score_range(args: argparse.Namespace) -> tuple[float, float] | None:
    if not getattr(args, "score_range", None):
        return None
    lo, hi = args.score_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ArgumentError(f"--score-range must be two finite numbers MIN < MAX, got {lo:g} {hi:g}")
    return lo, hi


def _store(args: argparse.Namespace, create: bool = False, write: bool = False):
    """Open ``--store``; ``write``: refuse now, before any work, a store that cannot be written."""
    from .store import FeedbackStore, store_writable

    path = Path(args.store)
    if write and path.is_file() and not store_writable(path):  # refused before SQLite even opens it
        raise ReadOnlyStoreError(f"--store {args.store} is read-only (the file or its folder cannot be written); "
                                 "make them writable, or work on a copy")
    store = FeedbackStore(path, score_range=_score_range(args), create=create)
    if write and store.read_only:
        store.close()
        raise ReadOnlyStoreError(f"--store {args.store} is read-only (the file or its folder cannot be written); "
                                 "make them writable, or work on a copy")
    return store


def _check_store_for_writing(args: argparse.Namespace) -> None:
    """A store that a command will create or add to at its end: checked now, nothing created yet."""
    from tokengym.utils import check_creatable

    path = Path(args.store)
    if path.exists() or path.is_symlink():
        _store(args, write=True).close()
    else:
        _score_range(args)
        check_creatable(path, "--store")


@contextlib.contextmanager
def _new_or_existing_store(args: argparse.Namespace):
    """The store to write into; one that this command created is removed again if the command fails."""
    path = Path(args.store)
    created = not path.exists()
    store = _store(args, create=True, write=True)
    try:
        yield store
    except BaseException:
        store.close()
        if created:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(path) + suffix)
        raise
    store.close()


def _add(subparsers: Any, name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=help)
    p.add_argument("--store", required=True, help="feedback SQLite file (created if missing)")
    p.set_defaults(func=_refusals(handler))
    return p


def add_commands(subparsers: Any) -> None:
    """Add ``candidates``, ``label``, ``train-rm``, ``simulate-labels``, ``agreement``, ``feedback-export``
    and ``feedback-import`` to an argparse subparsers object."""
    p = _add(subparsers, "candidates", "generate K candidates per prompt into the feedback store", _candidates)
    p.add_argument("--prompts", default="movie_reviews", help="built-in prompt set name or a .txt/.jsonl/.csv file")
    p.add_argument("--split", default=None, help="keep only this split of the prompt set (train/test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--per-prompt", type=int, default=4, help="candidates per prompt (K)")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help="decoding strategies, cycled over the K candidates: greedy, beam[:n], sample, "
                        f"temperature[:t], top_k[:k], top_p[:p] (default {DEFAULT_STRATEGIES})")
    p.add_argument("--model", default="smollm2", help="policy: 'smollm2', a GGUF file or a local HF folder")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--round", type=int, default=0, help="round number recorded with the candidates")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="score range of a new store (default 1 7)")

    p = _add(subparsers, "label", "label candidates: terminal by default, or a local web page with --serve", _label)
    p.add_argument("--annotator", default=None, help="your name in the store (default: the login name)")
    p.add_argument("--serve", action="store_true", help="serve the labelling page on 127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="web page port (0 picks a free one)")
    p.add_argument("--kind", choices=("score", "rank", "compare"), default="compare",
                   help="terminal labeller: which kind of judgement")
    p.add_argument("--kinds", default="score,rank,compare", help="web page: the kinds offered")
    p.add_argument("--round", type=int, default=None, help="label only candidates of this round")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="compare: at most N pairs per prompt")
    p.add_argument("--limit", type=int, default=None, help="terminal: stop after N tasks")
    p.add_argument("--verbose", action="store_true", help="web page: log every request")

    p = _add(subparsers, "train-rm", "train a reward model on the store's judgements", _train_rm)
    p.add_argument("--out", required=True, help="output folder (loadable by the 'learned' reward)")
    p.add_argument("--base-model", default=None, help="local HF encoder folder (default all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4, help="peak LR (default suits MiniLM; ~1e-5 for larger bases)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--margin", type=float, default=0.0, help="Bradley-Terry margin")
    p.add_argument("--ranking-loss", choices=("kwise", "best_of_n"), default="kwise")
    p.add_argument("--kinds", default="compare,rank,score", help="judgement kinds to train on")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of prompts held out")
    p.add_argument("--reference-round", type=int, default=0,
                   help="round of the reference-policy candidates used for normalisation (-1: all)")
    p.add_argument("--gold", default=None, help="a reward name (e.g. vader) to also report accuracy against")
    p.add_argument("--dropout", action="store_true", help="train with the encoder's dropout on")
    p.add_argument("--seed", type=int, default=0)

    p = _add(subparsers, "simulate-labels", "write simulated judgements from a gold judge", _simulate)
    p.add_argument("--name-prefix", default="sim", help="annotators are named PREFIX-0, PREFIX-1, ... (default sim)")
    p.add_argument("--kind", choices=("score", "rank", "compare"), default="compare")
    p.add_argument("--pairs", type=int, default=1000, help="compare: number of candidate pairs")
    p.add_argument("--annotators", type=int, default=1)
    p.add_argument("--accuracy", type=float, default=0.9)
    p.add_argument("--disagreement", type=float, default=1.0)
    p.add_argument("--noise", choices=("bradley_terry", "thurstone"), default="bradley_terry")
    p.add_argument("--judge", default="vader", help="gold judge: a tokengym reward name")
    p.add_argument("--round", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = _add(subparsers, "agreement", "inter-annotator agreement of one judgement kind", _agreement)
    p.add_argument("--kind", choices=("score", "rank", "compare"), default="compare")
    p.add_argument("--annotators", default=None, help="comma-separated names (default: all)")

    p = _add(subparsers, "feedback-export", "export the feedback store as JSON lines", _export)
    p.add_argument("--out", required=True)

    p = _add(subparsers, "feedback-import", "merge a JSON-lines export into the feedback store", _import)
    p.add_argument("file", help="JSONL file written by feedback-export")


# --------------------------------------------------------------------------------- handlers
def _optional(value: Any, flag: str, minimum: int) -> None:
    if value is not None:
        checks.integer(value, flag, minimum=minimum)


def _kinds(text: str, flag: str) -> list[str]:
    from .annotators import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ArgumentError(f"{flag} must be a comma-separated subset of {','.join(KINDS)}, got {text!r}")
    return kinds


def _candidates(args: argparse.Namespace) -> int:
    from tokengym.envs.prompts import load_prompts

    from .candidates import CandidateGenerator, check_plan, parse_strategies

    # Everything that can be refused is refused before the slow model load and before the store exists.
    checks.positive_int(args.per_prompt, "--per-prompt")
    checks.positive_int(args.max_new_tokens, "--max-new-tokens")
    checks.positive_int(args.batch_size, "--batch-size")
    _optional(args.limit, "--limit", 1)
    checks.integer(args.round, "--round", minimum=0)
    if args.split not in (None, "train", "test"):
        raise ArgumentError(f"--split must be train or test, got {args.split!r}")
    strategies = parse_strategies(args.strategies)
    check_plan(strategies, args.per_prompt)
    checks.prompts_spec(args.prompts, "--prompts")
    prompts = load_prompts(args.prompts, split=args.split).texts()[: args.limit]
    if not prompts:
        raise ArgumentError(f"--prompts {args.prompts}: no prompts to generate for")
    checks.model_spec(args.model, "--model")
    _check_store_for_writing(args)

    from tokengym.models import load_causal_lm

    tokenizer, model = load_causal_lm(args.model)
    gen = CandidateGenerator(tokenizer, model, args.max_new_tokens, args.batch_size, args.seed, args.chat_template)
    rows = gen.generate_rows(prompts, args.per_prompt, strategies, round=args.round, model_name=args.model)
    with _new_or_existing_store(args) as store:
        ids = gen.write_rows(store, prompts, rows)
    print(f"wrote {len(ids)} candidates for {len(prompts)} prompts to {args.store}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from .annotators import TaskQueue

    name = args.annotator if args.annotator is not None else getpass.getuser()
    if not name.strip():
        raise ArgumentError(f"--annotator must be a non-empty name, got {name!r}")
    if args.serve:
        checks.port(args.port, "--port")
        kinds = _kinds(args.kinds, "--kinds")
    else:
        kinds = [args.kind]
    _optional(args.round, "--round", 0)
    _optional(args.pairs_per_prompt, "--pairs-per-prompt", 1)
    _optional(args.limit, "--limit", 1)
    with _store(args, write=True) as store:
        if args.serve:
            from .server import LabelServer

            # The port is taken before the annotator is registered: a port in use changes nothing.
            try:
                server = LabelServer(store, None, name, args.port, verbose=args.verbose)
            except FeedbackError as exc:
                raise ArgumentError(f"--port {args.port}: {exc}") from None
            try:
                server.queue = TaskQueue(store, store.add_annotator(name, "human"), kinds, args.round,
                                         args.pairs_per_prompt)
                print(f"labelling page for {name!r}: {server.url}  (Ctrl-C stops)", flush=True)
                server.serve_forever()
            except KeyboardInterrupt:
                print("stopped.")
            finally:
                server.httpd.server_close()
            return 0
        from .terminal import TerminalLabeller

        queue = TaskQueue(store, store.add_annotator(name, "human"), kinds, args.round, args.pairs_per_prompt)
        n = TerminalLabeller(queue, args.kind, limit=args.limit).run()
        print(f"{n} task(s) submitted by {name!r}")
    return 0


def _train_rm(args: argparse.Namespace) -> int:
    from tokengym.utils import check_replaceable

    from .rm_training import MIN_MAX_LENGTH, RMConfig, train_reward_model

    checks.number(args.epochs, "--epochs", low=0, low_open=True)
    checks.number(args.lr, "--lr", low=0, low_open=True)
    checks.positive_int(args.batch_size, "--batch-size")
    checks.integer(args.max_length, "--max-length", minimum=MIN_MAX_LENGTH)
    checks.number(args.margin, "--margin", low=0)
    checks.number(args.heldout, "--heldout", low=0, high=1, high_open=True)
    checks.integer(args.reference_round, "--reference-round (-1: all rounds)", minimum=-1)
    kinds = _kinds(args.kinds, "--kinds")
    if args.base_model is not None:
        checks.model_spec(args.base_model, "--base-model")
    checks.reward_spec(args.gold, "--gold")
    check_replaceable(args.out, "--out")
    cfg = RMConfig(
        base_model=args.base_model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, margin=args.margin, ranking_loss=args.ranking_loss,
        kinds=tuple(kinds), heldout_fraction=args.heldout,
        reference_round=None if args.reference_round < 0 else args.reference_round, dropout=args.dropout,
        seed=args.seed,
    )
    cfg.validate()

    from tokengym.distributed import init_from_env

    from .simulate import resolve_judge

    with _store(args) as store:
        init_from_env()  # a process group under torchrun (WORLD_SIZE > 1); else nothing
        judge = resolve_judge(args.gold) if args.gold else None
        result = train_reward_model(store, args.out, cfg, judge=judge)
    print(f"held-out pairwise accuracy: {result.heldout_accuracy:.4f}")
    if result.heldout_gold_accuracy is not None:
        print(f"held-out pairwise accuracy vs gold judge {args.gold}: {result.heldout_gold_accuracy:.4f}")
    print(f"reward model saved to {result.path}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import NOISE_MODELS, LabelSimulator, make_annotators, resolve_judge

    checks.positive_int(args.annotators, "--annotators")
    checks.positive_int(args.pairs, "--pairs")
    checks.number(args.accuracy, "--accuracy", low=0.5, high=1, low_open=True)
    checks.number(args.disagreement, "--disagreement", low=0, high=1)
    _optional(args.round, "--round", 0)
    if args.noise not in NOISE_MODELS:
        raise ArgumentError(f"--noise must be one of {', '.join(NOISE_MODELS)}, got {args.noise!r}")
    if not args.name_prefix.strip():
        raise ArgumentError(f"--name-prefix must be non-empty, got {args.name_prefix!r}")
    checks.reward_spec(args.judge, "--judge")
    annotators = make_annotators(args.annotators, args.accuracy, args.disagreement, args.noise, args.seed,
                                 prefix=args.name_prefix)
    with _store(args, write=True) as store:
        sim = LabelSimulator(store, resolve_judge(args.judge), seed=args.seed)
        before = store.counts()
        if args.kind == "compare":
            sim.label_pairs(annotators, sim.sample_pairs(args.pairs, args.round))
        elif args.kind == "rank":
            sim.label_rankings(annotators, args.round)
        else:
            sim.label_scores(annotators, args.round)
        table = {"compare": "comparisons", "rank": "rankings", "score": "scores"}[args.kind]
        n = store.counts()[table] - before[table]
    print(f"wrote {n} simulated {args.kind} judgements" + ("" if n else " (the store already held them)"))
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from .agreement import agreement_report

    names = [n.strip() for n in args.annotators.split(",") if n.strip()] if args.annotators else None
    if names is not None and not names:
        raise ArgumentError(f"--annotators must list names separated by commas, got {args.annotators!r}")
    with _store(args) as store:
        print(json.dumps(agreement_report(store, args.kind, names), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tokengym.utils import check_file_replaceable

    from .store import is_export_file

    check_file_replaceable(args.out, is_export_file, "feedback exports", "--out")
    with _store(args) as store:
        n = store.export_jsonl(args.out)
    print(f"exported {n} records to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .store import read_export

    checks.existing_file(args.file, "file")
    read_export(Path(args.file))  # a file that cannot be read or parsed is refused before the store is touched
    _check_store_for_writing(args)
    with _new_or_existing_store(args) as store:
        added = store.import_jsonl(args.file)
    print("imported " + ", ".join(f"{v} {k}(s)" for k, v in added.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (the feedback commands only)."""
    parser = argparse.ArgumentParser(prog="python -m tokengym.feedback.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Human-feedback subcommands for the ``tokengym`` CLI.

The main CLI calls :func:`add_commands` on its subparsers; ``python -m tokengym.feedback.cli`` runs
them stand-alone. Every handler returns an exit code; a refused operation (a
:class:`~tokengym.feedback.errors.FeedbackError`) prints its message to stderr and returns 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, Callable

from .errors import FeedbackError

DEFAULT_STRATEGIES = "greedy,beam:4,sample,temperature:0.7,top_k:50,top_p:0.9"


def _refusals(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FeedbackError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    run.__name__ = handler.__name__
    return run


def _store(args: argparse.Namespace, create: bool = True):
    from .store import FeedbackStore

    score_range = tuple(args.score_range) if getattr(args, "score_range", None) else None
    return FeedbackStore(args.store, score_range=score_range, create=create)


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
def _candidates(args: argparse.Namespace) -> int:
    from tokengym.envs.prompts import load_prompts
    from tokengym.models import load_causal_lm

    from .candidates import CandidateGenerator, parse_strategies

    strategies = parse_strategies(args.strategies)  # validate before the slow model load
    prompts = load_prompts(args.prompts, split=args.split).texts()[: args.limit]
    tokenizer, model = load_causal_lm(args.model)
    gen = CandidateGenerator(tokenizer, model, args.max_new_tokens, args.batch_size, args.seed, args.chat_template)
    with _store(args) as store:
        ids = gen.to_store(store, prompts, args.per_prompt, strategies, round=args.round, model_name=args.model)
    print(f"wrote {len(ids)} candidates for {len(prompts)} prompts to {args.store}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from .annotators import TaskQueue

    name = args.annotator or getpass.getuser()
    with _store(args, create=False) as store:
        annotator_id = store.add_annotator(name, "human")
        if args.serve:
            from .server import LabelServer

            queue = TaskQueue(store, annotator_id, args.kinds.split(","), args.round, args.pairs_per_prompt)
            server = LabelServer(store, queue, name, args.port, verbose=args.verbose)
            print(f"labelling page for {name!r}: {server.url}  (Ctrl-C stops)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("stopped.")
            finally:
                server.httpd.server_close()
            return 0
        from .terminal import TerminalLabeller

        queue = TaskQueue(store, annotator_id, [args.kind], args.round, args.pairs_per_prompt)
        n = TerminalLabeller(queue, args.kind, limit=args.limit).run()
        print(f"{n} task(s) submitted by {name!r}")
    return 0


def _train_rm(args: argparse.Namespace) -> int:
    from tokengym.distributed import init_from_env
    from .rm_training import RMConfig, train_reward_model
    from .simulate import resolve_judge

    init_from_env()  # [issue 8] a process group under torchrun (WORLD_SIZE > 1); else nothing

    cfg = RMConfig(
        base_model=args.base_model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, margin=args.margin, ranking_loss=args.ranking_loss,
        kinds=tuple(args.kinds.split(",")), heldout_fraction=args.heldout,
        reference_round=None if args.reference_round < 0 else args.reference_round, dropout=args.dropout,
        seed=args.seed,
    )
    judge = resolve_judge(args.gold) if args.gold else None
    with _store(args, create=False) as store:
        result = train_reward_model(store, args.out, cfg, judge=judge)
    print(f"held-out pairwise accuracy: {result.heldout_accuracy:.4f}")
    if result.heldout_gold_accuracy is not None:
        print(f"held-out pairwise accuracy vs gold judge {args.gold}: {result.heldout_gold_accuracy:.4f}")
    print(f"reward model saved to {result.path}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import LabelSimulator, make_annotators, resolve_judge

    annotators = make_annotators(args.annotators, args.accuracy, args.disagreement, args.noise, args.seed)
    with _store(args, create=False) as store:
        sim = LabelSimulator(store, resolve_judge(args.judge), seed=args.seed)
        if args.kind == "compare":
            n = sim.label_pairs(annotators, sim.sample_pairs(args.pairs, args.round))
        elif args.kind == "rank":
            n = sim.label_rankings(annotators, args.round)
        else:
            n = sim.label_scores(annotators, args.round)
    print(f"wrote {n} simulated {args.kind} judgements")
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from .agreement import agreement_report

    names = args.annotators.split(",") if args.annotators else None
    with _store(args, create=False) as store:
        print(json.dumps(agreement_report(store, args.kind, names), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    with _store(args, create=False) as store:
        n = store.export_jsonl(args.out)
    print(f"exported {n} records to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    with _store(args) as store:
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

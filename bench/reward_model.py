"""Benchmark: a MiniLM reward model from 2,000 simulated pairwise labels (90 % annotator accuracy).

Pipeline, all through the ``tokengym`` feedback commands:

1. ``candidates``: SmolLM2-135M-Instruct (the default policy) writes 12 continuations for each of the
   first 34 training prompts of the default task (``movie_reviews``): 408 texts, 24 new tokens each,
   sampling strategies only (greedy/beam repeats would make identical texts);
2. ``simulate-labels``: one Bradley-Terry annotator with 90 % accuracy against the gold judge (VADER
   compound of the response) compares 2,000 random within-prompt pairs;
3. ``train-rm``: all-MiniLM-L6-v2, one epoch, batch 32, max_length 64, peak LR 3e-4 annealed linearly
   to 0, dropout off; 10 % of the prompts (3 of 34) are held out, so the held-out pairs compare texts
   the model never saw; accuracy is reported against the labels and against the gold judge (pairs
   the gold judge ties are left out of the latter).

Run: ``python bench/reward_model.py`` (about 15-25 minutes on 2 shared CPU cores: ~7 for generation).
The output is written to ``bench/results/reward_model.txt``; ``--work DIR`` keeps the store, and a
re-run with the same DIR retrains only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

from tokengym.feedback.cli import main

LR = "3e-4"  # the train-rm default: few steps (~57) on a small encoder want a high peak LR
RESULTS = Path(__file__).parent / "results" / "reward_model.txt"


class Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


def run(argv: list[str]) -> None:
    print(f"\n$ tokengym {' '.join(argv)}")
    t0 = time.perf_counter()
    code = main(argv)
    print(f"[exit {code}, {time.perf_counter() - t0:.0f} s]")
    if code != 0:
        raise SystemExit(code)


def bench(work: Path, lr: str) -> None:
    store = str(work / "feedback.sqlite")
    if Path(store).exists():  # re-running: keep the candidates and labels, retrain only
        print(f"\nreusing candidates and labels in {store}")
        run(["train-rm", "--store", store, "--out", str(work / "rm"), "--epochs", "1", "--batch-size", "32",
             "--max-length", "64", "--lr", lr, "--heldout", "0.1", "--gold", "vader", "--seed", "0"])
        return
    run(["candidates", "--store", store, "--prompts", "movie_reviews", "--split", "train", "--limit", "34",
         "--per-prompt", "12", "--strategies", "sample,temperature:0.7,top_k:40,top_p:0.9",
         "--max-new-tokens", "24", "--batch-size", "17", "--seed", "0"])
    run(["simulate-labels", "--store", store, "--kind", "compare", "--pairs", "2000", "--annotators", "1",
         "--accuracy", "0.9", "--noise", "bradley_terry", "--judge", "vader", "--seed", "0"])
    run(["train-rm", "--store", store, "--out", str(work / "rm"), "--epochs", "1", "--batch-size", "32",
         "--max-length", "64", "--lr", lr, "--heldout", "0.1", "--gold", "vader", "--seed", "0"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="keep the store here (a re-run reuses it); default: a temp dir")
    ap.add_argument("--lr", default=LR)
    args = ap.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w") as out, contextlib.redirect_stdout(Tee(sys.stdout, out)):
        print("# bench/reward_model.py: MiniLM reward model from 2,000 simulated pairwise labels")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            bench(Path(args.work or tmp), args.lr)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")

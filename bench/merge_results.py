"""Merge ``tokengym bench`` results of the same settings that ran side by side, one per core.

    python bench/merge_results.py --name algos_smollm2_klmatch algos_smollm2_klmatch_a algos_smollm2_klmatch_b

Two single-thread benchmarks on a 2-core machine finish sooner than one on two threads, but each
must write its own file (every run rewrites its JSON). This writes ``<name>.json/.md/.png`` in
``--out`` from the parts' runs; parts of other settings, or a seed measured twice, are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokengym.compare_report import merge_results, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", help="file stems of the parts in --out")
    ap.add_argument("--name", required=True, help="file stem of the merged outputs")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--kl-levels", default="1,2,4")
    args = ap.parse_args(argv)
    try:
        levels = [float(x) for x in args.kl_levels.split(",") if x.strip()]
    except ValueError:
        print(f"--kl-levels must be comma-separated numbers, got {args.kl_levels!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.name in args.parts:
        print(f"--name: {args.name} is one of the parts", file=sys.stderr)
        return 2
    target = out / f"{args.name}.json"
    if target.exists() or (out / f"{args.name}.md").exists():
        print(f"--name: {target} (or its .md) exists; choose another --name", file=sys.stderr)
        return 2
    parts = []
    for stem in args.parts:
        path = out / f"{stem}.json"
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"parts: cannot read {path}: {e}", file=sys.stderr)
            return 2
    try:
        merged = merge_results(parts)
    except ValueError as e:
        print(f"parts: {e}", file=sys.stderr)
        return 2
    merged["commands"].append("python bench/merge_results.py " + " ".join(sys.argv[1:] if argv is None else argv))
    render(merged, out, args.name, levels)
    print(f"merged {len(merged['runs'])} runs into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prompt sources: the built-in prompt sets and loaders for a user's JSONL / CSV / plain-text file.

A prompt item is a dict with at least ``"prompt"`` (str) and ``"id"``; optional ``"references"``
(list of str, for reference metrics), ``"difficulty"`` (float, for curricula) and ``"split"``.
"""

from __future__ import annotations

import csv
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

BUILTIN_PROMPT_SETS = {
    "movie_reviews": "movie_reviews.jsonl",
    # The task suite's sets, written by scripts/make_task_prompts.py.
    "arithmetic": "arithmetic.jsonl",
    "commongen": "commongen.jsonl",
    "length_control": "length_control.jsonl",
}


class PromptFileError(ValueError):
    """A prompt file is malformed; the message names the file and the line."""


class PromptSource:
    """An indexable, seeded-sampleable set of prompt items."""

    def __init__(self, items: Sequence[dict[str, Any]], name: str = "prompts") -> None:
        if len(items) == 0:
            raise ValueError(f"prompt source {name!r} is empty")
        self.items: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
                raise ValueError(f"prompt source {name!r}: item {i} has no non-empty 'prompt' string: {item!r:.80}")
            item = dict(item)
            item.setdefault("id", f"{name}-{i}")
            if "reference" in item and "references" not in item:
                ref = item.pop("reference")
                item["references"] = [ref] if isinstance(ref, str) else list(ref)
            self.items.append(item)
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def sample_index(self, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.items)))

    def texts(self) -> list[str]:
        return [it["prompt"] for it in self.items]


def _read_lines(path: Path) -> list[str]:
    try:
        # Split on "\n" only: str.splitlines() also breaks at U+2028/U+2029/NEL/form feed, which
        # JSON strings may hold unescaped. "utf-8-sig" drops the BOM that spreadsheet exports add.
        text = path.read_bytes().decode("utf-8-sig")
        return [line.removesuffix("\r") for line in text.split("\n")]
    except UnicodeDecodeError as e:
        # Find the line for the message: count newlines before the bad byte.
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read prompt file ({e.strerror})") from None


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    items = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PromptFileError(f"{path}:{n}: expected a JSON object with a 'prompt' field, got {type(obj).__name__}")
        if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise PromptFileError(f"{path}:{n}: missing or empty 'prompt' field")
        items.append(obj)
    return items


def _load_csv(path: Path) -> list[dict[str, Any]]:
    lines = _read_lines(path)
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or "prompt" not in reader.fieldnames:
        raise PromptFileError(f"{path}:1: CSV header must have a 'prompt' column, got {reader.fieldnames}")
    items = []
    for row in reader:
        n = reader.line_num
        if None in row:
            raise PromptFileError(f"{path}:{n}: more fields than the header has")
        if not (row.get("prompt") or "").strip():
            raise PromptFileError(f"{path}:{n}: empty 'prompt' field")
        items.append({k: v for k, v in row.items() if v is not None})
    return items


def _load_text(path: Path) -> list[dict[str, Any]]:
    return [{"prompt": line.strip()} for line in _read_lines(path) if line.strip()]


def load_prompt_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read prompt items from ``.jsonl``, ``.csv`` or plain text (one prompt a line)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found")
    loader = {".jsonl": _load_jsonl, ".json": _load_jsonl, ".csv": _load_csv}.get(path.suffix.lower(), _load_text)
    items = loader(path)
    if not items:
        raise PromptFileError(f"{path}: the prompt file holds no prompts")
    return items


def _builtin(name: str) -> list[dict[str, Any]]:
    data = resources.files("tokengym.envs").joinpath("data", BUILTIN_PROMPT_SETS[name])
    return [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_prompts(spec: str | os.PathLike | Iterable[str | dict] | PromptSource, split: str | None = None) -> PromptSource:
    """Resolve a prompt spec: a built-in set name, a file path, a list of strings/items, or a PromptSource.

    ``split`` ("train"/"test") keeps items whose ``"split"`` matches; items without a split are kept.
    """
    if isinstance(spec, PromptSource):
        source = spec
        items, name = source.items, source.name
    elif isinstance(spec, (str, os.PathLike)) and str(spec) in BUILTIN_PROMPT_SETS:
        items, name = _builtin(str(spec)), str(spec)
    elif isinstance(spec, (str, os.PathLike)):
        items, name = load_prompt_file(spec), Path(spec).stem
    else:
        items = [{"prompt": x} if isinstance(x, str) else x for x in spec]
        name = "prompts"
    if split is not None:
        kept = [it for it in items if it.get("split", split) == split]
        if not kept:
            raise ValueError(f"prompt set {name!r} has no items in split {split!r}")
        items = kept
    return PromptSource(items, name=name)

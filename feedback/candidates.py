"""Candidate generation (``tokengym candidates``): K responses per prompt, each from a chosen decoding strategy.

Strategies, written ``name`` or ``name:value`` (or ``name:key=value,...``) on the command line:

===============  ==========================================  =======================
``greedy``       argmax each step                            \\-
``beam:4``       beam search, the best beams                 ``num_beams`` (4)
``sample``       pure (ancestral) sampling                   \\-
``temperature``  sampling from softmax(logits / T)           ``temperature`` (0.7)
``top_k``        sampling among the k likeliest tokens       ``top_k`` (50)
``top_p``        nucleus sampling                            ``top_p`` (0.9)
===============  ==========================================  =======================

Candidate ``j`` of a prompt uses strategy ``j mod len(strategies)``; every candidate records its
strategy and parameters. Batches are left-padded (the prepared tokenizers pad left) and each
(strategy, batch) is seeded from the run's seed, so a run is reproducible.

Everything is generated before anything is written, and the prompts and candidates then go into the
store in one transaction: a run that fails (or is refused) adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from tokengym.models import default_stop_token_ids

from .errors import FeedbackError
from .store import FeedbackStore

_DEFAULTS: dict[str, dict[str, Any]] = {
    "greedy": {}, "beam": {"num_beams": 4}, "sample": {}, "temperature": {"temperature": 0.7},
    "top_k": {"top_k": 50}, "top_p": {"top_p": 0.9},
}
_MAIN_PARAM = {"beam": "num_beams", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p"}
STRATEGIES = tuple(_DEFAULTS)


@dataclass(frozen=True)
class DecodingStrategy:
    """A named decoding strategy and its parameters (validated on construction)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in _DEFAULTS:
            raise FeedbackError(f"unknown decoding strategy {self.name!r}; choose from {', '.join(STRATEGIES)}")
        extra = set(self.params) - set(_DEFAULTS[self.name])
        if extra:
            raise FeedbackError(f"strategy {self.name!r} takes {sorted(_DEFAULTS[self.name]) or 'no'} parameters, "
                                f"not {sorted(extra)}")
        p = {**_DEFAULTS[self.name], **self.params}
        object.__setattr__(self, "params", p)
        if "num_beams" in p and not (isinstance(p["num_beams"], int) and p["num_beams"] >= 1):
            raise FeedbackError(f"num_beams must be an integer >= 1, got {p['num_beams']!r}")
        if "temperature" in p and not p["temperature"] > 0:
            raise FeedbackError(f"temperature must be > 0, got {p['temperature']!r}")
        if "top_k" in p and not (isinstance(p["top_k"], int) and p["top_k"] >= 1):
            raise FeedbackError(f"top_k must be an integer >= 1, got {p['top_k']!r}")
        if "top_p" in p and not 0 < p["top_p"] <= 1:
            raise FeedbackError(f"top_p must lie in (0, 1], got {p['top_p']!r}")

    @classmethod
    def parse(cls, spec: str) -> "DecodingStrategy":
        """``"top_p"``, ``"top_p:0.8"`` or ``"top_p:top_p=0.8"`` -> a strategy."""
        name, _, rest = spec.strip().partition(":")
        params: dict[str, Any] = {}
        if name not in _DEFAULTS:
            raise FeedbackError(f"unknown decoding strategy {name!r}; choose from {', '.join(STRATEGIES)}")
        if rest:
            key, eq, value = rest.partition("=")
            if not eq:
                if name not in _MAIN_PARAM:
                    raise FeedbackError(f"strategy {name!r} takes no value, got {spec!r}")
                key, value = _MAIN_PARAM[name], key
            try:
                params[key.strip()] = int(value) if key.strip() in ("num_beams", "top_k") else float(value)
            except ValueError as exc:
                raise FeedbackError(f"bad value in strategy {spec!r}: {exc}") from exc
        return cls(name, params)

    @property
    def deterministic(self) -> bool:
        return self.name in ("greedy", "beam")

    def generate_kwargs(self, n: int) -> dict[str, Any]:
        """Keyword arguments of ``model.generate`` for ``n`` distinct returns per prompt.

        Every sampling knob is set explicitly: a model's generation_config may carry defaults (e.g.
        top_k=50) that would otherwise silently turn "pure sampling" into top-k.
        """
        if self.name == "greedy":
            return {"do_sample": False, "num_beams": 1}
        if self.name == "beam":
            return {"do_sample": False, "num_beams": self.params["num_beams"], "num_return_sequences": n}
        return {"do_sample": True, "num_return_sequences": n,
                "temperature": float(self.params.get("temperature", 1.0)),
                "top_k": int(self.params.get("top_k", 0)), "top_p": float(self.params.get("top_p", 1.0))}


def parse_strategies(specs: str | Sequence[str]) -> list[DecodingStrategy]:
    """Strategies separated by commas and/or spaces (each takes at most one parameter)."""
    text = specs if isinstance(specs, str) else " ".join(specs)
    items = text.replace(",", " ").split()
    if not items:
        raise FeedbackError("no decoding strategy given")
    return [DecodingStrategy.parse(s) for s in items]


def check_plan(strategies: Sequence[DecodingStrategy], per_prompt: int) -> None:
    """Refuse, before any model is loaded, a plan that generation would refuse later: K < 1, no
    strategy, or a beam strategy asked for more candidates than it has beams."""
    if not isinstance(per_prompt, int) or isinstance(per_prompt, bool) or per_prompt < 1:
        raise FeedbackError(f"candidates per prompt must be a positive integer, got {per_prompt!r}")
    if not strategies:
        raise FeedbackError("no decoding strategy given")
    for s, strategy in enumerate(strategies):
        n = len(range(s, per_prompt, len(strategies)))
        if strategy.name == "beam" and n > strategy.params["num_beams"]:
            raise FeedbackError(f"strategy beam:{strategy.params['num_beams']} would have to return {n} candidates "
                                f"per prompt, more than its beams; raise num_beams or add strategies")


class CandidateGenerator:
    """Generates responses with a causal LM and a tokenizer prepared by ``tokengym.models``."""

    def __init__(self, tokenizer: Any, model: Any, max_new_tokens: int = 32, batch_size: int = 16, seed: int = 0,
                 chat_template: bool = False) -> None:
        if tokenizer.padding_side != "left":
            raise FeedbackError("batched generation needs a left-padding tokenizer (use tokengym.models loaders)")
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FeedbackError(f"{name} must be a positive integer, got {value!r}")
        self.tokenizer, self.model = tokenizer, model
        self.max_new_tokens, self.batch_size, self.seed, self.chat_template = max_new_tokens, batch_size, seed, chat_template

    def _format(self, prompt: str) -> str:
        if self.chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], strategy: DecodingStrategy, n: int, stream: int = 0) -> list[list[str]]:
        """``n`` responses for each prompt; ``stream`` separates the seeds of different calls."""
        if strategy.name == "beam" and n > strategy.params["num_beams"]:
            raise FeedbackError(f"beam search returns at most num_beams={strategy.params['num_beams']} "
                                f"sequences, {n} requested")
        per_call = 1 if strategy.name == "greedy" else n  # greedy is deterministic: generate once, reuse
        out: list[list[str]] = []
        self.model.eval()
        for b in range(0, len(prompts), self.batch_size):
            batch = [self._format(p) for p in prompts[b:b + self.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not self.chat_template)
            torch.manual_seed(self.seed * 1_000_003 + stream * 10_007 + b)
            seqs = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                # Every end token stops (SmolLM2 has two), and pad is never generated, as in the env.
                eos_token_id=list(default_stop_token_ids(self.tokenizer)),
                suppress_tokens=[self.tokenizer.pad_token_id], **strategy.generate_kwargs(per_call),
            )
            texts = self.tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i in range(len(batch)):
                got = texts[i * per_call:(i + 1) * per_call]
                out.append(got * n if per_call == 1 else got)
        return out

    def generate_rows(self, prompts: Sequence[str], per_prompt: int, strategies: Sequence[DecodingStrategy],
                      round: int = 0, model_name: str | None = None) -> list[tuple[int, str, str, dict, str | None, int]]:
        """``(prompt index, text, strategy, params, model, round)`` for ``per_prompt`` candidates of every
        prompt, in prompt then candidate order; nothing is written."""
        check_plan(strategies, per_prompt)
        slots: dict[int, list[int]] = {}  # strategy index -> candidate positions using it
        for j in range(per_prompt):
            slots.setdefault(j % len(strategies), []).append(j)
        table: dict[tuple[int, int], tuple[str, DecodingStrategy]] = {}
        for s, positions in slots.items():
            responses = self.generate(prompts, strategies[s], len(positions), stream=s)
            for i, resp in enumerate(responses):
                for j, text in zip(positions, resp):
                    table[(i, j)] = (text, strategies[s])
        return [(i, text, st.name, dict(st.params, max_new_tokens=self.max_new_tokens, seed=self.seed), model_name, round)
                for (i, j), (text, st) in sorted(table.items())]

    @staticmethod
    def write_rows(store: FeedbackStore, prompts: Sequence[str],
                   rows: Sequence[tuple[int, str, str, dict, str | None, int]]) -> list[int]:
        """Insert the prompts and the rows of :meth:`generate_rows` in one transaction."""
        with store.transaction():
            prompt_ids = store.add_prompts(prompts)
            return store.add_candidates([(prompt_ids[i], *rest) for i, *rest in rows])

    def to_store(self, store: FeedbackStore, prompts: Sequence[str], per_prompt: int,
                 strategies: Sequence[DecodingStrategy], round: int = 0, model_name: str | None = None) -> list[int]:
        """Generate ``per_prompt`` candidates for every prompt, then insert everything in one transaction."""
        for t in prompts:
            if not isinstance(t, str) or not t.strip():
                raise FeedbackError(f"a prompt must be a non-empty string, got {t!r}")
        rows = self.generate_rows(prompts, per_prompt, strategies, round, model_name)
        return self.write_rows(store, prompts, rows)

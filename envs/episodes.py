"""Token storage shared by the single and the batched env: N episodes as fixed-size int64 arrays.

Layout of one row of length ``P + T`` (``P = max_prompt_tokens``, ``T = max_new_tokens``)::

    [ pad ... pad | prompt tokens ][ response tokens | pad ... pad ]
    0             left-padded    P  right-padded                  P+T

The boundary between prompt and response is always at column ``P``, so an agent can slice either
part without bookkeeping, and a KV-cached sampler needs only the newly appended column.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from tokengym.models import default_stop_token_ids
from tokengym.rewards import RewardFunction


def check_index(value: Any, n: int, name: str) -> int:
    """``value`` as an index in ``[0, n)``; anything that is not an integer is refused, not coerced.

    ``int(1.9)`` would silently pick prompt 1 and ``int("3")`` or ``int(True)`` hide a caller's bug,
    so only Python/NumPy integers (not bools) pass.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [0, {n}), got {value!r:.40} ({type(value).__name__})")
    if not 0 <= value < n:
        raise ValueError(f"{name} must be an integer in [0, {n}), got {int(value)}")
    return int(value)


def resolve_stop_ids(tokenizer: PreTrainedTokenizerBase, stop_token_ids: int | Iterable[int] | None) -> np.ndarray:
    """The sorted ids that end an episode: ``stop_token_ids`` (default: the tokenizer's end tokens), plus pad.

    Pad is always a stop: it is never content (tokengym's samplers never choose it), and an env that
    receives it from another client (``action_space.sample()`` can draw it) ends the episode instead of
    appending a token that neither stops nor shows in the scored text.
    """
    vocab = len(tokenizer)
    if stop_token_ids is None:
        ids = list(default_stop_token_ids(tokenizer))
    elif isinstance(stop_token_ids, (int, np.integer)):  # a generation config's single eos_token_id
        ids = [stop_token_ids]
    else:
        ids = list(stop_token_ids)
    if not ids:
        raise ValueError("stop_token_ids must hold at least one token id")
    for i in ids:
        check_index(i, vocab, "each of stop_token_ids")
    return np.unique(np.asarray([*ids, tokenizer.pad_token_id], dtype=np.int64))


def validate_actions(actions: Any, n: int, vocab_size: int) -> np.ndarray:
    """Check a batch of token actions: integer dtype, shape ``(n,)``, inside ``[0, vocab_size)``."""
    arr = np.asarray(actions)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"actions must be integer token ids, got dtype {arr.dtype} ({actions!r:.60})")
    if arr.shape != (n,):
        raise ValueError(f"expected {n} action(s) of shape ({n},), got shape {arr.shape}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"action {int(arr[i])} (episode {i}) is outside the vocabulary [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


class EpisodeBatch:
    """N text episodes: token arrays, lengths, done flags, and the terminal reward calls."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        reward: RewardFunction,
        gold_reward: RewardFunction | None,
        n: int,
        max_prompt_tokens: int,
        max_new_tokens: int,
        chat_template: bool | str = False,
        stop_token_ids: int | Iterable[int] | None = None,
    ) -> None:
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if max_prompt_tokens <= 0:
            raise ValueError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
        self.tokenizer = tokenizer
        self.reward, self.gold_reward = reward, gold_reward
        self.n, self.P, self.T = n, max_prompt_tokens, max_new_tokens
        self.chat_template = chat_template
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.stop_ids = resolve_stop_ids(tokenizer, stop_token_ids)
        self.ids = np.full((n, self.P + self.T), self.pad_id, dtype=np.int64)
        self.mask = np.zeros((n, self.P + self.T), dtype=np.int64)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.done = np.ones(n, dtype=bool)
        self.items: list[dict[str, Any] | None] = [None] * n
        self.final_texts: list[str | None] = [None] * n  # decoded once, when the episode is scored
        self._prompt_cache: dict[str, np.ndarray] = {}

    # -- prompts -----------------------------------------------------------------------------
    def model_input_text(self, prompt: str) -> str:
        """The text the policy is conditioned on (optionally wrapped in the chat template)."""
        if not self.chat_template:
            return prompt
        content = prompt if self.chat_template is True else str(self.chat_template).format(prompt=prompt)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def prompt_tokens(self, prompt: str) -> np.ndarray:
        """Token ids of a prompt; long prompts keep their *last* ``P`` tokens (the continuation point)."""
        ids = self._prompt_cache.get(prompt)
        if ids is None:
            text = self.model_input_text(prompt)
            ids = np.asarray(self.tokenizer(text, add_special_tokens=not self.chat_template)["input_ids"], dtype=np.int64)
            if len(ids) == 0:
                raise ValueError(f"prompt {prompt!r:.60} encodes to no tokens")
            ids = ids[-self.P :]
            self._prompt_cache[prompt] = ids
        return ids

    def start(self, row: int, item: dict[str, Any]) -> None:
        ids = self.prompt_tokens(item["prompt"])
        self.ids[row] = self.pad_id
        self.mask[row] = 0
        self.ids[row, self.P - len(ids) : self.P] = ids
        self.mask[row, self.P - len(ids) : self.P] = 1
        self.lengths[row] = 0
        self.done[row] = False
        self.items[row] = item
        self.final_texts[row] = None

    # -- stepping ----------------------------------------------------------------------------
    def append(self, actions: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append ``actions[rows]`` to the active ``rows``; returns (terminated, truncated) of shape (n,)."""
        col = self.P + self.lengths[rows]
        self.ids[rows, col] = actions[rows]
        self.mask[rows, col] = 1
        self.lengths[rows] += 1
        terminated = np.zeros(self.n, dtype=bool)
        truncated = np.zeros(self.n, dtype=bool)
        terminated[rows] = np.isin(actions[rows], self.stop_ids)
        # A stop token chosen at the last allowed step terminates; it does not also truncate.
        truncated[rows] = (self.lengths[rows] >= self.T) & ~terminated[rows]
        self.done |= terminated | truncated
        return terminated, truncated

    def response_ids(self, row: int) -> np.ndarray:
        return self.ids[row, self.P : self.P + self.lengths[row]]

    def response_text(self, row: int) -> str:
        if self.final_texts[row] is not None:
            return self.final_texts[row]
        ids = self.response_ids(row)
        if len(ids) and ids[-1] in self.stop_ids:
            ids = ids[:-1]  # the stop token is an action, not part of the scored text (checklist 8)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_text(self, row: int) -> str:
        item = self.items[row]
        return "" if item is None else item["prompt"]

    def score(self, rows: Sequence[int], terminated: np.ndarray) -> dict[str, Any]:
        """Call the reward (and gold judge) once for all finished ``rows``; returns per-row results."""
        rows = list(rows)
        items = [self.items[r] for r in rows]
        prompts = [it["prompt"] for it in items]
        responses = [self.response_text(r) for r in rows]
        for r, text in zip(rows, responses):
            self.final_texts[r] = text
        refs = [it.get("references") for it in items]
        meta = [
            {
                "stopped": bool(terminated[r]),
                "truncated": not bool(terminated[r]),
                "num_tokens": int(self.lengths[r]),
                "prompt_id": it["id"],
                "item": it,
            }
            for r, it in zip(rows, items)
        ]
        out: dict[str, Any] = {
            "rows": rows,
            "prompt_text": prompts,
            "response_text": responses,
            "prompt_id": [it["id"] for it in items],
            "stopped": [m["stopped"] for m in meta],
            "num_tokens": [m["num_tokens"] for m in meta],
            "score": self.reward(prompts, responses, references=refs, metadata=meta),
        }
        if self.gold_reward is not None:
            out["gold_score"] = self.gold_reward(prompts, responses, references=refs, metadata=meta)
        return out

"""``BatchedTextEnv``: N text episodes stepped together with arrays.

This is what makes env-based rollouts as fast as ``model.generate``: the agent samples N tokens with
one model forward and keeps the model's KV cache across steps (the agent owns the cache). The env
only appends one column per step; ``active`` (which rows still generate) and ``response_lengths``
expose the episode boundaries cheaply, so the sampler never re-feeds a prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from transformers import PreTrainedTokenizerBase

from .episodes import check_index, validate_actions
from .text_env import TextTask, observation_space


class BatchedTextEnv(TextTask, VectorEnv):
    """``num_envs`` episodes of :class:`~tokengym.envs.TextGenerationEnv` in lock-step.

    Shapes: observations ``input_ids``/``attention_mask`` are ``(N, P+T)`` int64 (same layout as the
    single env); ``step`` takes actions ``(N,)`` int64 and returns rewards ``(N,)`` float32 and
    terminated/truncated ``(N,)`` bool. Info keys at episode ends follow Gymnasium's vector
    convention (``info["score"]`` with mask ``info["_score"]``).

    ``autoreset_mode``:

    * ``NEXT_STEP`` (default, as in Gymnasium's vector envs): a finished row is restarted on the next
      ``step`` call, whose action for that row is ignored. Gymnasium's standard loop and wrappers
      (``RecordEpisodeStatistics``) rely on it.
    * ``DISABLED`` (what RLHF rollouts want): a finished row stays finished, its actions are ignored
      (pass the pad id), and ``reset()`` starts a fresh batch; ``reset(options={"reset_mask": m})``
      restarts only rows ``m``. A batch of episodes therefore shares one KV cache from start to end.
      tokengym's sampler switches to it for one rollout with :meth:`autoreset_disabled`, so agents
      work on an env made either way.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 8,
        model: str | os.PathLike | None = "smollm2",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: Any = None,
        gold_reward: Any = None,
        prompts: Any = "movie_reviews",
        split: str | None = "train",
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 64,
        chat_template: bool | str = False,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        stop_token_ids: int | Iterable[int] | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        mode = AutoresetMode(autoreset_mode)
        if mode == AutoresetMode.SAME_STEP:
            raise ValueError("BatchedTextEnv supports autoreset modes DISABLED and NEXT_STEP")
        self._set_autoreset_mode(mode)
        if render_mode is not None:
            raise ValueError("BatchedTextEnv has no render modes; use the info texts or TextGenerationEnv(render_mode='ansi')")
        self.num_envs = num_envs
        self.render_mode = render_mode
        self._init_task(
            num_envs, model, tokenizer, reward, gold_reward, prompts, split, max_new_tokens, max_prompt_tokens, chat_template,
            stop_token_ids,
        )
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.single_observation_space = observation_space(self.vocab_size, max_prompt_tokens + max_new_tokens)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._restart_next = np.zeros(num_envs, dtype=bool)
        self._started = False

    def _set_autoreset_mode(self, mode: AutoresetMode) -> None:
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}

    @contextmanager
    def autoreset_disabled(self) -> Iterator[BatchedTextEnv]:
        """Run with autoreset ``DISABLED`` inside the block, then restore the previous mode.

        A KV-cached sampler needs it: an autoreset would start a new episode in a row behind the
        cache. Rows that ended inside the block restart on the next ``step`` if the env returns
        to ``NEXT_STEP``, as if they had ended in that mode.
        """
        previous = self.autoreset_mode
        self._set_autoreset_mode(AutoresetMode.DISABLED)
        self._restart_next[:] = False  # a finished row stays finished while disabled
        try:
            yield self
        finally:
            self._set_autoreset_mode(previous)
            if previous == AutoresetMode.NEXT_STEP and self._started:
                self._restart_next = self._ep.done.copy()

    # -- views the sampler uses --------------------------------------------------------------
    @property
    def active(self) -> np.ndarray:
        """``(N,)`` bool: rows still generating."""
        return ~self._ep.done

    @property
    def all_done(self) -> bool:
        return bool(self._ep.done.all())

    @property
    def response_lengths(self) -> np.ndarray:
        return self._ep.lengths.copy()

    @property
    def pad_token_id(self) -> int:
        return self._ep.pad_id

    @property
    def eos_token_id(self) -> int:
        return self._ep.eos_id

    def prompt_token_ids(self, prompt: str) -> np.ndarray:
        """The token ids this env feeds the model for ``prompt``: chat template applied when the env
        uses one, and only the last ``max_prompt_tokens`` kept (the continuation point)."""
        return self._ep.prompt_tokens(prompt).copy()

    def prompt_items(self) -> list[dict[str, Any]]:
        return list(self._ep.items)  # type: ignore[arg-type]

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ep.ids.copy(), "attention_mask": self._ep.mask.copy()}

    # -- Gymnasium API -----------------------------------------------------------------------
    def _reset_rows(self, options: dict[str, Any]) -> np.ndarray:
        """The rows ``options["reset_mask"]`` selects (all without it), checked as Gymnasium's own vector envs do."""
        if "reset_mask" not in options:
            return np.arange(self.num_envs)
        mask = np.asarray(options["reset_mask"])
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got dtype {mask.dtype} shape {mask.shape}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] selects no row; at least one must be True")
        return np.flatnonzero(mask)

    def _prompt_indices(self, options: dict[str, Any], n_rows: int) -> np.ndarray:
        if "prompt_indices" not in options:
            return self.np_random.integers(len(self.prompts), size=n_rows)
        raw = options["prompt_indices"]
        indices = np.asarray(raw)
        if indices.shape != (n_rows,):
            raise ValueError(f"options['prompt_indices'] must hold {n_rows} indices (one per reset row), got shape {indices.shape}")
        if indices.dtype == np.bool_ or not np.issubdtype(indices.dtype, np.integer):
            # np.asarray([1.9]).astype(int) would truncate to prompt 1; refuse instead.
            raise ValueError(f"options['prompt_indices'] must be integers, got dtype {indices.dtype} ({raw!r:.60})")
        for i in indices:
            check_index(i, len(self.prompts), "each of options['prompt_indices']")
        return indices.astype(np.int64)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, list):
            seed = seed[0]  # one generator drives all rows: the batch is one draw of N prompts
        if seed is not None:
            self._np_random, self._np_random_seed = np.random.default_rng(seed), seed
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
        rows = self._reset_rows(options)
        indices = self._prompt_indices(options, len(rows))
        for row, index in zip(rows, indices):
            self._ep.start(int(row), self.prompts[int(index)])
        self._restart_next[rows] = False
        self._started = True
        info = {"prompt_id": np.array([it["id"] if it else None for it in self._ep.items], dtype=object)}
        return self._obs(), info

    def step(self, actions: Any):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = validate_actions(actions, self.num_envs, self.vocab_size)
        restart = np.flatnonzero(self._restart_next)
        if len(restart):
            indices = self.np_random.integers(len(self.prompts), size=len(restart))
            for row, index in zip(restart, indices):
                self._ep.start(int(row), self.prompts[int(index)])
            self._restart_next[:] = False
        rows = np.flatnonzero(~self._ep.done)
        if len(restart):
            rows = np.setdiff1d(rows, restart)  # the action of a row restarted this step is ignored
        if len(rows) == 0 and self.autoreset_mode == AutoresetMode.DISABLED:
            raise RuntimeError("every episode of the batch has ended; call reset() before stepping again")
        terminated, truncated = self._ep.append(actions, rows)
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        finished = np.flatnonzero(terminated | truncated)
        info: dict[str, Any] = {}
        if len(finished):
            res = self._ep.score(finished, terminated)
            rewards[finished] = res["score"]
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[finished] = True
            keys = ["prompt_text", "response_text", "prompt_id", "stopped", "num_tokens", "score"]
            keys += ["gold_score"] if "gold_score" in res else []
            for key in keys:
                values = np.asarray(res[key])
                arr = np.zeros(self.num_envs, dtype=values.dtype if values.dtype.kind in "fbi" else object)
                arr[finished] = values
                info[key], info[f"_{key}"] = arr, mask
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:
                self._restart_next[finished] = True
        return self._obs(), rewards, terminated, truncated, info

    def response_texts(self) -> list[str]:
        return [self._ep.response_text(r) for r in range(self.num_envs)]

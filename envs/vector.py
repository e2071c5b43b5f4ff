"""``BatchedTextEnv``: N text episodes stepped together with arrays.

This is what makes env-based rollouts as fast as ``model.generate``: the agent samples N tokens with
one model forward and keeps the model's KV cache across steps (the agent owns the cache). The env
only appends one column per step; ``active`` (which rows still generate) and ``response_lengths``
expose the episode boundaries cheaply, so the sampler never re-feeds a prefix.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from transformers import PreTrainedTokenizerBase

from .episodes import validate_actions
from .text_env import TextTask, observation_space


class BatchedTextEnv(TextTask, VectorEnv):
    """``num_envs`` episodes of :class:`~tokengym.envs.TextGenerationEnv` in lock-step.

    Shapes: observations ``input_ids``/``attention_mask`` are ``(N, P+T)`` int64 (same layout as the
    single env); ``step`` takes actions ``(N,)`` int64 and returns rewards ``(N,)`` float32 and
    terminated/truncated ``(N,)`` bool. Info keys at episode ends follow Gymnasium's vector
    convention (``info["score"]`` with mask ``info["_score"]``).

    ``autoreset_mode``:

    * ``DISABLED`` (default, what RLHF rollouts want): a finished row stays finished, its actions are
      ignored (pass the pad id), and ``reset()`` starts a fresh batch; ``reset(options={"reset_mask": m})``
      restarts only rows ``m``. A batch of episodes therefore shares one KV cache from start to end.
    * ``NEXT_STEP`` (Gymnasium's default): a finished row is restarted on the next ``step`` call, whose
      action for that row is ignored.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

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
        autoreset_mode: AutoresetMode | str = AutoresetMode.DISABLED,
        render_mode: str | None = None,
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            raise ValueError("BatchedTextEnv supports autoreset modes DISABLED and NEXT_STEP")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        if render_mode is not None:
            raise ValueError("BatchedTextEnv has no render modes; use the info texts or TextGenerationEnv(render_mode='ansi')")
        self.num_envs = num_envs
        self.render_mode = render_mode
        self._init_task(
            num_envs, model, tokenizer, reward, gold_reward, prompts, split, max_new_tokens, max_prompt_tokens, chat_template
        )
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.single_observation_space = observation_space(self.vocab_size, max_prompt_tokens + max_new_tokens)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._restart_next = np.zeros(num_envs, dtype=bool)
        self._started = False

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

    def prompt_items(self) -> list[dict[str, Any]]:
        return list(self._ep.items)  # type: ignore[arg-type]

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ep.ids.copy(), "attention_mask": self._ep.mask.copy()}

    # -- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, list):
            seed = seed[0]  # one generator drives all rows: the batch is one draw of N prompts
        if seed is not None:
            self._np_random, self._np_random_seed = np.random.default_rng(seed), seed
        options = options or {}
        rows = np.arange(self.num_envs)
        if "reset_mask" in options:
            rows = np.flatnonzero(np.asarray(options["reset_mask"], dtype=bool))
        if "prompt_indices" in options:
            indices = np.asarray(options["prompt_indices"], dtype=np.int64)
            if indices.shape != rows.shape or (indices < 0).any() or (indices >= len(self.prompts)).any():
                raise ValueError(f"prompt_indices must be {len(rows)} ints in [0, {len(self.prompts)})")
        else:
            indices = self.np_random.integers(len(self.prompts), size=len(rows))
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

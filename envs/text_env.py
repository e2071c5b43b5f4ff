"""``TextGenerationEnv``: one text episode, one token per step."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Iterable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from tokengym.models import load_tokenizer, prepare_tokenizer
from tokengym.rewards import RewardFunction, resolve_reward

from .episodes import EpisodeBatch, check_index, validate_actions
from .prompts import PromptSource, load_prompts


def resolve_tokenizer(model: Any, tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    """The env needs only the tokenizer of the policy: given directly, or read from the model spec."""
    if tokenizer is None:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be 'smollm2' or a local path (the env needs its tokenizer), got {type(model).__name__}")
        return load_tokenizer(model)
    prepare_tokenizer(tokenizer)
    return tokenizer


def observation_space(vocab_size: int, length: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int64),
        }
    )


class TextTask:
    """What the single and the batched env share: tokenizer, rewards, prompts and episode storage."""

    def _init_task(
        self, n: int, model: Any, tokenizer: PreTrainedTokenizerBase | None, reward: Any, gold_reward: Any,
        prompts: Any, split: str | None, max_new_tokens: int, max_prompt_tokens: int, chat_template: bool | str,
        stop_token_ids: int | Iterable[int] | None = None,
    ) -> None:
        self.model_spec = model
        self.tokenizer = resolve_tokenizer(model, tokenizer)
        self.reward: RewardFunction = resolve_reward(reward)
        self.gold_reward: RewardFunction | None = None if gold_reward is None else resolve_reward(gold_reward)
        self.prompts: PromptSource = load_prompts(prompts, split=split)
        self.vocab_size = len(self.tokenizer)
        self._ep = EpisodeBatch(
            self.tokenizer, self.reward, self.gold_reward, n, max_prompt_tokens, max_new_tokens, chat_template,
            stop_token_ids,
        )
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Sorted ids that end an episode (``terminated=True``): the stop set plus the pad id."""
        return tuple(int(i) for i in self._ep.stop_ids)


class TextGenerationEnv(TextTask, gym.Env):
    """Text generation as an MDP whose actions are tokens.

    * **Action space** ``Discrete(len(tokenizer))``: one action appends one token to the response.
    * **Observation space** ``Dict(input_ids=Box(int64, (P+T,)), attention_mask=Box(int64, (P+T,)))``:
      the prompt left-padded in columns ``[0, P)`` and the response right-padded in ``[P, P+T)``
      (``P = max_prompt_tokens``, ``T = max_new_tokens``); the mask is 1 on real tokens.
    * **Episode end**: ``terminated=True`` when a stop token is chosen (it stays in the response
      as an action), ``truncated=True`` after ``max_new_tokens`` tokens without one. The stop set
      is ``stop_token_ids`` (default: EOS and the tokenizer's other end markers, e.g. SmolLM2's
      ``<|im_end|>`` and ``<|endoftext|>``) plus the pad id: pad stays inside the action space (a
      Discrete space has no holes, and ``action_space.sample()`` may draw it), tokengym's samplers
      never choose it, and a client that sends it ends the episode.
    * **Reward**: 0 on every step but the last, which pays ``reward(prompt, response)``; the
      response is decoded without the stop token. ``gold_reward``, if given, is an evaluation-only judge
      reported in ``info["gold_score"]`` (to watch reward over-optimisation), never paid.
    * **info** at the end: ``prompt_text``, ``response_text``, ``prompt_id``, ``score``,
      ``gold_score``, ``reward_name``, ``gold_name``, ``stopped``, ``num_tokens``.

    ``reset(seed=..., options={"prompt_index": i})`` or ``options={"prompt": "text"}`` pins a prompt.

    ``render_mode``: ``"ansi"`` returns ``"prompt ▸ response"``; ``"rgb_array"`` (what SB3's
    ``make_vec_env`` asks for) draws that text into a fixed-size ``(H, W, 3)`` uint8 image.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        model: str | os.PathLike | None = "smollm2",
        tokenizer: PreTrainedTokenizerBase | None = None,
        reward: Any = None,
        gold_reward: Any = None,
        prompts: Any = "movie_reviews",
        split: str | None = "train",
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 64,
        chat_template: bool | str = False,
        render_mode: str | None = None,
        stop_token_ids: int | Iterable[int] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self._init_task(
            1, model, tokenizer, reward, gold_reward, prompts, split, max_new_tokens, max_prompt_tokens, chat_template,
            stop_token_ids,
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = observation_space(self.vocab_size, max_prompt_tokens + max_new_tokens)
        self._started = False

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ep.ids[0].copy(), "attention_mask": self._ep.mask[0].copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
        if "prompt" in options and "prompt_index" in options:
            raise ValueError("options['prompt'] and options['prompt_index'] both pin a prompt; give one")
        if "prompt" in options:
            # A pinned prompt text is added to the source once, so it is scored like any other item.
            text = options["prompt"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"options['prompt'] must be a non-empty string, got {text!r:.60}")
            item = {"prompt": text, "id": "pinned"}
        elif "prompt_index" in options:
            item = self.prompts[check_index(options["prompt_index"], len(self.prompts), "options['prompt_index']")]
        else:
            item = self.prompts[self.prompts.sample_index(self.np_random)]
        self._ep.start(0, item)
        self._started = True
        return self._obs(), {"prompt_text": item["prompt"], "prompt_id": item["id"]}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        if self._ep.done[0]:
            raise RuntimeError("the episode has ended (terminated or truncated); call reset() before stepping again")
        if isinstance(action, (bool, np.bool_)):
            raise ValueError(f"action must be an integer token id, got bool {action!r}")
        actions = validate_actions(np.reshape(np.asarray(action), (1,)) if np.ndim(action) == 0 else action, 1, self.vocab_size)
        terminated, truncated = self._ep.append(actions, np.array([0]))
        info: dict[str, Any] = {}
        reward = 0.0
        if self._ep.done[0]:
            res = self._ep.score([0], terminated)
            reward = float(res["score"][0])
            info = {k: res[k][0] for k in ("prompt_text", "response_text", "prompt_id", "stopped", "num_tokens")}
            info["score"] = reward
            info["reward_name"] = self.reward.name
            if self.gold_reward is not None:
                info["gold_score"] = float(res["gold_score"][0])
                info["gold_name"] = self.gold_reward.name
        return self._obs(), reward, bool(terminated[0]), bool(truncated[0]), info

    # Convenience views for wrappers (e.g. potential-based shaping) and humans.
    @property
    def prompt_text(self) -> str:
        return self._ep.prompt_text(0)

    @property
    def response_text(self) -> str:
        return self._ep.response_text(0)

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            return None
        text = f"{self.prompt_text} ▸ {self.response_text}" if self._started else ""
        if self.render_mode == "ansi":
            return text
        from .render import text_image

        return text_image(text)

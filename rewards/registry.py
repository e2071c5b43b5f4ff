"""Reward registry: names -> factories, third-party entry points, and :func:`resolve_reward`.

Third-party packages register rewards without importing tokengym at install time, through the
entry-point group ``tokengym.rewards`` (the entry point's name is the reward name, its object a
factory or :class:`RewardFunction` subclass). Entry points are read once, on the first
:func:`make` / :func:`list_rewards` / :func:`resolve_reward`, and each is imported only when made.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import Any, Callable

from .base import CallableReward, CheckedReward, RewardFunction

ENTRY_POINT_GROUP = "tokengym.rewards"
DEFAULT_REWARD = "vader"

Factory = Callable[..., RewardFunction]

_REGISTRY: dict[str, Factory] = {}
_entry_points_loaded = False


def register(name: str, factory: Factory, *, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> RewardFunction`` (a class works) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for reward {name!r} is not callable: {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a reward named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


class _EntryPointFactory:
    """Imports the entry point's object only when the reward is first made."""

    def __init__(self, ep: importlib.metadata.EntryPoint) -> None:
        self.ep = ep

    def __call__(self, **kwargs: Any) -> RewardFunction:
        try:
            obj = self.ep.load()
        except Exception as e:
            raise ImportError(
                f"reward {self.ep.name!r}: cannot import its entry point {self.ep.value!r} "
                f"(group {ENTRY_POINT_GROUP!r}): {type(e).__name__}: {e}"
            ) from e
        return obj(**kwargs)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            # A plug-in must not silently replace a built-in or an explicit register() call.
            warnings.warn(
                f"entry point {ep.value!r} wants the reward name {ep.name!r}, which is already registered; ignored",
                stacklevel=3,
            )
            continue
        _REGISTRY[ep.name] = _EntryPointFactory(ep)


def list_rewards() -> list[str]:
    """Sorted names of every registered reward (built-ins, register() calls, entry points)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def make(name: str, **kwargs: Any) -> RewardFunction:
    """Build the reward registered as ``name`` with ``kwargs`` (unwrapped; see :func:`resolve_reward`)."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(_REGISTRY))}")
    reward = _REGISTRY[name](**kwargs)
    if not isinstance(reward, RewardFunction):
        raise TypeError(f"the factory of reward {name!r} returned {type(reward).__name__}, not a RewardFunction")
    return reward


def resolve_reward(spec: Any = None, **kwargs: Any) -> CheckedReward:
    """Turn any reward spec into a validated :class:`CheckedReward`.

    ``spec`` may be:

    * ``None`` -> the default reward (``"vader"``);
    * a registered name, e.g. ``"bleu"``; kwargs go to its factory;
    * a local folder holding a Hugging Face sequence-classification model -> ``make("learned", path=spec)``;
    * ``(name, {kwargs})``, or the mapping ``{"name": name, **kwargs}`` (how config files write it);
    * a :class:`RewardFunction` instance (or :class:`CheckedReward`: returned unchanged);
    * a registered factory or a :class:`RewardFunction` subclass -> called with kwargs;
    * a plain function ``f(prompt, response) -> float`` (called per sample), or a batched one marked
      with :func:`~tokengym.rewards.batched`.
    """
    if isinstance(spec, CheckedReward) and not kwargs:
        return spec
    if spec is None:
        spec = DEFAULT_REWARD
    if isinstance(spec, dict):
        if not isinstance(spec.get("name"), str):
            raise TypeError(f"a mapping reward spec needs a 'name' key holding a reward name, got {spec!r}")
        rest = {k: v for k, v in spec.items() if k != "name"}
        return resolve_reward(spec["name"], **{**rest, **kwargs})
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise TypeError(f"a tuple reward spec must be (name, {{kwargs}}), got {spec!r}")
        return resolve_reward(spec[0], **{**spec[1], **kwargs})
    if isinstance(spec, (str, Path)):
        _load_entry_points()
        name = str(spec)
        if name not in _REGISTRY and (Path(name) / "config.json").is_file():
            return CheckedReward(make("learned", path=name, **kwargs))
        return CheckedReward(make(name, **kwargs))
    if isinstance(spec, RewardFunction):
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} only apply to a reward name or factory, not {spec!r}")
        return CheckedReward(spec)
    if isinstance(spec, type) and issubclass(spec, RewardFunction):
        return CheckedReward(spec(**kwargs))
    if callable(spec):
        if spec in _REGISTRY.values():
            reward = spec(**kwargs)
            if not isinstance(reward, RewardFunction):
                raise TypeError(f"the reward factory {spec!r} returned {type(reward).__name__}, not a RewardFunction")
            return CheckedReward(reward)
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} do not apply to the plain reward function {spec!r}")
        return CheckedReward(CallableReward(spec))
    raise TypeError(
        f"cannot make a reward from {spec!r}; use a name ({', '.join(list_rewards())}), a (name, kwargs) tuple, "
        "a RewardFunction or a function f(prompt, response) -> float"
    )

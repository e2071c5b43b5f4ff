"""The reward interface, its error type, and the validating wrapper every resolved reward goes through.

A reward scores a batch of finished episodes at once::

    reward(prompts, responses, references=None, metadata=None) -> np.ndarray  # float32, shape (batch,)

``references[i]`` is ``None``, one reference string or a list of them; ``metadata[i]`` is the dict the
environment fills per episode (at least ``stopped``, ``num_tokens``, ``truncated``, ``prompt_id``).
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Callable, Sequence

import numpy as np

Reference = str | list[str] | None

_REPR_CHARS = 60


def short_repr(text: object, limit: int = _REPR_CHARS) -> str:
    """``repr`` cut to ``limit`` characters, so error messages stay one readable line."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class RewardError(ValueError):
    """A reward failed or returned an invalid score; names the reward and, when known, the sample."""

    def __init__(
        self,
        reward: str,
        message: str,
        *,
        index: int | None = None,
        prompt: str | None = None,
        response: str | None = None,
    ) -> None:
        self.reward = reward
        self.index = index
        where = ""
        if index is not None:
            where = f" on sample {index} (prompt={short_repr(prompt)}, response={short_repr(response)})"
        super().__init__(f"reward {reward!r}{where}: {message}")


class RewardFunction(abc.ABC):
    """Scores a batch of (prompt, response) pairs; one float per pair.

    Subclasses implement ``__call__`` and set ``name``. ``a * 0.5 + b`` builds a
    :class:`~tokengym.rewards.combinators.WeightedSum`.
    """

    name: str = "reward"

    @abc.abstractmethod
    def __call__(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        references: Sequence[Reference] | None = None,
        metadata: Sequence[dict] | None = None,
    ) -> np.ndarray:
        """Return the scores, shape ``(len(prompts),)``."""

    # Operator sugar: terms are (reward, weight) pairs of a WeightedSum.
    def _terms(self) -> list[tuple[RewardFunction, float]]:
        return [(self, 1.0)]

    def __mul__(self, weight: float) -> RewardFunction:
        from .combinators import WeightedSum

        return WeightedSum([(r, w * float(weight)) for r, w in self._terms()])

    __rmul__ = __mul__

    def __add__(self, other: RewardFunction) -> RewardFunction:
        from .combinators import WeightedSum

        if not isinstance(other, RewardFunction):
            return NotImplemented
        return WeightedSum(self._terms() + other._terms())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def sample_error(name: str, message: str, i: int, prompts: Sequence[str], responses: Sequence[str]) -> RewardError:
    """A :class:`RewardError` naming sample ``i`` of a batch."""
    return RewardError(name, message, index=i, prompt=prompts[i], response=responses[i])


def require_metadata(
    name: str, key: str, metadata: Sequence[dict] | None, prompts: Sequence[str], responses: Sequence[str]
) -> list[Any]:
    """``[metadata[i][key] for i]``, raising a :class:`RewardError` naming the first sample without it."""
    if metadata is None:
        raise RewardError(name, f"needs metadata[{key!r}] but no metadata was given")
    out = []
    for i, m in enumerate(metadata):
        if m is None or key not in m:
            raise sample_error(name, f"needs metadata[{key!r}], which this sample lacks", i, prompts, responses)
        out.append(m[key])
    return out


def _accepts(fn: Callable, param: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass only the positional texts
        return False
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def batched(fn: Callable) -> Callable:
    """Mark ``fn(prompts, responses, **kw) -> scores`` as batched, so :func:`resolve_reward` calls it once per batch.

    Keyword arguments ``references`` / ``metadata`` are passed only when ``fn`` declares them.
    """
    fn.__tokengym_batched__ = True  # type: ignore[attr-defined]
    return fn


class CallableReward(RewardFunction):
    """Adapts a plain function into a :class:`RewardFunction`.

    * per-sample (default): ``fn(prompt, response) -> float``, called once per sample; if ``fn`` declares
      ``reference`` and/or ``metadata`` parameters it also gets that sample's reference / metadata dict;
    * batched (``fn`` decorated with :func:`batched`): ``fn(prompts, responses) -> sequence of floats``,
      likewise given ``references=`` / ``metadata=`` when declared.
    """

    def __init__(self, fn: Callable, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.is_batched = bool(getattr(fn, "__tokengym_batched__", False))
        self._pass_ref = _accepts(fn, "references" if self.is_batched else "reference")
        self._pass_meta = _accepts(fn, "metadata")

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        n = len(prompts)
        if self.is_batched:
            kw: dict[str, Any] = {}
            if self._pass_ref:
                kw["references"] = references
            if self._pass_meta:
                kw["metadata"] = metadata
            return self.fn(prompts, responses, **kw)
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            kw = {}
            if self._pass_ref:
                kw["reference"] = None if references is None else references[i]
            if self._pass_meta:
                kw["metadata"] = None if metadata is None else metadata[i]
            try:
                out[i] = float(self.fn(prompts[i], responses[i], **kw))
            except RewardError:
                raise
            except Exception as e:  # per-sample call: we know exactly which sample failed
                raise sample_error(self.name, f"{type(e).__name__}: {e}", i, prompts, responses) from e
        return out


def _to_numpy(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor; avoid importing torch here
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


class CheckedReward(RewardFunction):
    """Validating wrapper: checks inputs, output shape ``(batch,)`` and finiteness; returns float32.

    Exceptions from the wrapped reward become :class:`RewardError` naming the reward (and the sample
    when known). Attribute access falls through to the wrapped reward (e.g. ``raw_scores``).
    """

    def __init__(self, inner: RewardFunction, name: str | None = None) -> None:
        if isinstance(inner, CheckedReward):
            inner = inner.inner
        self.inner = inner
        self.name = name or getattr(inner, "name", type(inner).__name__)

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def _terms(self) -> list[tuple[RewardFunction, float]]:
        return self.inner._terms()

    def _check_inputs(self, prompts, responses, references, metadata) -> None:
        n = len(prompts)
        if len(responses) != n:
            raise RewardError(self.name, f"got {n} prompts but {len(responses)} responses")
        for what, seq in (("references", references), ("metadata", metadata)):
            if seq is not None and len(seq) != n:
                raise RewardError(self.name, f"got {n} prompts but {len(seq)} {what}")
        for i in range(n):
            if not isinstance(prompts[i], str) or not isinstance(responses[i], str):
                raise sample_error(self.name, "prompt and response must be str", i, prompts, responses)

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        self._check_inputs(prompts, responses, references, metadata)
        try:
            raw = self.inner(prompts, responses, references=references, metadata=metadata)
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(
                self.name,
                f"failed on a batch of {len(prompts)} samples (first: prompt={short_repr(prompts[0] if prompts else None)}, "
                f"response={short_repr(responses[0] if responses else None)}): {type(e).__name__}: {e}",
            ) from e
        try:
            scores = _to_numpy(raw)
        except (TypeError, ValueError) as e:
            raise RewardError(self.name, f"returned {short_repr(raw)}, not an array of numbers") from e
        if scores.shape != (len(prompts),):
            raise RewardError(self.name, f"returned shape {scores.shape}; expected ({len(prompts)},)")
        with np.errstate(over="ignore"):  # overflow is reported below as a non-finite score
            scores32 = scores.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(scores32))  # checked after the cast: 1e39 overflows float32
        if bad.size:
            i = int(bad[0])
            raise sample_error(self.name, f"returned a non-finite score {float(scores[i])!r}", i, prompts, responses)
        return scores32

    def state_dict(self) -> dict:
        """The wrapped reward's state (e.g. running statistics), ``{}`` when stateless."""
        fn = getattr(self.inner, "state_dict", None)
        return fn() if fn is not None else {}

    def load_state_dict(self, state: dict) -> None:
        fn = getattr(self.inner, "load_state_dict", None)
        if fn is not None:
            fn(state)
        elif state:
            raise RewardError(self.name, "is stateless but a non-empty state was given")

    def __repr__(self) -> str:
        return f"<CheckedReward {self.inner!r}>"

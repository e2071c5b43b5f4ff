"""Rewards and gold judges of the task suite: ``arithmetic`` and ``length_control`` here, ``commongen``
in :mod:`tokengym.rewards.commongen`.

Each reads its target from the episode's prompt item, which the environment passes as
``metadata[i]["item"]`` (``answer``, ``concepts``, ``unit``/``target``: written by
``scripts/make_task_prompts.py``). A caller without metadata, or a pinned prompt that is not from the
built-in set, still works when the target can be read off the prompt text in the sets' own wording
("What is 7 + 5?", "the words: dog, frisbee, park.", "in exactly 12 words"); otherwise the reward
raises a :class:`RewardError` naming the sample.

Every class has a paid variant and a judge variant (``exact=True`` / ``strict=True``), registered
under two names, so ``info["reward_name"]`` and ``info["gold_name"]`` tell them apart.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from .base import RewardFunction, sample_error


def _item_value(metadata: Sequence[dict] | None, i: int, key: str) -> Any:
    """``key`` of sample ``i``'s prompt item (``metadata[i]["item"]``), or of ``metadata[i]`` itself."""
    if metadata is None or metadata[i] is None:
        return None
    m = metadata[i]
    item = m.get("item")
    if isinstance(item, dict) and item.get(key) is not None:
        return item[key]
    return m.get(key)


def _targets(
    name: str, key: str, prompts: Sequence[str], responses: Sequence[str], metadata: Sequence[dict] | None,
    parse: Callable[[str], Any], check: Callable[[Any], Any], fallback: Callable[[int], Any] | None = None,
) -> list[Any]:
    """Per sample: the item's ``key``, else ``fallback(i)``, else ``parse(prompt)``; ``check`` validates it."""
    out = []
    for i, prompt in enumerate(prompts):
        value = _item_value(metadata, i, key)
        if value is None and fallback is not None:
            value = fallback(i)
        if value is None:
            value = parse(prompt)
        if value is None:
            raise sample_error(
                name, f"needs the prompt item's {key!r} (metadata['item'][{key!r}]) and cannot read it off the prompt",
                i, prompts, responses,
            )
        try:
            out.append(check(value))
        except (TypeError, ValueError) as e:
            raise sample_error(name, f"bad {key!r} {value!r:.40}: {e}", i, prompts, responses) from None
    return out


# --------------------------------------------------------------------------------- arithmetic
# A number as written in an answer: optional sign, thousands commas, decimals. The sign counts only
# when it is not a hyphen between words or numbers ("7-5" starts with 7, "the answer is -3" is -3).
_NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\d+(?:\.\d+)?")
_BARE_NUMBER = re.compile(r"\s*[-−]?\d[\d,]*(?:\.\d+)?\s*\.?\s*")


def answers_first(text: str) -> bool:
    """Whether the first non-empty line of ``text`` is a bare number (a final full stop allowed)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return bool(_BARE_NUMBER.fullmatch(line))
_QUESTION = re.compile(r"(\d+)\s*(\+|-|−|\*|×|plus|minus|times)\s*(\d+)")
_OPS = {"+": lambda a, b: a + b, "plus": lambda a, b: a + b, "-": lambda a, b: a - b, "−": lambda a, b: a - b,
        "minus": lambda a, b: a - b, "*": lambda a, b: a * b, "×": lambda a, b: a * b, "times": lambda a, b: a * b}


def first_number(text: str) -> float | None:
    """The first number written in ``text`` (``"The answer is 1,200."`` -> 1200.0), or ``None``."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    return float(m.group(0).replace(",", "").replace("−", "-"))


def parse_arithmetic_question(prompt: str) -> int | None:
    """The answer of the open question that ends a prompt ("What is 7 + 5? Answer with a number.",
    or "2 + 3 = 5\n17 + 5 =" after solved examples): its last ``a op b`` with no digit after it."""
    matches = list(_QUESTION.finditer(prompt))
    if not matches or re.search(r"\d", prompt[matches[-1].end() :]):
        return None
    m = matches[-1]
    return _OPS[m.group(2)](int(m.group(1)), int(m.group(3)))


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a bool is not an answer")
    if isinstance(value, str):
        value = value.strip().replace(",", "")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError("the answer must be finite")
    return out


class ArithmeticReward(RewardFunction):
    """1 when the first number in the response equals the item's ``answer``, else 0.

    ``format_bonus`` is added when the response's first line is nothing but a number (a final full
    stop allowed), right or wrong: it pays for answering first, in the format the solved examples
    show, instead of restating the question ("7 + 5 = 12" starts with 7). It is small enough that
    a wrong bare number (0.1) never beats a right one (1.1). ``exact=True`` (the gold judge
    ``arithmetic_exact``) is plain correctness, 0 or 1. Numbers written as words ("twelve") do
    not count.

    The answer comes from the prompt item (``answer``), else its single reference, else the prompt text.
    """

    name = "arithmetic"

    def __init__(self, format_bonus: float = 0.1, exact: bool = False) -> None:
        if not 0 <= format_bonus < 1:
            raise ValueError(f"reward 'arithmetic': format_bonus must be in [0, 1), got {format_bonus}")
        self.format_bonus = 0.0 if exact else float(format_bonus)
        self.exact = exact

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        def from_reference(i: int) -> Any:
            ref = None if references is None else references[i]
            if isinstance(ref, (list, tuple)):
                ref = ref[0] if len(ref) == 1 else None
            return ref

        answers = _targets(self.name, "answer", prompts, responses, metadata, parse_arithmetic_question, _number,
                           from_reference)
        out = np.zeros(len(responses), dtype=np.float64)
        for i, (response, answer) in enumerate(zip(responses, answers)):
            got = first_number(response)
            out[i] = float(got is not None and abs(got - answer) < 1e-9)
            if self.format_bonus and answers_first(response):
                out[i] += self.format_bonus
        return out


class ArithmeticExactReward(ArithmeticReward):
    """The gold judge of ``tokengym/Arithmetic-v0``: 1 if the first number is the answer, else 0."""

    name = "arithmetic_exact"

    def __init__(self) -> None:
        super().__init__(format_bonus=0.0, exact=True)


# --------------------------------------------------------------------------------- length control
_BULLET = re.compile(r"^\s*(?:[-*•‣◦]|\d{1,2}[.)])\s+\S")
_MARKER = re.compile(r"^\s*(?:[-*•‣◦]|\d{1,2}[.)])\s+")
_WORDS_ASK = re.compile(r"\b(\d+)\s+words?\b", re.IGNORECASE)


def count_words(text: str) -> int:
    """Whitespace-separated tokens with a letter or digit ("well-known" is one word, a lone "-"
    none); a list marker that starts a line ("-", "1.") is not a word of the answer."""
    n = 0
    for line in text.splitlines():
        line = _MARKER.sub("", line, count=1)
        n += sum(1 for t in line.split() if any(ch.isalnum() for ch in t))
    return n


def bullet_lines(text: str) -> tuple[int, int]:
    """(bullet lines, other non-empty lines): lines starting with -, *, • or "1." / "1)"."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    bullets = sum(1 for ln in lines if _BULLET.match(ln))
    return bullets, len(lines) - bullets


def parse_length_request(prompt: str) -> tuple[str, int] | None:
    """``("words", 12)`` for "... in exactly 12 words", ``("bullets", 3)`` for a prompt that asks for
    bullet points and names one number, else ``None``."""
    m = _WORDS_ASK.search(prompt)
    if m is not None:
        return "words", int(m.group(1))
    numbers = re.findall(r"\b\d+\b", prompt)
    if "bullet" in prompt.lower() and len(numbers) == 1:
        return "bullets", int(numbers[0])
    return None


def _unit(value: Any) -> str:
    if value not in ("words", "bullets"):
        raise ValueError("unit must be 'words' or 'bullets'")
    return value


def _target(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) <= 0:
        raise ValueError("target must be a positive integer")
    return int(value)


class LengthControlReward(RewardFunction):
    """Length and format control: ``clip(1 - |n - N| / N, 0, 1)``.

    ``n`` is the response's number of words (``unit="words"``, see :func:`count_words`) or of
    bullet lines (``unit="bullets"``), counted on the text the env scores: the response up to the
    stop token, or up to the token budget when it was truncated. ``N`` is the item's ``target``.

    ``exact=True`` (the gold judge ``length_control_exact``) is 1 only when the request is met
    exactly: ``n == N`` words; or ``N`` bullet lines and no other text (a "Here are three points:"
    preamble fails it, though the paid reward ignores it).
    """

    name = "length_control"

    def __init__(self, exact: bool = False) -> None:
        self.exact = exact

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        def part(k: int) -> Callable[[str], Any]:
            return lambda prompt: (parse_length_request(prompt) or (None, None))[k]

        units = _targets(self.name, "unit", prompts, responses, metadata, part(0), _unit)
        targets = _targets(self.name, "target", prompts, responses, metadata, part(1), _target)
        out = np.zeros(len(responses), dtype=np.float64)
        for i, (response, unit, target) in enumerate(zip(responses, units, targets)):
            if unit == "words":
                n, extra = count_words(response), 0
            else:
                n, extra = bullet_lines(response)
            if self.exact:
                out[i] = float(n == target and extra == 0)
            else:
                out[i] = max(0.0, 1.0 - abs(n - target) / target)
        return out


class LengthControlExactReward(LengthControlReward):
    """The gold judge of ``tokengym/LengthControl-v0``: 1 when the length or format is met exactly."""

    name = "length_control_exact"

    def __init__(self) -> None:
        super().__init__(exact=True)

"""Up-front checks of command-line flags and config values, shared by every command.

Each check raises :class:`ArgumentError` with one line that names the flag (or config key) and the
bad value, and runs before any model is loaded or anything is written, so a refused command costs
nothing and leaves no partial output. The checks read files but never change them.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

# Weight files that ``from_pretrained`` reads without unpickling.
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


class ArgumentError(ValueError):
    """A command-line flag or config value is invalid; the message names it."""


# ------------------------------------------------------------------------------------ numbers
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(value: Any, flag: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an integer within ``[minimum, maximum]`` (bounds optional)."""
    if not _is_int(value):
        raise ArgumentError(f"{flag} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        what = "positive" if minimum == 1 else "at least 0" if minimum == 0 else f"at least {minimum}"
        raise ArgumentError(f"{flag} must be {what}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{flag} must be at most {maximum}, got {value}")
    return value


def positive_int(value: Any, flag: str) -> int:
    return integer(value, flag, minimum=1)


def optional_positive_int(value: Any, flag: str) -> int | None:
    return None if value is None else positive_int(value, flag)


def number(value: Any, flag: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite number within the given bounds (``*_open``: the bound itself is excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{flag} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is None:
            where = f"> {low:g}" if low_open else f">= {low:g}"
        elif high is not None and low is None:
            where = f"< {high:g}" if high_open else f"<= {high:g}"
        else:
            where = f"in {lo}, {hi}"
        raise ArgumentError(f"{flag} must be {where}, got {value:g}")
    return float(value)


def port(value: Any, flag: str = "--port") -> int:
    """A TCP port: 0 (the system picks a free one) to 65535."""
    return integer(value, flag, minimum=0, maximum=65535)


# ------------------------------------------------------------------------------ files, models
def _pickle_only(folder: Path) -> str | None:
    """The name of a pickle weight file when ``folder`` has no safetensors weights, else None."""
    if any((folder / f).is_file() for f in _SAFE_WEIGHTS) or any(folder.glob("*.safetensors")):
        return None
    for name in _PICKLE_WEIGHTS:
        if (folder / name).is_file():
            return name
    found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    return found[0] if found else None


def model_folder(path: Path, flag: str) -> Path:
    """A local Hugging Face model folder: ``config.json`` and safetensors weights."""
    if not path.exists():
        raise ArgumentError(f"{flag} {path}: no such file or folder")
    if not path.is_dir():
        raise ArgumentError(f"{flag} {path}: not a model folder (a Hugging Face folder with config.json)")
    if not (path / "config.json").is_file():
        raise ArgumentError(f"{flag} {path}: not a Hugging Face model folder (no config.json)")
    pickle = _pickle_only(path)
    if pickle is not None:
        raise ArgumentError(
            f"{flag} {path}: holds only pickle weights ({pickle}), which can run code when loaded; tokengym reads "
            "safetensors only: re-save the model with save_pretrained(folder, safe_serialization=True)"
        )
    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        raise ArgumentError(f"{flag} {path}: no model weights (model.safetensors) in the folder")
    return path


def model_spec(spec: Any, flag: str = "--model", default: str = "smollm2") -> Any:
    """``'smollm2'``, a ``.gguf`` file or a local Hugging Face folder (checked on disk, not loaded)."""
    if spec is None or str(spec) == default:
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ArgumentError(f"{flag} must be '{default}', a .gguf file or a model folder, got {spec!r}")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ArgumentError(f"{flag} {spec}: a model file must be a .gguf file; otherwise give a model folder")
        return spec
    if not path.exists():
        raise ArgumentError(f"{flag} {spec}: no such file or folder (use '{default}', a .gguf file or a model folder)")
    model_folder(path, flag)
    return spec


def existing_file(path: Any, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArgumentError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ArgumentError(f"{flag} {path}: not a file")
    return p


def prompts_spec(spec: Any, flag: str = "--prompts") -> Any:
    """A built-in prompt set name or an existing prompt file (its contents are checked when read)."""
    from tokengym.envs.prompts import BUILTIN_PROMPT_SETS

    if spec is None or not isinstance(spec, (str, os.PathLike)) or str(spec) in BUILTIN_PROMPT_SETS:
        return spec
    p = Path(spec)
    if not p.is_file():
        raise ArgumentError(f"{flag} {spec}: neither a built-in prompt set ({', '.join(BUILTIN_PROMPT_SETS)}) "
                            "nor an existing prompt file")
    return spec


# ------------------------------------------------------------------------------ registries
def env_id(value: Any, flag: str = "--env") -> str:
    """A Gymnasium id registered by tokengym (or by anyone else)."""
    import gymnasium as gym

    import tokengym  # noqa: F401  (registers the ids)

    if not isinstance(value, str) or value not in gym.registry:
        ours = sorted(k for k in gym.registry if k.startswith("tokengym/"))
        raise ArgumentError(f"{flag}: unknown environment {value!r}; registered tokengym environments: {', '.join(ours)}")
    return value


def reward_folder(path: Path, flag: str) -> Path:
    """A learned reward model folder: model files plus a readable ``tokengym_reward.json``."""
    from tokengym.rewards.learned import NORMALISATION_FILE

    model_folder(path, flag)
    file = path / NORMALISATION_FILE
    if not file.exists():
        return path  # optional: mean 0, std 1
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArgumentError(f"{flag}: {file} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{flag}: {file} must hold a JSON object with 'mean' and 'std'")
    for key in ("mean", "std"):
        value = data.get(key, 0.0 if key == "mean" else 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgumentError(f"{flag}: {file}: {key!r} must be a finite number, got {value!r}")
    if not data.get("std", 1.0) > 0:
        raise ArgumentError(f"{flag}: {file}: 'std' must be positive, got {data['std']!r}")
    return path


def _factory(name: str) -> Any:
    from tokengym.rewards import registry

    registry.list_rewards()  # reads the entry points once
    return registry._REGISTRY.get(name)  # the registry offers no public lookup of a factory


def reward_spec(spec: Any, flag: str = "--reward") -> Any:
    """A reward name from the registry (with its keyword arguments), a ``{"name": ..., **kwargs}``
    mapping, or a learned reward model folder; checked without building the reward."""
    from tokengym.rewards import list_rewards

    if spec is None or callable(spec) and not isinstance(spec, (str, os.PathLike)):
        return spec  # the default, or a reward object given in code
    kwargs: dict[str, Any] = {}
    name = spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if name is None:
            raise ArgumentError(f"{flag}: a reward given as a mapping needs a 'name' key, got {spec!r}")
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
        name, kwargs = spec
    if not isinstance(name, (str, os.PathLike)):
        raise ArgumentError(f"{flag}: a reward is a name or a model folder, got {spec!r}")
    name = str(name)
    factory = _factory(name)
    if factory is None:
        if Path(name).exists():
            reward_folder(Path(name), flag)
            return spec
        raise ArgumentError(f"{flag}: unknown reward {name!r}; known rewards: {', '.join(list_rewards())} "
                            "(or give a reward model folder)")
    if name == "learned":
        path = kwargs.get("path")
        if path is None:
            raise ArgumentError(f"{flag}: the 'learned' reward needs a reward model folder: give the folder's path "
                                "itself (e.g. runs/rm) instead of the name 'learned'")
        reward_folder(Path(path), flag)
        return spec
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return spec
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ArgumentError(f"{flag}: reward {name!r}: {e}") from None
    return spec

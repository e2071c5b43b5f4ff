"""Dataclass configs read from YAML/TOML files with strict checking (unknown keys and wrong types
are errors that name the key; YAML is read with ``safe_load`` so a config file cannot run code)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {name!r}: {value!r} is not a {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {name!r}: {value!r} is not one of {args}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string; accept what float() accepts
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {name!r}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        # A nested section (e.g. TrainConfig.ppo): a mapping is checked key by key against its class.
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a dict, got {type(value).__name__}")
        try:
            return from_dict(annotation, value)
        except ConfigError as e:
            raise ConfigError(f"config section {name!r}: {e}") from None
    if origin in (dict, list) or annotation in (dict, list):
        expected = origin or annotation
        if not isinstance(value, expected):
            raise ConfigError(f"config key {name!r}: expected a {expected.__name__}, got {type(value).__name__}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}")
    return cls(**{k: _check_type(k, v, hints[k]) for k, v in data.items()})


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return data

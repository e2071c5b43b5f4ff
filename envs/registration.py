"""Gymnasium registration of the tokengym environment ids."""

from __future__ import annotations


def register_envs() -> None:
    pass

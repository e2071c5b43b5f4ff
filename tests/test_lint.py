"""The code passes the project's linter configuration (``[tool.ruff]`` in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path


def test_ruff_check_passes():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(root)], capture_output=True,
                            text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr


# Modules whose type hints mypy checks (each import of another module is taken as Any, so the check is
# of each module's own annotations). A module joins the list once it passes; the others still carry
# hints that mypy disagrees with somewhere (e.g. tensors that may be None before a step fills them).
TYPED_MODULES = [
    "agents/__init__.py", "agents/advantages.py", "agents/checkpoint.py", "agents/config.py", "agents/kl.py",
    "agents/precision.py",
    "envs/__init__.py", "envs/prompts.py", "envs/registration.py", "envs/render.py",
    "rewards/learned.py", "rewards/postprocess.py", "rewards/reference.py", "rewards/registry.py", "rewards/rules.py",
    "rewards/sentiment.py", "rewards/shaping.py",
    "tokengym/benchstats.py", "tokengym/checks.py", "tokengym/cli.py", "tokengym/compare_report.py",
    "tokengym/config.py", "tokengym/hardware.py", "tokengym/models.py", "tokengym/overopt.py", "tokengym/testing.py",
    "tokengym/train.py", "tokengym/utils.py",
]


def test_mypy_checks_the_typed_modules():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=skip", "--no-incremental",
         *TYPED_MODULES], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr

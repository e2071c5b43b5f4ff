"""The code passes the project's linter configuration (``[tool.ruff]`` in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path


def test_ruff_check_passes():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(root)], capture_output=True,
                            text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr

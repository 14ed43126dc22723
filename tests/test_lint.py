"""The code stays clean: ``ruff check`` (rules in pyproject.toml, [tool.ruff]) and ``mypy`` (files in
[tool.mypy]) report nothing. Both come with the test extra; where one is not installed its test is skipped, saying
how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(module: str) -> list[str]:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]' installs it)")
    return [sys.executable, "-m", module]


def test_ruff_is_clean():
    proc = subprocess.run([*_tool("ruff"), "check", "mlrobust", "tests", "benchmarks", "examples"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_clean():
    # mypy's cache (.mypy_cache, git-ignored) makes the second run take seconds instead of most of a minute
    proc = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_tools_are_in_the_test_extra():
    text = (ROOT / "pyproject.toml").read_text()
    test_extra = text.split("\ntest = [", 1)[1].split("\n]", 1)[0]
    assert '"ruff>=' in test_extra and '"mypy>=' in test_extra

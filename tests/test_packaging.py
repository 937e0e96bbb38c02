"""The installed console scripts start (make venv installs the project with pip)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = [
    "lookalike-ingest",
    "lookalike-finetune",
    "lookalike-evaluate",
    "lookalike-export",
    "lookalike-recommend",
    "lookalike-serve",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_runs(script: str):
    path = Path(sys.executable).with_name(script)
    assert path.exists(), f"{path} missing: install the project with `pip install .` (make venv does)"
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.startswith(f"usage: {script}")  # the name it was run by, not gunicorn's or python -m's

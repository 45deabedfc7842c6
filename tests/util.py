"""Helpers shared by the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_ggc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the ggc command as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "ggc", *args], capture_output=True, text=True, cwd=cwd)

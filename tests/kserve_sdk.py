"""Where the KServe SDK lives: its protobufs clash with tritonclient's, so it runs in its own interpreter.

``KSERVE_PYTHON`` names that interpreter; by default the repository's ``.venv-kserve/bin/python``.
Tests that need it skip, saying so, when it is missing.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def kserve_python() -> Path:
    """The interpreter with ``kserve`` installed, or a skip that says how to provide one."""
    python = Path(os.environ.get("KSERVE_PYTHON") or ROOT / ".venv-kserve" / "bin" / "python")
    if not python.exists():
        pytest.skip(f"KServe SDK interpreter {python} not found: set KSERVE_PYTHON to a python with kserve installed")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('kserve') is None)"],
                           capture_output=True, text=True, timeout=60)            # finds it without importing it
    if probe.returncode != 0:
        pytest.skip(f"{python} has no kserve package: {probe.stderr.strip()[-300:]}")
    return python

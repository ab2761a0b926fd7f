"""Helpers for tests that need a real tool: they run in CI, and skip locally only when the tool is missing."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(*names: str) -> str:
    """Path of the first of `names` on PATH; in CI a missing tool fails the test instead of skipping it."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail(f"{' or '.join(names)} is required in CI but is not installed")
    pytest.skip(f"{' or '.join(names)} is not installed (allowed outside CI only)")

"""Shared fixtures. Each helper module registers its fixtures here through pytest_plugins."""

from __future__ import annotations

pytest_plugins: list[str] = ["tests.pg", "tests.alertmanager"]

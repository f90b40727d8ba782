"""Shared fixtures: every test gets private podbay state and cache roots unless it asks for the real cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from podbay.paths import PodbayPaths


@pytest.fixture
def paths(tmp_path: Path) -> PodbayPaths:
    return PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")

"""Shared fixtures: where the public face data lives, and skips that say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.skipguard import (  # noqa: F401  (hooks: a skip for anything but an absent optional part fails)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent


def faces_root() -> Path:
    """Labelled public faces are read in place (never copied into the repo)."""
    env = os.environ.get("LFR_EDGE_FACES")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    root = faces_root()
    if not (root / "lfw" / "labels.csv").exists():
        pytest.skip(f"public face data not found at {root} (set LFR_EDGE_FACES to its folder)")
    return root

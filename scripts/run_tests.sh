#!/usr/bin/env bash
# The project's test command (README, CI): lint, then the whole pytest suite.
# Fails on any failure, and also when pytest collected no test at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest ran no tests: failing" >&2
  exit 1
fi
exit $rc

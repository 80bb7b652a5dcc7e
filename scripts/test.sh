#!/usr/bin/env bash
# Install streamscan with its test extras (torch pinned to the local CPU wheel first), check the import layers
# (import-linter) and style (ruff), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
lint-imports
ruff check .
ruff format --check .
python3 -m pytest -q "$@"

#!/usr/bin/env bash
# Create .venv in the repository root and install SNOWS Lab into it.
#   bash scripts/setup.sh          # what the tool needs
#   bash scripts/setup.sh --dev    # plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"

#!/usr/bin/env bash
# Create .venv in the repository root and install SNOWS Lab into it, plus Debian's Fashion-MNIST.
#   bash scripts/setup.sh          # what the tool needs
#   bash scripts/setup.sh --dev    # plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ -z "$sudo" ] || command -v sudo >/dev/null; then
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist
  else
    echo "note: apt-get install dataset-fashion-mnist (as root) for the Fashion-MNIST zoo" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"

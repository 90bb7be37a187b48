#!/usr/bin/env bash
# Create .venv in the repository root and install SNOWS Lab into it, plus Debian's Fashion-MNIST.
#   bash scripts/setup.sh          # what the tool needs
#   bash scripts/setup.sh --dev    # plus the test and lint tools, and Debian's Chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
packages=()
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
if [ "${1:-}" = "--dev" ]; then
  requirements=requirements-dev.txt
  [ -x /usr/bin/chromium ] || packages+=(chromium)
fi

if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ -z "$sudo" ] || command -v sudo >/dev/null; then
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}"
  else
    echo "note: apt-get install ${packages[*]} (as root) for the Fashion-MNIST zoo and the browser test" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
# snows_core itself, editable: a Dask scheduler or worker started from this .venv imports it from any folder
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

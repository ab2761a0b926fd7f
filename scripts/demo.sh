#!/usr/bin/env bash
# The daemon against the built-in Rutter simulator, with Slack messages shown in the console.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/rutter-monitor ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e .
fi
exec .venv/bin/rutter-monitor demo "$@"

#!/usr/bin/env bash
# Set up what the tests need (Docker, a busybox image, a virtualenv) and run the whole suite.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-docker.sh --image

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
exec "$VENV/bin/python" -m pytest "$@"

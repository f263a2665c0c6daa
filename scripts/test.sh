#!/usr/bin/env bash
# Set up what the tests need (Docker, a busybox image, a virtualenv) and run the whole suite.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

bash scripts/setup-docker.sh --image
bash scripts/setup-runtimes.sh

# Components the tests drive for real, from Debian's packages, by the command they provide.
declare -A provides=(
  [cron]=cron
  [logger]=bsdutils
  [timeout]=coreutils
  [setpriv]=util-linux
  [unshare]=util-linux
  [systemd-analyze]=systemd
  [promtool]=prometheus
  [prometheus-node-exporter]=prometheus-node-exporter
)
missing=()
for cmd in "${!provides[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${provides[$cmd]}")
done
# Debian's own interpreter runs the tool as an unprivileged user (test_least_privilege).
[ -x /usr/bin/python3 ] || missing+=(python3)
if ((${#missing[@]})); then
  echo "test: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
# The type check (strict, setup.cfg) and the linter (pyproject.toml) are part of the suite: a
# finding fails it, as a failing test does.
"$VENV/bin/python" -m mypy container_netstat
"$VENV/bin/python" -m ruff check container_netstat tests benchmarks
exec "$VENV/bin/python" -m pytest "$@"

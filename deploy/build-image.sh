#!/usr/bin/env bash
# Build the DaemonSet image from this checkout (working tree included).
# Usage: deploy/build-image.sh [TAG]        (default container-netstat:<version>)
# BASE: the Python base image. Default python:3.11-slim-bookworm, with the dependencies
# from PyPI; where that image is not present and cannot be pulled, the local
# container-netstat/python-base:bookworm (deploy/build-base.sh) with Debian's packages
# of the dependencies and no package index. The build runs on the host network (pip may
# need an index; a host's docker0 bridge may be missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/container_netstat/__init__.py")
TAG=${1:-container-netstat:$version}
LOCAL_BASE=container-netstat/python-base:bookworm
pip_opts=""

if [ -z "${BASE:-}" ]; then
  BASE=python:3.11-slim-bookworm
  if ! docker image inspect "$BASE" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$BASE" >/dev/null 2>&1; then
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 ||
      { echo "build-image: cannot pull $BASE; build a local base with deploy/build-base.sh" >&2; exit 1; }
    BASE=$LOCAL_BASE
  fi
fi
[ "$BASE" = "$LOCAL_BASE" ] && pip_opts=--no-index

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/src"
cp "$here/Dockerfile" "$here/container-netstat-loop" "$ctx/"
cp "$repo/setup.py" "$repo/setup.cfg" "$repo/README.rst" "$ctx/src/"
tar -C "$repo" --exclude=__pycache__ -c container_netstat | tar -C "$ctx/src" -x
# the classic builder: nothing here needs BuildKit; its deprecation notice is shown only on failure
if ! log=$(DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE=$BASE" \
  --build-arg "PIP_OPTS=$pip_opts" -t "$TAG" "$ctx" 2>&1); then
  echo "$log" >&2
  exit 1
fi
echo "$TAG"

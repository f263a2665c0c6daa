#!/usr/bin/env bash
# Build a local base image (Debian bookworm's python3 with the tool's dependencies) for a
# machine that cannot pull python:3.11-slim from a registry: debootstrap from a Debian
# mirror (DEBIAN_MIRROR, else the first Debian archive this host's apt sources name),
# then `docker import`. Needs root, docker and debootstrap (installed if missing).
# Usage: deploy/build-base.sh [IMAGE]    (default container-netstat/python-base:bookworm)
# The dependencies are setup.cfg's install_requires as Debian packages (python3-<name>);
# the image is rebuilt only when that list changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
IMAGE=${1:-container-netstat/python-base:bookworm}
# The host's own apt settings say where Debian comes from: deb822 .sources files, then the
# one-line format of sources.list.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
  done | head -n 1
  if [ -r /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list
  fi
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror | head -n 1 || true)}
if [ -z "$MIRROR" ]; then
  echo "build-base: no Debian archive in this host's apt sources; set DEBIAN_MIRROR" >&2
  exit 2
fi

packages=$(python3 - "$here/../setup.cfg" <<'PY'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
names = [re.split(r"[<>=!~;\[ ]", line.strip())[0] for line in cfg["options"]["install_requires"].splitlines()]
print(",".join(["python3", "python3-pip"] + sorted("python3-" + n.lower() for n in names if n)))
PY
)
if [ "$(docker image inspect -f '{{index .Config.Labels "packages"}}' "$IMAGE" 2>/dev/null)" = "$packages" ]; then
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "build-base: debootstrap bookworm with $packages from $MIRROR (a few minutes)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . |
  docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c "LABEL packages=$packages" -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "build-base: $IMAGE ready" >&2

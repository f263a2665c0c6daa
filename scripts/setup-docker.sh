#!/usr/bin/env bash
# Make a real Docker daemon answer on this machine.
# Does nothing where `docker info` already answers. Otherwise installs Debian's
# docker.io if missing and starts dockerd in the background.
# With --image (the tests use it) it also builds the image `container-netstat/busybox`
# from Debian's busybox-static with `docker import` (no registry is needed).
# Safe to run again.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

with_image=false
[ "${1:-}" = --image ] && with_image=true

IMAGE=${CONTAINER_NETSTAT_TEST_IMAGE:-container-netstat/busybox:latest}
LOG=${DOCKERD_LOG:-/var/log/container-netstat-dockerd.log}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
if $with_image; then
  [ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v ss >/dev/null || need+=(iproute2)
fi
if ((${#need[@]})); then
  echo "setup-docker: installing ${need[*]}" >&2
  apt_install "${need[@]}"
fi

if ! timeout 10 docker info >/dev/null 2>&1; then
  echo "setup-docker: starting dockerd (log: $LOG)" >&2
  mkdir -p "$(dirname "$LOG")"
  nohup dockerd >"$LOG" 2>&1 &
  for _ in $(seq 1 60); do
    timeout 5 docker info >/dev/null 2>&1 && break
    sleep 1
  done
  timeout 10 docker info >/dev/null 2>&1 || { echo "setup-docker: dockerd did not come up; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
fi

if $with_image && ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "setup-docker: building $IMAGE from the local busybox" >&2
  bash "$(dirname "$0")/busybox-rootfs.sh" | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
fi
echo "setup-docker: dockerd answers$($with_image && echo "; image $IMAGE ready")" >&2

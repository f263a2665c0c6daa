#!/usr/bin/env bash
# Make a real Docker daemon answer on this machine, with a local busybox image.
# Installs Debian's docker.io and busybox-static if missing, starts dockerd in the
# background if nothing answers, and builds the image `container-netstat/busybox`
# with `docker import` (no registry is needed). Safe to run again.
set -euo pipefail

IMAGE=${CONTAINER_NETSTAT_TEST_IMAGE:-container-netstat/busybox:latest}
LOG=${DOCKERD_LOG:-/var/log/container-netstat-dockerd.log}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  echo "setup-docker: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
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

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "setup-docker: building $IMAGE from the local busybox" >&2
  bb=$(command -v busybox)
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
fi
echo "setup-docker: dockerd answers; image $IMAGE ready" >&2

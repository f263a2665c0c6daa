#!/usr/bin/env bash
# Print a tar stream of a minimal busybox root filesystem (Debian's busybox-static, one
# symlink per applet), for `docker import` / `podman import`: no registry is needed.
set -euo pipefail
bb=$(command -v busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
tar -C "$root" -c .

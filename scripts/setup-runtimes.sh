#!/usr/bin/env bash
# Make the other runtimes the tests use answer on this machine; safe to run again.
#   - Podman (Debian podman, runc, conmon, containernetworking-plugins) with a test
#     containers.conf and the image localhost/container-netstat/busybox (podman import);
#     tests/integration/test_podman.py starts Podman's API service itself.
#   - a private containerd (Debian containerd; ctr comes with it) on its own socket, root and
#     state directories, so it never meets dockerd's containerd, with the busybox image
#     imported into the namespace cntest (tests/integration/test_containerd.py).
#   - the DaemonSet's base image container-netstat/python-base:bookworm (deploy/build-base.sh,
#     debootstrap from a Debian mirror), for tests/integration/test_daemonset_contract.py.
# Needs root and a working Docker with the busybox image: run scripts/setup-docker.sh --image first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

IMAGE=${CONTAINER_NETSTAT_TEST_IMAGE:-container-netstat/busybox:latest}
STATE=${CONTAINER_NETSTAT_TEST_STATE:-/var/lib/container-netstat-test}
RUN=${CONTAINER_NETSTAT_TEST_RUN:-/run/container-netstat-test}
CONTAINERS_CONF=$STATE/containers.conf
CTR_SOCK=$RUN/containerd.sock
CTR_LOG=$STATE/containerd.log
CTR_NS=cntest

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v conmon >/dev/null || need+=(conmon)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v containerd >/dev/null || need+=(containerd)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "setup-runtimes: installing ${need[*]}" >&2
  apt_install "${need[@]}"
fi
mkdir -p "$STATE" "$RUN"

# Podman. This kind of machine lacks CAP_SYS_RESOURCE, so Podman's default rlimits fail
# ("error setting rlimit type 7"): no default ulimits here, and `podman run --ulimit host`.
# crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"): use runc.
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
events_logger = "file"
EOF
export CONTAINERS_CONF
if ! podman image exists "localhost/$IMAGE"; then
  echo "setup-runtimes: podman import of the busybox rootfs as localhost/$IMAGE" >&2
  bash scripts/busybox-rootfs.sh | podman import -q -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "localhost/$IMAGE" >/dev/null
fi

# A private containerd: its own socket, root and state. The state directory ends in
# run/containerd so that `--run-root $RUN/run` shows the standard bundle layout.
if ! timeout 5 ctr -a "$CTR_SOCK" version >/dev/null 2>&1; then
  echo "setup-runtimes: starting a private containerd on $CTR_SOCK (log: $CTR_LOG)" >&2
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  nohup containerd --config "$STATE/containerd.toml" >"$CTR_LOG" 2>&1 &
  for _ in $(seq 1 30); do
    timeout 5 ctr -a "$CTR_SOCK" version >/dev/null 2>&1 && break
    sleep 1
  done
  timeout 5 ctr -a "$CTR_SOCK" version >/dev/null 2>&1 || { echo "setup-runtimes: containerd did not come up; see $CTR_LOG" >&2; tail -20 "$CTR_LOG" >&2; exit 1; }
fi
if ! ctr -a "$CTR_SOCK" -n "$CTR_NS" images check "name==docker.io/$IMAGE" 2>/dev/null | grep -q complete; then
  echo "setup-runtimes: importing $IMAGE into containerd namespace $CTR_NS" >&2
  docker save "$IMAGE" | ctr -a "$CTR_SOCK" -n "$CTR_NS" images import - >/dev/null
fi

bash deploy/build-base.sh
echo "setup-runtimes: podman ($(podman --version | awk '{print $3}')), containerd on $CTR_SOCK, DaemonSet base image ready" >&2

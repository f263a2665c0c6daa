#!/usr/bin/env bash
# A Docker that runs its containers on cgroup v2, on a host that boots cgroup v1.
#
#   scripts/setup-cgroup2.sh start   make it (prints KEY=VALUE lines on stdout)
#   scripts/setup-cgroup2.sh env     print those lines again if it is up (exit 1 if not)
#   scripts/setup-cgroup2.sh stop    undo everything start made; safe to run again
#
# start:
#   - a holder process `unshare -m --propagation private` that mounts cgroup2 on
#     /sys/fs/cgroup in its new mount namespace and sleeps: the namespace lives as long as it;
#   - in that namespace (nsenter -t HOLDER -m) a private containerd and a private dockerd, each
#     with its own socket, root/data-root, state/exec-root and pidfile; dockerd with
#     --exec-opt native.cgroupdriver=cgroupfs --iptables=false --ip-masq=false --ip-forward=false;
#     runc and dockerd see cgroup2 on /sys/fs/cgroup, so `docker info` says Cgroup Version 2;
#   - a bridge of its own (ip link add NAME type bridge, an address, --bridge NAME). Never
#     --bridge none: dockerd then deletes docker0, which the host's own dockerd uses;
#   - an iptables FORWARD accept rule for traffic on that bridge (the host's FORWARD policy is
#     DROP and bridged traffic passes iptables when br_netfilter is loaded);
#   - the busybox image, by `docker import` of scripts/busybox-rootfs.sh (no registry).
# stop: removes the containers, stops dockerd and containerd by their pids, kills by pid any
# container init (from containerd's task state) or process still in the namespace, deletes
# the rule and the bridge, unmounts cgroup2 in the namespace, kills the holder and removes
# the directory.
#
# Limit: this is a hybrid layout. The v1 hierarchies keep every controller but hugetlb, and
# /proc/<pid>/cgroup still lists them beside the 0:: line; the cgroup2 mounted here is the
# host's one hierarchy (the same tree as /sys/fs/cgroup/unified outside).
#
# Environment (defaults for a hand run; the tests give each run its own):
#   CN_CGROUP2_DIR     sockets, roots, pidfiles, logs  (/run/container-netstat-test/cgroup2)
#   CN_CGROUP2_BRIDGE  the bridge's name, at most 15 characters  (cn-v2br0)
#   CN_CGROUP2_ADDR    the bridge's address  (10.213.0.1/24)
set -Eeuo pipefail
cd "$(dirname "$0")/.."

DIR=${CN_CGROUP2_DIR:-/run/container-netstat-test/cgroup2}
BRIDGE=${CN_CGROUP2_BRIDGE:-cn-v2br0}
ADDR=${CN_CGROUP2_ADDR:-10.213.0.1/24}
IMAGE=${CONTAINER_NETSTAT_TEST_IMAGE:-container-netstat/busybox:latest}
CTR_SOCK=$DIR/containerd.sock
DOCKER_SOCK=$DIR/docker.sock
RULE=(FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment container-netstat-cgroup2 -j ACCEPT)

log() { echo "setup-cgroup2: $*" >&2; }
# True if the pid in file $1 runs and is the program $2 (a stale pidfile's pid may be reused).
ours() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

print_env() {
  echo "HOLDER=$(cat "$DIR/holder.pid")"
  echo "DOCKER_HOST=unix://$DOCKER_SOCK"
  echo "CONTAINERD_PID=$(cat "$DIR/containerd.pid")"
  echo "DOCKERD_PID=$(cat "$DIR/docker.pid")"
  echo "BRIDGE=$BRIDGE"
  echo "DIR=$DIR"
}

up() {
  ours "$DIR/holder.pid" sleep && ours "$DIR/docker.pid" dockerd \
    && timeout 10 docker -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1
}

# Stop processes we started: TERM to all at once, up to 30 s, then KILL.
stop_pids() {
  local pid left
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 150); do
    left=""
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
    [ -n "$left" ] || return 0
    sleep 0.2
  done
  log "pids$left ignored SIGTERM; killing them"
  kill -KILL $left 2>/dev/null || true
}

# Best effort to the end: one step that fails must not leave the later ones undone.
stop() (
  set +eE
  trap - ERR
  local holder=""
  ours "$DIR/holder.pid" sleep && holder=$(cat "$DIR/holder.pid")
  local daemons=()
  if ours "$DIR/docker.pid" dockerd; then
    local ids parents="" parent
    ids=$(timeout 30 docker -H "unix://$DOCKER_SOCK" ps -aq 2>/dev/null)
    if [ -n "$ids" ]; then
      parents=$(docker -H "unix://$DOCKER_SOCK" inspect -f '{{.HostConfig.CgroupParent}}' $ids 2>/dev/null | sort -u)
      timeout 120 docker -H "unix://$DOCKER_SOCK" rm -f $ids >/dev/null 2>&1
    fi
    # runc leaves the --cgroup-parent pod<uid> directories it made; remove them once empty.
    for parent in $parents; do
      case "$(basename "$parent")" in
        pod*) [ -z "$holder" ] || rmdir "/proc/$holder/root/sys/fs/cgroup$parent" 2>/dev/null ;;
      esac
    done
    daemons+=("$(cat "$DIR/docker.pid")")
  fi
  # With no container left, the two daemons can stop together (about 2 s each).
  ! ours "$DIR/containerd.pid" containerd || daemons+=("$(cat "$DIR/containerd.pid")")
  ((${#daemons[@]} == 0)) || stop_pids "${daemons[@]}"
  # Containers that outlived their daemons (a crash, a kill -9) are in our containerd's task
  # state, <state>/io.containerd.runtime.v2.task/<namespace>/<id>/: init.pid, and the cgroup in
  # the OCI bundle's linux.cgroupsPath. A live init in that cgroup is killed (its pid namespace
  # with it); each such cgroup is then removed: it is in the host's one cgroup2 hierarchy.
  local task pid cgroup cgroups=()
  for task in "$DIR"/containerd-state/io.containerd.runtime.v2.task/*/*/; do
    [ -f "$task/config.json" ] || continue
    cgroup=$(grep -o '"cgroupsPath":"[^"]*"' "$task/config.json" | cut -d'"' -f4)
    [ -n "$cgroup" ] || continue
    cgroups+=("$cgroup")
    pid=$(cat "$task/init.pid" 2>/dev/null)
    if [ -n "$pid" ] && grep -qx "0::$cgroup" "/proc/$pid/cgroup" 2>/dev/null; then
      log "killing pid $pid of container $(basename "$task" | cut -c1-12), left behind by its daemons"
      kill -KILL "$pid"
    fi
  done
  if [ -n "$holder" ]; then
    # Whatever else still runs in the namespace (a shim whose container outlived its daemon)
    # is ours: stop it by pid.
    local ns pid
    ns=$(readlink "/proc/$holder/ns/mnt")
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$pid" != "$holder" ] || continue
      [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ns" ] || continue
      log "stopping pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)), left in the namespace"
      stop_pids "$pid"
    done
  fi
  if [ -n "$holder" ]; then
    for cgroup in "${cgroups[@]}"; do
      for _ in $(seq 1 50); do rmdir "/proc/$holder/root/sys/fs/cgroup$cgroup" 2>/dev/null && break; sleep 0.1; done
      # and a --cgroup-parent pod<uid> made for it, if nothing else is in it (rmdir fails then)
      case "$(basename "$(dirname "$cgroup")")" in
        pod*) rmdir "/proc/$holder/root/sys/fs/cgroup$(dirname "$cgroup")" 2>/dev/null ;;
      esac
    done
  fi
  while iptables -C "${RULE[@]}" 2>/dev/null; do iptables -D "${RULE[@]}"; done
  ip link del "$BRIDGE" 2>/dev/null || true
  if [ -n "$holder" ]; then
    nsenter -t "$holder" -m -- umount /sys/fs/cgroup 2>/dev/null || true
    kill -KILL "$holder" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  return 0
)

start() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v containerd >/dev/null || need+=(containerd)
  command -v iptables >/dev/null || need+=(iptables)
  command -v ip >/dev/null || need+=(iproute2)
  command -v unshare >/dev/null || need+=(util-linux)
  [ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if up; then print_env; return; fi
  stop  # a half-made set-up from an earlier run
  mkdir -p "$DIR"
  trap 'log "failed; undoing"; stop' ERR

  # The holder: mounts cgroup2 in a private mount namespace, then waits for ever.
  setsid unshare -m --propagation private -- \
    sh -c 'mount -t cgroup2 none /sys/fs/cgroup && exec sleep infinity' \
    </dev/null >"$DIR/holder.log" 2>&1 &
  echo $! >"$DIR/holder.pid"
  local holder
  holder=$(cat "$DIR/holder.pid")
  for _ in $(seq 1 50); do
    [ "$(nsenter -t "$holder" -m -- stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] && break
    kill -0 "$holder" 2>/dev/null || { log "the holder exited: $(cat "$DIR/holder.log")"; false; }
    sleep 0.1
  done
  [ "$(nsenter -t "$holder" -m -- stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]

  cat >"$DIR/containerd.toml" <<EOF
version = 2
root = "$DIR/containerd-root"
state = "$DIR/containerd-state"
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
  nsenter -t "$holder" -m -- setsid containerd --config "$DIR/containerd.toml" </dev/null >"$DIR/containerd.log" 2>&1 &
  echo $! >"$DIR/containerd.pid"
  for _ in $(seq 1 100); do [ -S "$CTR_SOCK" ] && break; sleep 0.1; done
  [ -S "$CTR_SOCK" ] || { log "containerd did not come up: $(tail -5 "$DIR/containerd.log")"; false; }

  ip link add "$BRIDGE" type bridge
  ip addr add "$ADDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -I "${RULE[@]}"

  nsenter -t "$holder" -m -- setsid dockerd --host "unix://$DOCKER_SOCK" --containerd "$CTR_SOCK" \
    --data-root "$DIR/docker-data" --exec-root "$DIR/docker-exec" --pidfile "$DIR/docker.pid.dockerd" \
    --exec-opt native.cgroupdriver=cgroupfs --bridge "$BRIDGE" \
    --iptables=false --ip-masq=false --ip-forward=false \
    </dev/null >"$DIR/dockerd.log" 2>&1 &
  echo $! >"$DIR/docker.pid"
  for _ in $(seq 1 300); do
    timeout 5 docker -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1 && break
    ours "$DIR/docker.pid" dockerd || break
    sleep 0.2
  done
  timeout 10 docker -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1 \
    || { log "dockerd did not come up: $(tail -5 "$DIR/dockerd.log")"; false; }

  bash scripts/busybox-rootfs.sh \
    | docker -H "unix://$DOCKER_SOCK" import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
  trap - ERR
  log "dockerd on $DOCKER_SOCK, cgroup $(docker -H "unix://$DOCKER_SOCK" info --format '{{.CgroupVersion}}'), bridge $BRIDGE"
  print_env
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) up && print_env ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac

"""Bring up (and tear down) N realistic busybox containers for the benchmark.

    python benchmarks/fleet.py up 300       # replaces any fleet this script made before
    python benchmarks/fleet.py status
    python benchmarks/fleet.py mode hold    # run | hold | burst (see roles/app.sh)
    python benchmarks/fleet.py down

N counts running containers. Of them:
- 2 on ``--network host`` (idle);
- max(2, N // 30) pod-like groups of 3: a ``podsandbox`` (idle, like a pause container)
  and two app containers joining it with ``--network container:<sandbox>``, all with
  the Kubernetes labels io.kubernetes.pod.name / .pod.namespace / .docker.type;
- the rest in turn: a server (3 long-lived connections), a client (httpd plus short
  requests leaving TIME_WAIT), a mixed one (1 long-lived connection and a UDP socket)
  and an idle one (no socket at all). With ``--all-tcp`` the idle one is replaced by a
  ``single`` one (1 long-lived connection), so that every namespace holds TCP sockets.
Two more containers have exited. Every fifth standalone container is on a bridge
network made for the fleet (at most 250 per network: a bridge holds 1023 ports), the
others on ``--network none``. All traffic stays on 127.0.0.1 inside each container's
own namespace. Every container and network carries the label
``container-netstat-bench=1``, and only those are ever touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import docker

IMAGE = os.environ.get("CONTAINER_NETSTAT_BENCH_IMAGE", "container-netstat/busybox:latest")
LABEL = "container-netstat-bench"
ROLE_LABEL = LABEL + ".role"
PREFIX = "cnb-"
POD_NAMESPACE = "cnbench"
CONTROL_DIR = os.environ.get("CONTAINER_NETSTAT_BENCH_CONTROL", "/run/container-netstat-bench")
ROLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "roles")
PER_BRIDGE = 250
IDLE = ["sleep", "2147483647"]

# role -> environment of roles/app.sh
WORKLOADS: Dict[str, Dict[str, str]] = {
    "server": {"LONG": "3"},
    "client": {"HTTP": "1"},
    "mixed": {"LONG": "1", "UDP": "1"},
    "pod-server": {"LONG": "2"},
    "pod-client": {"HTTP": "1", "UDP": "1"},
    "single": {"LONG": "1"},
}
STANDALONE = ("server", "client", "mixed", "idle")
# --all-tcp: no namespace without a TCP socket (the states group does not dump empty ones).
STANDALONE_ALL_TCP = ("server", "client", "mixed", "single")


@dataclass
class Spec:
    """One container to create."""

    name: str
    role: str
    network: str
    labels: Dict[str, str] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    command: Optional[List[str]] = None
    joins: Optional[str] = None  # name of the sandbox whose namespace it joins


def plan(n: int, period: int = 10, all_tcp: bool = False) -> List[Spec]:
    """The containers of a fleet of ``n`` running ones, plus two exited ones.

    With ``all_tcp`` every container network namespace holds TCP sockets (no idle role).
    """
    if n < 10:
        raise SystemExit("fleet: N must be at least 10")
    specs: List[Spec] = [Spec(f"{PREFIX}host-{i}", "host", "host", command=IDLE) for i in range(2)]
    pods = max(2, n // 30)
    for p in range(pods):
        pod = f"{PREFIX}pod-{p:04d}"
        uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, pod))
        sandbox = f"k8s_POD_{pod}_{POD_NAMESPACE}_{uid}_0"
        base = {
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.namespace": POD_NAMESPACE,
            "io.kubernetes.pod.uid": uid,
        }
        network = _bridge(p) if p % 2 == 0 else "none"
        specs.append(Spec(sandbox, "pod-sandbox", network, command=IDLE, labels={
            **base, "io.kubernetes.container.name": "POD", "io.kubernetes.docker.type": "podsandbox"}))
        for app in ("server", "client"):
            specs.append(Spec(f"k8s_{app}_{pod}_{POD_NAMESPACE}_{uid}_0", f"pod-{app}", "container", joins=sandbox,
                              labels={**base, "io.kubernetes.container.name": app,
                                      "io.kubernetes.docker.type": "container"}))
    rest = n - len(specs)
    bridged = 0
    roles = STANDALONE_ALL_TCP if all_tcp else STANDALONE
    for i in range(rest):
        role = roles[i % len(roles)]
        network = "none"
        if i % 5 == 1:  # one in five, every role in turn
            network, bridged = _bridge(bridged), bridged + 1
        specs.append(Spec(f"{PREFIX}{role}-{i:04d}", role, network, command=IDLE if role == "idle" else None))
    specs += [Spec(f"{PREFIX}exited-{i}", "exited", "none", command=["true"]) for i in range(2)]
    for spec in specs:
        spec.labels.update({LABEL: "1", ROLE_LABEL: spec.role})
        if spec.role in WORKLOADS:
            spec.env = {**WORKLOADS[spec.role], "PERIOD": str(period)}
    return specs


def _bridge(index: int) -> str:
    return f"{PREFIX}net-{index // PER_BRIDGE}"


def client() -> docker.DockerClient:
    return docker.from_env(timeout=120, max_pool_size=16)


def write_mode(mode: str) -> str:
    """Write /ctl/mode atomically; ``burst`` becomes ``burst-<new generation>``."""
    if mode == "burst":
        mode = f"burst-{time.time_ns()}"
    os.makedirs(CONTROL_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CONTROL_DIR)
    with os.fdopen(fd, "w") as f:
        f.write(mode + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(CONTROL_DIR, "mode"))
    return mode


def _prepare_control_dir() -> None:
    os.makedirs(CONTROL_DIR, exist_ok=True)
    shutil.copy(os.path.join(ROLES_DIR, "app.sh"), os.path.join(CONTROL_DIR, "app.sh"))
    write_mode("run")


def _create(api: Any, spec: Spec, ids: Dict[str, str]) -> str:
    network = f"container:{ids[spec.joins]}" if spec.joins else spec.network
    host_config = api.create_host_config(
        network_mode=network,
        binds={CONTROL_DIR: {"bind": "/ctl", "mode": "ro"}},
    )
    created = api.create_container(
        IMAGE,
        command=spec.command or ["sh", "/ctl/app.sh"],
        name=spec.name,
        labels=spec.labels,
        environment=spec.env,
        host_config=host_config,
    )
    api.start(created["Id"])
    return str(created["Id"])


def bench_containers(api: Any, stopped: bool = True) -> List[Dict[str, Any]]:
    return list(api.containers(all=stopped, filters={"label": f"{LABEL}=1"}))


def down(cli: Optional[docker.DockerClient] = None, workers: int = 4) -> int:
    """Remove every container and network labelled as the benchmark's; returns how many containers."""
    cli = cli or client()
    listed = bench_containers(cli.api)
    ids = [c["Id"] for c in listed]

    def remove(container_id: str) -> None:
        try:
            cli.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass

    # Joiners first: a sandbox cannot always be removed while others use its namespace.
    joined = {c["Id"] for c in listed if str((c.get("HostConfig") or {}).get("NetworkMode", "")).startswith("container:")}
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(remove, [i for i in ids if i in joined]))
        list(pool.map(remove, [i for i in ids if i not in joined]))
    for net in cli.api.networks(filters={"label": f"{LABEL}=1"}):
        cli.api.remove_network(net["Id"])
    return len(ids)


def up(n: int, workers: int = 4, period: int = 10, quiet: bool = False, reuse: bool = False,
       all_tcp: bool = False) -> float:
    """Replace any previous fleet with one of ``n`` running containers; returns seconds taken.

    With ``reuse``, a fleet that already has exactly the planned containers running is kept
    (the roles are in the names: a fleet made with another ``all_tcp`` is not).
    """
    cli = client()
    start = time.monotonic()
    if reuse:
        wanted = {s.name for s in plan(n, period, all_tcp) if s.role != "exited"}
        running = {c["Names"][0].lstrip("/") for c in bench_containers(cli.api, stopped=False)}
        if running == wanted:
            _prepare_control_dir()
            return 0.0
    removed = down(cli, workers)
    if removed and not quiet:
        print(f"fleet: removed {removed} old containers", file=sys.stderr)
    _prepare_control_dir()
    specs = plan(n, period, all_tcp)
    for net in sorted({s.network for s in specs if s.network.startswith(PREFIX)}):
        cli.api.create_network(net, driver="bridge", labels={LABEL: "1"})
    ids: Dict[str, str] = {}
    roots = [s for s in specs if not s.joins]
    joiners = [s for s in specs if s.joins]
    with ThreadPoolExecutor(workers) as pool:
        for spec, cid in zip(roots, pool.map(lambda s: _create(cli.api, s, ids), roots)):
            ids[spec.name] = cid
        for spec, cid in zip(joiners, pool.map(lambda s: _create(cli.api, s, ids), joiners)):
            ids[spec.name] = cid
    running = wait_running(cli, n)
    took = time.monotonic() - start
    if not quiet:
        print(f"fleet: {running} running benchmark containers in {took:.0f} s", file=sys.stderr)
    return took


def wait_running(cli: docker.DockerClient, n: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        running = len(bench_containers(cli.api, stopped=False))
        if running >= n or time.monotonic() > deadline:
            if running < n:
                raise SystemExit(f"fleet: only {running} of {n} containers running")
            return running
        time.sleep(1)


def status() -> None:
    counts: Dict[str, int] = {}
    for c in bench_containers(client().api):
        key = f"{c['Labels'].get(ROLE_LABEL, '?')} {c['State']}"
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts):
        print(f"{counts[key]:5d} {key}")
    mode_file = os.path.join(CONTROL_DIR, "mode")
    if os.path.exists(mode_file):
        with open(mode_file) as f:
            print(f"mode: {f.read().strip()}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="replace the fleet with N running containers")
    p_up.add_argument("n", type=int)
    p_up.add_argument("--workers", type=int, default=4, help="containers created at once (default 4)")
    p_up.add_argument("--period", type=int, default=10, help="seconds between request rounds (default 10)")
    p_up.add_argument("--reuse", action="store_true", help="keep a fleet that already has these containers")
    p_up.add_argument("--all-tcp", action="store_true",
                      help="no idle containers: every network namespace holds TCP sockets")
    sub.add_parser("down", help="remove every benchmark container and network")
    sub.add_parser("status", help="count benchmark containers by role and state")
    p_mode = sub.add_parser("mode", help="set the request loop's mode")
    p_mode.add_argument("mode", choices=["run", "hold", "burst"])
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.n, args.workers, args.period, reuse=args.reuse, all_tcp=args.all_tcp)
    elif args.command == "down":
        print(f"fleet: removed {down()} containers", file=sys.stderr)
    elif args.command == "status":
        status()
    else:
        print(write_mode(args.mode))


if __name__ == "__main__":
    main()

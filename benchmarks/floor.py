"""The floor: what one run cannot go below. Standard library only.

    python benchmarks/floor.py > items.json
    python benchmarks/floor.py --states > items.json     # the yardstick: with the states group
    python benchmarks/floor.py --states --include 'cnb-big-*'

One ``GET /containers/json`` over the Docker socket with ``http.client`` (no SDK, no
click), the pid of each container from the runtime shim's ``init.pid`` (root-only,
Docker-internal; the container's cgroup.procs when it is missing), the /proc half from
``reference.py``. It handles only ``unix://`` sockets: it is a yardstick, not a tool.

``--states`` makes it the yardstick of the default run: also one legacy sock_diag dump inside
each namespace holding a TCP socket, decoded for the state counts, the listeners' fill and
the busiest remote port (``diag_reference.py``), serially, in one thread. ``--include GLOB``
keeps only containers whose name matches (the package's ``--include``, names only).
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import socket
import sys
from typing import Optional

from reference import Running, collect, emit

SHIM = "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{id}/init.pid"
CGROUP = "/sys/fs/cgroup/pids/docker/{id}/cgroup.procs"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def pid_of(container_id: str) -> int:
    for template in (SHIM, CGROUP):
        try:
            with open(template.format(id=container_id)) as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
        if pids and _belongs(min(pids), container_id):
            return min(pids)
    return 0


def _belongs(pid: int, container_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return container_id in f.read()
    except OSError:
        return False


def main(host: Optional[str] = None, argv: Optional[list] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    states = "--states" in args
    include = args[args.index("--include") + 1] if "--include" in args else None
    host = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        raise SystemExit(f"floor.py: only unix:// sockets, not {host}")
    conn = UnixConnection(host[len("unix://"):])
    conn.request("GET", "/containers/json")
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"floor.py: GET /containers/json: {response.status}")
    listed = json.loads(response.read())
    running = [
        Running(
            id=c["Id"],
            name=(c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/"),
            network_mode=(c.get("HostConfig") or {}).get("NetworkMode") or "default",
            labels=c.get("Labels") or {},
            pid=pid_of(c["Id"]),
        )
        for c in listed
        if include is None or fnmatch.fnmatchcase((c.get("Names") or ["/"])[0].lstrip("/"), include)
    ]
    emit(collect(running, listed=len(running), states=states))


if __name__ == "__main__":
    main()

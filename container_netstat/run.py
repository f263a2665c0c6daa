"""One run below the command line: settings in, snapshot out.

discover (discovery.py: the runtime's containers) -> filter -> resolve pids (pids.py) -> read
each network namespace once (namespaces.py) -> the field scopes of this kernel
(kernel_scopes.py). Errors are raised, never turned into exit codes: cli.py does that.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

from container_netstat import discovery, filters, kernel_scopes, namespaces
from container_netstat.metrics import STATES
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from container_netstat.records import Snapshot
from container_netstat.settings import Settings
from container_netstat.tcp_reader import TcpReader


def choose_backend(settings: Settings, environ: Mapping[str, str]) -> discovery.Backend:
    """The discovery backend the settings choose (no call to the runtime yet)."""
    p = settings.paths
    paths = discovery.Paths(p.proc_root, p.run_root, p.var_root, p.host_root, p.runtime_dirs)
    return discovery.choose(settings.runtime, environ, settings.docker_timeout, paths, settings.docker_host)


def tcp_reader(proc: ProcFS, settings: Settings) -> Optional[TcpReader]:
    """The TCP states reader, probed once: sock_diag where setns works, else /proc/<pid>/net/tcp.

    Whether a container's ns file opens is confirmed on the first namespace (namespaces.py);
    where only /proc can give the states and they were not asked for, they are left out.
    """
    if STATES not in settings.groups:
        return None
    reader = TcpReader(proc, optional=not settings.states_asked)
    reader.probe()
    return reader


def take_snapshot(settings: Settings, backend: discovery.Backend) -> Tuple[Snapshot, Dict[str, str]]:
    """Read every container namespace once: (snapshot, field scopes of this kernel).

    Raises DockerUnavailable when the runtime cannot be reached, ContainerNetstatError when the
    host's /proc cannot be read. ``snapshot.groups`` lacks ``states`` when they were not asked
    for and only /proc could give them.
    """
    p = settings.paths
    proc = ProcFS(p.proc_root)
    tcp = tcp_reader(proc, settings)
    containers = filters.select(backend.containers(), settings.include, settings.exclude)
    resolver = PidResolver(proc, p.cgroup_root, p.run_root, inspect=backend.inspector())
    snapshot = namespaces.read_namespaces(containers, resolver, proc, set(settings.groups), tcp, backend.members,
                                  settings.fd_cap)
    return snapshot, kernel_scopes.field_scopes(snapshot.host.kernel_release, settings.scope_overrides)

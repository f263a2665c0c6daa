"""One run below the command line: settings in, snapshot out.

discover (discovery.py: the runtime's containers) -> filter -> resolve pids (pids.py) -> read
each network namespace once (namespaces.py) -> the field scopes of this kernel
(kernel_scopes.py). Errors are raised, never turned into exit codes: cli.py does that.

Every step takes its time from the run's one deadline (deadline.py): the runtime's client
timeout and the listing, in total, from what is left of it; read_namespaces stops starting
namespaces once it has passed and names those it did not read (``Snapshot.late``).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from container_netstat import discovery, filters, kernel_scopes, namespaces
from container_netstat.deadline import Deadline, StepTimeout, within
from container_netstat.errors import DockerUnavailable
from container_netstat.metrics import STATES
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, Snapshot
from container_netstat.settings import Settings
from container_netstat.tcp_reader import TcpReader


def choose_backend(settings: Settings, environ: Mapping[str, str],
                   deadline: Optional[Deadline] = None) -> discovery.Backend:
    """The discovery backend the settings choose (no call to the runtime yet); its client's
    timeout (per request) is what is left of ``deadline`` when that is shorter than
    --docker-timeout."""
    p = settings.paths
    paths = discovery.Paths(p.proc_root, p.run_root, p.var_root, p.host_root, p.runtime_dirs)
    timeout = settings.docker_timeout
    if deadline is not None:
        timeout = max(0.1, deadline.budget(timeout, "connecting to the container runtime"))
    return discovery.choose(settings.runtime, environ, timeout, paths, settings.docker_host)


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


def list_containers(settings: Settings, backend: discovery.Backend, deadline: Optional[Deadline]) -> List[Container]:
    """The backend's containers, the list call bounded in total by --docker-timeout and the
    deadline: a client timeout bounds each recv, and a daemon that answers a byte at a time
    would never trip it. DockerUnavailable when it does not end in time; OutOfTime when the
    deadline had passed already."""
    if deadline is None:
        return backend.containers()
    budget = deadline.budget(settings.docker_timeout, "listing the containers")
    try:
        return within(budget, "listing the containers", backend.containers)
    except StepTimeout as err:
        raise DockerUnavailable(f"timed out: no container list within {budget:.1f} s") from err


def take_snapshot(settings: Settings, backend: discovery.Backend,
                  deadline: Optional[Deadline] = None) -> Tuple[Snapshot, Dict[str, str]]:
    """Read every container namespace once: (snapshot, field scopes of this kernel).

    Raises DockerUnavailable when the runtime cannot be reached, OutOfTime when ``deadline``
    passed before the list, ContainerNetstatError when the host's /proc cannot be read.
    ``snapshot.groups`` lacks ``states`` when they were not asked for and only /proc could
    give them; ``snapshot.late`` names the containers not read because ``deadline`` passed.
    """
    p = settings.paths
    proc = ProcFS(p.proc_root)
    tcp = tcp_reader(proc, settings)
    containers = filters.select(list_containers(settings, backend, deadline), settings.include, settings.exclude)
    resolver = PidResolver(proc, p.cgroup_root, p.run_root, inspect=backend.inspector())
    snapshot = namespaces.read_namespaces(containers, resolver, proc, set(settings.groups), tcp, backend.members,
                                          settings.fd_cap, deadline=deadline, workers=settings.workers)
    return snapshot, kernel_scopes.field_scopes(snapshot.host.kernel_release, settings.scope_overrides)

"""Discovery backends: where the list of running containers comes from.

Every backend gives the same ``Container`` records; ``collect`` does not know which
one ran. A backend may fill ``Container.pid``, which the pid resolver then uses
after the usual check that ``/proc/<pid>/cgroup`` names the container.

- ``docker``: one ``GET /containers/json`` on the Docker Engine API (docker_api.py).
- ``podman``: the same call on Podman's Docker-compatible socket
  (``podman system service``; rootful ``/run/podman/podman.sock``). That list has no
  pids and Podman keeps no cgroup the Docker resolver knows, so pids come from one
  scan of ``/proc/*/cgroup`` (cgroups.py), with inspect as the fallback.
- ``proc``: no runtime API at all. One scan of ``/proc/*/cgroup`` finds every process
  in a container cgroup (Docker, containerd, CRI-O, Podman; cgroup v1 and v2; cgroupfs
  and systemd drivers); the container's init is the member whose parent is outside the
  container. Names and Kubernetes labels come from files on the node (node_files.py).
  Containers that share a network namespace are grouped by ``collect`` as always.
  The same pass notes the runtime daemons outside containers (by ``/proc/<pid>/comm``),
  whose command lines say where their files are (runtime_dirs.py).

The scan believes no container about another's identity (docs/security.rst): a process is
the container's that the OUTERMOST component of its cgroup path names (cgroups.py), so a
cgroup a tenant makes inside its own, named after another container, stays its own; one
warning per pair names the conflict. Two cgroups elsewhere that both name one id (only a
writable cgroupfs can make that) are told apart by where they are; if their processes are
in different network namespaces, each becomes a record of its own (``claims``): its name,
and its pod name if it has one, get ``@netns:<key>``, so neither is reported under the
other's name and their series stay apart; one warning says so.
- ``auto``: ``docker`` when Docker is configured (``--docker-host``, ``DOCKER_HOST``)
  or its socket exists, else ``podman`` when ``CONTAINER_HOST`` is set or Podman's
  rootful socket exists, else ``proc``. A socket that exists but does not answer is
  an error, never a silent fallback.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Collection, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from container_netstat import cgroups, docker_api
from container_netstat.records import Container
from container_netstat.errors import ContainerNetstatError
from container_netstat.kubernetes import POD_NAME
from container_netstat.pids import Inspect, init_pid, warn_conflicts
from container_netstat.procfs import ProcFS

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from container_netstat.runtime_dirs import Dirs

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "docker", "podman", "proc")
DOCKER_SOCKET = "/var/run/docker.sock"  # the Docker CLI's and SDK's default
PODMAN_SOCKET = "/run/podman/podman.sock"  # rootful `podman system service`


@dataclass(frozen=True)
class Paths:
    """Where the host's /proc, /run, /var and / are seen from here, and the runtime
    directories the user gave (``--runtime-dir``, host paths)."""

    proc_root: str = "/proc"
    run_root: str = "/run"
    var_root: str = "/var"
    host_root: str = "/"
    runtime_dirs: Optional["Dirs"] = None


@dataclass(frozen=True)
class Member:
    """A process found in a container's cgroup."""

    pid: int
    owner: cgroups.CgroupOwner
    place: str = ""  # the container's cgroup as this process names it (cgroups.Attribution)


def _pids(proc: ProcFS) -> List[int]:
    try:
        return [int(e) for e in os.listdir(proc.root) if e.isdigit()]
    except OSError as err:
        raise ContainerNetstatError(f"{proc.root}: cannot list processes: {err.strerror or err}") from err


def _proc_bytes(root: str, pid: int, name: str = "cgroup") -> Optional[bytes]:
    """/proc/<pid>/<name> (cgroup, comm), or None once the process is gone.

    os.read on a raw descriptor: the scan reads this file for every process on the host,
    and a buffered file object costs a third more CPU (4800 processes: 96 ms against 71 ms).
    """
    try:
        fd = os.open(f"{root}/{pid}/{name}", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class NodeScan:
    """What one pass over /proc found: the containers' processes, and the daemons."""

    containers: Dict[str, List[Member]]
    daemons: Dict[int, str]  # pid -> comm, of processes outside containers


def scan_node(proc: ProcFS, daemons: Collection[str] = ()) -> NodeScan:
    """Container id -> its processes, from one pass over ``/proc/*/cgroup``; and, from the
    same pass, the processes outside containers whose ``comm`` is one of ``daemons``.

    Processes that exit during the scan are skipped. Many processes share one cgroup
    text, so each distinct text is parsed once.
    """
    wanted = {f"{name}\n".encode(): name for name in daemons}
    parsed: Dict[bytes, cgroups.Attribution] = {}
    found: Dict[str, List[Member]] = {}
    running: Dict[int, str] = {}
    for pid in _pids(proc):
        text = _proc_bytes(proc.root, pid)
        if text is None:
            continue
        if text not in parsed:
            parsed[text] = cgroups.attribute(text.decode("utf-8", errors="replace"))
            warn_conflicts(pid, parsed[text])
        attribution = parsed[text]
        owner = attribution.owner
        if owner is not None:
            found.setdefault(owner.id, []).append(Member(pid, owner, attribution.place))
        elif wanted:
            comm = _proc_bytes(proc.root, pid, "comm")
            if comm in wanted:
                running[pid] = wanted[comm]
    return NodeScan(found, running)


def scan(proc: ProcFS) -> Dict[str, List[Member]]:
    """Container id -> its processes (``scan_node`` without daemons)."""
    return scan_node(proc).containers


def init_member(proc: ProcFS, members: Sequence[Member]) -> Member:
    """The container's init member (pids.init_pid), else its lowest pid."""
    ordered = sorted(members, key=lambda m: m.pid)
    init = init_pid(proc, [m.pid for m in ordered])
    return next((m for m in ordered if m.pid == init), ordered[0])


def claims(proc: ProcFS, container_id: str, members: Sequence[Member]) -> List[Tuple[Optional[int], List[Member]]]:
    """One container id's members, split by network namespace where two cgroups claim the id.

    [(None, members)] in the usual case: every member names the id at one place. Else each
    place's init (``init_member``) gives the place's namespace key, and the places are
    grouped by it: [(key, members)] per namespace, when there are two or more, with one
    warning. A place whose init is gone is dropped.
    """
    places: Dict[str, List[Member]] = {}
    for member in members:
        places.setdefault(member.place, []).append(member)
    if len(places) < 2:
        return [(None, list(members))]
    by_key: Dict[int, List[Member]] = {}
    for found in places.values():
        try:
            key = proc.netns_key(init_member(proc, found).pid)
        except ContainerNetstatError:
            continue
        by_key.setdefault(key, []).extend(found)
    if len(by_key) < 2:
        return [(None, [m for found in by_key.values() for m in found] or list(members))]
    log.warning("container %s: %d cgroups in %d network namespaces claim its id (%s): each is reported "
                "apart, named with @netns:<key>", container_id[:12], len(places), len(by_key),
                ", ".join(sorted(places)))
    return sorted(by_key.items())


def disputed(container: Container, key: int) -> Container:
    """The record of one claim on a disputed id (``claims``): its name and pod name get
    ``@netns:<key>``; the id stays, for the cgroup checks."""
    labels = dict(container.labels)
    if labels.get(POD_NAME):
        labels[POD_NAME] = f"{labels[POD_NAME]}@netns:{key}"
    return replace(container, name=f"{container.name}@netns:{key}", labels=labels)


class Backend(Protocol):
    """Running containers in, the same records out, whatever the runtime."""

    name: str
    where: str  # for messages: the API address, or the proc root
    members: Optional[Dict[str, List[int]]]  # container id -> every pid, where containers() scanned /proc

    def containers(self) -> List[Container]: ...

    def inspector(self) -> Optional[Inspect]: ...

    def version(self) -> Dict[str, str]: ...


class DockerBackend:
    """The Docker Engine API: one list call; pids from cgroups, pid files, then inspect."""

    name = "docker"
    plain_list = True  # the list call without the SDK on a local socket (docker_api.list_unix)

    def __init__(self, environment: Mapping[str, str], timeout: float) -> None:
        self.environment = dict(environment)
        self.timeout = timeout
        self.where = self.environment.get("DOCKER_HOST") or f"unix://{DOCKER_SOCKET}"
        self.members: Optional[Dict[str, List[int]]] = None
        self._client: Optional["docker.DockerClient"] = None

    def _connect(self) -> "docker.DockerClient":
        if self._client is None:
            self._client = docker_api.connect(self.environment, self.timeout)
        return self._client

    def containers(self) -> List[Container]:
        path = docker_api.unix_path(self.where) if self.plain_list else None
        if path is not None:
            return docker_api.list_unix(path, self.timeout)
        return docker_api.list_containers(self._connect())

    def inspector(self) -> Optional[Inspect]:
        # The client is made at the first inspect, not before: most runs need none.
        def inspect(container_id: str) -> Optional[int]:
            return docker_api.inspector(self._connect())(container_id)

        return inspect

    def version(self) -> Dict[str, str]:
        return docker_api.server_version(self._connect())


class PodmanBackend(DockerBackend):
    """Podman's Docker-compatible API; pids from a /proc scan, since Podman's list has none."""

    name = "podman"
    plain_list = False

    def __init__(self, address: str, timeout: float, proc: ProcFS) -> None:
        super().__init__({"DOCKER_HOST": address}, timeout)
        self.where = address
        self.proc = proc

    def containers(self) -> List[Container]:
        listed = super().containers()
        members = scan(self.proc)
        self.members = {}
        out: List[Container] = []
        for container in listed:
            found = members.get(container.id)
            if not found:
                out.append(container)
                continue
            split = claims(self.proc, container.id, found)
            for key, part in split:
                record = container if key is None else disputed(container, key)
                out.append(replace(record, pid=init_member(self.proc, part).pid))
            if len(split) == 1:  # a disputed id's members are found per claim, from its own cgroup
                self.members[container.id] = [m.pid for m in split[0][1]]
        return out


class ProcBackend:
    """No runtime API: containers from /proc/*/cgroup, named from the node's files."""

    name = "proc"

    def __init__(self, paths: Paths, proc: Optional[ProcFS] = None) -> None:
        self.paths = paths
        self.proc = proc or ProcFS(paths.proc_root)
        self.where = f"{paths.proc_root} (no runtime API)"
        self.members: Optional[Dict[str, List[int]]] = None

    def containers(self) -> List[Container]:
        from container_netstat import runtime_dirs  # here: only this backend needs them
        from container_netstat.node_files import NodeFiles

        node = scan_node(self.proc, runtime_dirs.DAEMONS)
        view = runtime_dirs.HostView(self.paths.host_root, self.paths.run_root, self.paths.var_root)
        dirs = runtime_dirs.find(self.paths.proc_root, node.daemons, view, self.paths.runtime_dirs or runtime_dirs.Dirs())
        files = NodeFiles(self.paths.run_root, self.paths.var_root, self.paths.proc_root, self.proc.parent_pid,
                          view.localize(dirs))
        out: List[Container] = []
        self.members = {}
        for container_id, members in node.containers.items():
            split = claims(self.proc, container_id, members)
            if len(split) == 1:  # a disputed id's members are found per claim, from its own cgroup
                self.members[container_id] = [m.pid for m in members]
            for key, part in split:
                init = init_member(self.proc, part)
                owner = init.owner
                identity = files.identify(container_id, owner.runtime, owner.pod_uid, init.pid)
                log.debug("container %s: %s runtime, pid %d, named from %s",
                          container_id[:12], owner.runtime or "unknown", init.pid, identity.named_from)
                record = Container(
                    id=container_id,
                    name=identity.name or container_id[:12],
                    network_mode=identity.network_mode,
                    labels=identity.labels,
                    pid=init.pid,
                )
                out.append(record if key is None else disputed(record, key))
        return sorted(out, key=lambda c: c.name)

    def inspector(self) -> Optional[Inspect]:
        return None

    def version(self) -> Dict[str, str]:
        return {"server_version": "", "api_version": ""}


def choose(
    runtime: str,
    environment: Mapping[str, str],
    timeout: float,
    paths: Paths,
    docker_host: Optional[str] = None,
    exists: Callable[[str], bool] = os.path.exists,
) -> Backend:
    """The backend for ``--runtime``; see the module docstring for what ``auto`` picks."""
    env = dict(environment)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    proc = ProcFS(paths.proc_root)
    podman_address = docker_host or env.get("CONTAINER_HOST") or f"unix://{PODMAN_SOCKET}"
    if runtime == "docker":
        return DockerBackend(env, timeout)
    if runtime == "podman":
        return PodmanBackend(podman_address, timeout, proc)
    if runtime == "proc":
        return ProcBackend(paths, proc)
    if runtime != "auto":
        raise ValueError(f"unknown runtime {runtime!r}")
    if env.get("DOCKER_HOST"):
        log.debug("runtime: docker (DOCKER_HOST or --docker-host is set)")
        return DockerBackend(env, timeout)
    if exists(DOCKER_SOCKET):
        log.debug("runtime: docker (%s exists)", DOCKER_SOCKET)
        return DockerBackend(env, timeout)
    if env.get("CONTAINER_HOST") or exists(PODMAN_SOCKET):
        log.debug("runtime: podman (%s)", podman_address)
        return PodmanBackend(podman_address, timeout, proc)
    log.warning(
        "no Docker or Podman socket (%s, %s): reading containers from %s instead (--runtime proc)",
        DOCKER_SOCKET, PODMAN_SOCKET, paths.proc_root,
    )
    return ProcBackend(paths, proc)

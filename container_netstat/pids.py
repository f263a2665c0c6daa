"""Container id -> a pid inside it, from what the host already has, without asking Docker.

Order, by robustness and cost (measured for 299 containers):
1. the container's cgroup ``cgroup.procs``: world-readable, stable across Docker
   versions, 5.1 ms in all. The hierarchies are found once per run (``detect_layout``),
   so a cgroup v2 host never tries the v1 names; a Kubernetes pod container whose pod
   uid is not known is found in one listing of the pod cgroups (``pod_cgroups``);
2. the runtime shim's ``init.pid``: 1.9 ms in all but root-only and Docker-internal
   (it moves when dockerd uses a system containerd);
3. ``GET /containers/<id>/json`` (inspect), concurrently, over the client's pooled
   connections: about 2 ms each, and it loads the daemon.
A pid from 1 or 2 is used only if /proc/<pid>/cgroup names the container id by the
outermost rule (cgroups.py), so a stale pid file pointing at a reused pid is rejected, and
so is a process of another container that sits in a cgroup it named after this one.
``PidResolver.still_owned`` makes the same check again after a namespace was opened: the
pid may have exited and been reused since it was resolved.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from container_netstat import cgroups
from container_netstat.errors import ContainerNetstatError
from container_netstat.procfs import ProcFS, read_bytes

log = logging.getLogger(__name__)

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_RUN_ROOT = "/run"

# Where a Docker container's cgroup lives, relative to a hierarchy's mount point:
# cgroupfs driver, systemd driver, and the Kubernetes (dockershim) parents.
_CGROUP_DIRS = (
    "docker/{id}",
    "system.slice/docker-{id}.scope",
    "kubepods/{qos}pod{pod}/{id}",
    "kubepods.slice/kubepods-{qosd}pod{podu}.slice/docker-{id}.scope",
)
# v1 hierarchies that every container joins, in the order tried; "unified" is the v2
# hierarchy of a hybrid host, "" a cgroup2 mount at the cgroup root itself.
_HIERARCHIES = ("pids", "memory", "cpu,cpuacct", "cpu", "systemd", "unified", "")
_QOS = ("", "burstable/", "besteffort/")
# The kubelet's pod cgroups, <top>/[<qos>/]<pod>/<container> (Kubernetes
# pkg/kubelet/cm/qos_container_manager_linux.go, pod_container_manager_linux.go).
_KUBEPODS = ("kubepods", "kubepods.slice")
_KUBEPODS_DEPTH = 3
_INDEX = ("", "", "")  # the key of a hit found through the pod cgroup index
_PID_FILES = (
    "docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{id}/init.pid",
    "containerd/io.containerd.runtime.v2.task/moby/{id}/init.pid",
)

Inspect = Callable[[str], Optional[int]]
# (hierarchy, template, qos): one place a container's cgroup can be, whatever its id.
_Key = Tuple[str, str, str]


@dataclass(frozen=True)
class Resolved:
    """A pid inside a container and the way it was found (cgroup, pid-file, inspect, proc-scan)."""

    pid: int
    via: str


def _read_pids(path: str) -> List[int]:
    """The pids in a cgroup.procs or pid file, lowest first (the container's init, usually)."""
    try:
        data = read_bytes(path, 65536)
    except OSError:
        return []
    return sorted(int(tok) for tok in data.split() if tok.isdigit())


def detect_layout(cgroup_root: str) -> Tuple[str, ...]:
    """The hierarchies under ``cgroup_root`` that can hold a container's cgroup, in the order to try.

    Every cgroup2 directory, the root included, holds ``cgroup.controllers`` (kernel
    Documentation/admin-guide/cgroup-v2.rst, "Core Interface Files"); no v1 hierarchy does.
    So a root that has it is a cgroup2 mount, the only hierarchy. Otherwise: the v1
    hierarchies that exist, in ``_HIERARCHIES`` order (a hybrid host's ``unified`` last);
    a root with none of them gets every name, as before.
    """
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        return ("",)
    found = tuple(h for h in _HIERARCHIES if h and os.path.isdir(os.path.join(cgroup_root, h)))
    return found or _HIERARCHIES


def pod_cgroups(cgroup_root: str, hierarchy: str) -> Dict[str, str]:
    """Container id -> its cgroup directory under the kubelet's pod cgroups in one hierarchy.

    One listing of ``kubepods[.slice]/[<qos>/]<pod>/``. Entries are named by cgroups.py's
    parser, so every runtime's shape is known (``<id>``, ``docker-<id>.scope``,
    ``cri-containerd-<id>.scope``, ``crio-<id>``); conmon's cgroups name none. The
    directories are relative to ``cgroup_root``.
    """
    found: Dict[str, str] = {}

    def walk(rel: str, depth: int) -> None:
        try:
            entries = [e.name for e in os.scandir(os.path.join(cgroup_root, rel)) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for name in entries:
            # the entry alone names the container, if any, by its 64-hex id: no shorter one can
            owner = cgroups.parse_path(name) if len(name) >= 64 else None
            if owner is not None:
                found.setdefault(owner.id, f"{rel}/{name}")
            elif depth + 1 < _KUBEPODS_DEPTH:
                walk(f"{rel}/{name}", depth + 1)

    for top in _KUBEPODS:
        if os.path.isdir(os.path.join(cgroup_root, hierarchy, top)):
            walk(os.path.join(hierarchy, top), 0)
    return found


INIT_SEARCH = 32  # members whose parents are looked at, lowest pids first


def init_pid(proc: ProcFS, pids: Sequence[int]) -> Optional[int]:
    """The container's init among its pids: the one whose parent (the runtime's shim) is
    outside the container; None when there is one pid or no parent says so.

    Short-lived children come and go and a reused pid can be lower than the init's, so
    the lowest pid is not the answer by itself. The first INIT_SEARCH pids are looked at.
    """
    ordered = sorted(pids)
    if len(ordered) < 2:
        return None
    inside = set(ordered)
    for pid in ordered[:INIT_SEARCH]:
        parent = proc.parent_pid(pid)
        if parent is not None and parent not in inside:
            return pid
    return None


# (container, other container) pairs warned about: a run is one process (cron, the DaemonSet's
# loop runs the command anew), and the /proc scan and the resolver both see the conflict.
_WARNED: Set[Tuple[str, str]] = set()


def warn_conflicts(pid: int, found: cgroups.Attribution, seen: Optional[Set[Tuple[str, str]]] = None) -> None:
    """One warning per run for each (container, other container) pair that a process's cgroup
    names at once; ``seen`` holds the pairs warned about already (the run's, by default)."""
    seen = _WARNED if seen is None else seen
    if found.owner is None:
        return
    for other in sorted(found.others):
        pair = (found.owner.id, other)
        if pair in seen:
            continue
        seen.add(pair)
        log.warning("container %s: process %d is in a cgroup that also names container %s (%s): "
                    "counted as %s's, the outer one; %s keeps its own",
                    found.owner.id[:12], pid, other[:12], found.place, found.owner.id[:12], other[:12])


class PidResolver:
    """Resolves pids for many containers, fast paths first, inspect as the fallback."""

    def __init__(
        self,
        proc: ProcFS,
        cgroup_root: str = DEFAULT_CGROUP_ROOT,
        run_root: str = DEFAULT_RUN_ROOT,
        inspect: Optional[Inspect] = None,
        inspect_workers: int = 4,
    ) -> None:
        self.proc = proc
        self.cgroup_root = cgroup_root
        self.run_root = run_root
        self.inspect = inspect
        self.inspect_workers = inspect_workers
        self._layout: Optional[Tuple[str, ...]] = None
        self._pods: Dict[str, Dict[str, str]] = {}  # hierarchy -> pod_cgroups()
        self._last_hit: Optional[_Key] = None

    def belongs(self, pid: int, container_id: str) -> bool:
        """True if /proc/<pid>/cgroup names the container id by the outermost rule (cgroups.py);
        False once the process is gone."""
        try:
            found = cgroups.attribute(self.proc.read_cgroup(pid))
        except ContainerNetstatError:
            return False
        warn_conflicts(pid, found)
        return found.owner is not None and found.owner.id == container_id

    def still_owned(self, container_id: str, pid: int) -> bool:
        """True if ``pid`` is still the container's: call it after opening the pid's namespace.

        Between the resolution and the read the pid may exit and be reused by another
        process, maybe of another container; one read of /proc/<pid>/cgroup (a few hundred
        bytes) made after the namespace was opened tells. A namespace opened through a pid
        that fails this check is not the container's: drop what was read from it.
        """
        return self.belongs(pid, container_id)

    @property
    def layout(self) -> Tuple[str, ...]:
        """The hierarchies to try (``detect_layout``), found once per resolver: once per run."""
        if self._layout is None:
            self._layout = detect_layout(self.cgroup_root)
            log.debug("cgroup layout under %s: %s", self.cgroup_root, ", ".join(h or "cgroup2" for h in self._layout))
        return self._layout

    def _keys(self) -> Iterator[_Key]:
        for hierarchy in self.layout:
            for template in _CGROUP_DIRS:
                for qos in _QOS if "{pod" in template else ("",):
                    yield hierarchy, template, qos
        yield _INDEX

    def _place(self, key: _Key, container_id: str, pod_uid: str) -> Optional[str]:
        """Where ``key`` puts the container's cgroup, or None if it cannot say."""
        if key == _INDEX:
            # Hierarchy by hierarchy, each listed once: on a hybrid host a runtime on cgroup2
            # has its pods in unified/ only, beside another's in the v1 hierarchies.
            for hierarchy in self.layout:
                if hierarchy not in self._pods:
                    self._pods[hierarchy] = pod_cgroups(self.cgroup_root, hierarchy)
                    log.debug("%d containers under the pod cgroups in %s",
                              len(self._pods[hierarchy]), os.path.join(self.cgroup_root, hierarchy))
                if container_id in self._pods[hierarchy]:
                    return self._pods[hierarchy][container_id]
            return None
        hierarchy, template, qos = key
        if "{pod" in template and not pod_uid:
            return None
        qosd = f"kubepods-{qos[:-1]}.slice/kubepods-{qos[:-1]}-" if qos else "kubepods-"
        return os.path.join(hierarchy, template).format(
            id=container_id, qos=qos, pod=pod_uid, qosd=qosd, podu=pod_uid.replace("-", "_"),
        )

    def _cgroup_candidates(self, container_id: str, pod_uid: str) -> Iterator[Tuple[_Key, str]]:
        """(key, directory) to try, the place of the last hit first; the pod index comes last
        and is built only when a container is found nowhere else (one without its pod uid)."""
        first = self._last_hit
        for key in ([first] if first else []) + [k for k in self._keys() if k != first]:
            rel = self._place(key, container_id, pod_uid)
            if rel is not None:
                yield key, rel

    def from_cgroup(self, container_id: str, pod_uid: str = "") -> Optional[int]:
        """A pid listed in the container's cgroup.procs, checked against /proc/<pid>/cgroup."""
        for key, rel in self._cgroup_candidates(container_id, pod_uid):
            pids = _read_pids(os.path.join(self.cgroup_root, rel, "cgroup.procs"))
            init = init_pid(self.proc, pids)
            if init is not None:  # short-lived children come and go: try the init first
                pids = [init] + [p for p in pids if p != init]
            for pid in pids[:8]:
                if self.belongs(pid, container_id):
                    self._last_hit = key
                    return pid
            if pids:
                return None
        return None

    def from_pid_file(self, container_id: str) -> Optional[int]:
        """The runtime shim's init.pid (root-only), checked against /proc/<pid>/cgroup."""
        for template in _PID_FILES:
            path = os.path.join(self.run_root, template.format(id=container_id))
            pids = _read_pids(path)
            if not pids:
                continue
            pid = pids[0]
            if self.belongs(pid, container_id):
                return pid
            log.debug("stale pid file %s: pid %d is not in container %s", path, pid, container_id[:12])
        return None

    def resolve(
        self, containers: Sequence[tuple[str, str]], known: Optional[Mapping[str, int]] = None
    ) -> Dict[str, Resolved]:
        """Map container id -> Resolved for (id, pod_uid) pairs; ids that are gone are left out.

        ``known`` holds pids a discovery backend found in its /proc scan (discovery.py):
        each is used once /proc/<pid>/cgroup confirms it, before any other source.
        """
        found: Dict[str, Resolved] = {}
        missing: List[str] = []
        for container_id, pod_uid in containers:
            hint = (known or {}).get(container_id)
            if hint and self.belongs(hint, container_id):
                found[container_id] = Resolved(hint, "proc-scan")
                continue
            pid = self.from_cgroup(container_id, pod_uid)
            via = "cgroup"
            if pid is None:
                pid, via = self.from_pid_file(container_id), "pid-file"
            if pid is None:
                missing.append(container_id)
            else:
                found[container_id] = Resolved(pid, via)
        if missing and self.inspect is not None:
            from concurrent.futures import ThreadPoolExecutor  # only when the fast paths missed

            workers = max(1, min(self.inspect_workers, len(missing)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for container_id, pid in zip(missing, pool.map(self.inspect, missing)):
                    if pid:
                        found[container_id] = Resolved(pid, "inspect")
        for container_id, resolved in found.items():
            log.debug("container %s: pid %d from %s", container_id[:12], resolved.pid, resolved.via)
        return found

"""Which container a process belongs to, from its ``/proc/<pid>/cgroup`` text.

Pure: text in, a ``CgroupOwner`` (runtime, 64-hex container id, Kubernetes pod uid)
or None out; no file is opened here. Every line has the form
``hierarchy-id:controllers:path`` (cgroup v1 has one line per hierarchy, cgroup v2 a
single ``0::path``; hybrid hosts have both). Each runtime names the cgroup of a
container after its id, in one of these shapes (the sources are cited in
tests/test_cgroups.py, one table row each):

- Docker: ``/docker/<id>`` (cgroupfs driver), ``/system.slice/docker-<id>.scope``
  (systemd driver); cgroup v1 and v2 alike.
- containerd's CRI plugin: ``<pod cgroup>/<id>`` (cgroupfs), ``cri-containerd-<id>.scope``
  (systemd).
- CRI-O: ``<parent>/crio-<id>`` (cgroupfs), ``crio-<id>.scope`` (systemd); its conmon
  monitor sits beside it in ``crio-conmon-<id>``.
- Podman: ``/libpod_parent/libpod-<id>`` (cgroupfs), ``libpod-<id>.scope`` (systemd);
  conmon in ``libpod-conmon-<id>.scope`` or ``<parent>/conmon``.
- Kubernetes pod cgroups: ``/kubepods/<qos>/pod<uid>/`` (cgroupfs) or
  ``kubepods-<qos>-pod<uid with _ for ->.slice`` (systemd).

The OUTERMOST component that names a container wins, so a runtime's sub-cgroup under a
container (crun's ``.../libpod-<id>.scope/container``, systemd's ``init.scope`` in a
container) still maps to the container, and so does any cgroup a container makes below
its own: with cgroup delegation, a privileged container or a writable cgroupfs, a tenant
can create ``/docker/<A>/docker/<B>`` inside its cgroup ``/docker/<A>``, but that names
no other container than A (docs/security.rst). The price: a container run inside another
one (Docker in Docker) is counted as part of the outer container. A process whose text
names two containers is still the outer one's; ``attribute`` says which others it names,
so the callers can warn. A reader in another cgroup namespace sees the paths relative to
its own root, e.g. ``0::/../../kubepods.slice/...``: the ``..`` components are skipped like
any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

DOCKER = "docker"
CONTAINERD = "containerd"
CRIO = "cri-o"
PODMAN = "podman"
UNKNOWN = ""  # a bare id under a Kubernetes pod cgroup: containerd, cri-dockerd...

_ID = r"(?P<id>[0-9a-f]{64})"
# (runtime, component pattern); a runtime of None marks a runtime's monitor process
# (conmon), which is not part of the container although its cgroup names the id.
_COMPONENTS = (
    (None, re.compile(rf"(?:crio|libpod)-conmon-{_ID}(?:\.scope)?|conmon")),
    (DOCKER, re.compile(rf"docker-{_ID}\.scope")),
    (CONTAINERD, re.compile(rf"cri-containerd-{_ID}\.scope")),
    (CRIO, re.compile(rf"crio-{_ID}(?:\.scope)?")),
    (PODMAN, re.compile(rf"libpod-{_ID}(?:\.scope)?")),
    (UNKNOWN, re.compile(_ID)),
)
# cgroupfs: pod<uid>; systemd: kubepods[-<qos>]-pod<uid, '-' written as '_'>.slice
_POD = re.compile(r"(?:kubepods(?:-[a-z]+)?-)?pod(?P<uid>[0-9a-fA-F][0-9a-fA-F_-]{7,})(?:\.slice)?")


@dataclass(frozen=True)
class CgroupOwner:
    """The container a process's cgroup names, and its Kubernetes pod when it has one."""

    runtime: str
    id: str
    pod_uid: str = ""


def _pod_uid(components: Iterable[str]) -> str:
    for component in components:
        match = _POD.fullmatch(component)
        if match:
            return match.group("uid").replace("_", "-")
    return ""


def _named(components: Sequence[str]) -> Iterator[Tuple[int, Optional[CgroupOwner]]]:
    """(depth, owner) of every component that names a container, outermost first; the owner
    is None for a runtime's monitor (conmon)."""
    for depth, component in enumerate(components):
        for runtime, pattern in _COMPONENTS:
            match = pattern.fullmatch(component)
            if not match:
                continue
            if runtime is None:
                yield depth, None
            else:
                if runtime == UNKNOWN and depth > 0 and components[depth - 1] == "docker":
                    runtime = DOCKER
                yield depth, CgroupOwner(runtime, match.group("id"), _pod_uid(components[:depth]))
            break


def _owner_at(components: Sequence[str]) -> Optional[Tuple[int, CgroupOwner]]:
    """The outermost component that names a container, and its owner; None as in parse_path."""
    for depth, owner in _named(components):
        return (depth, owner) if owner is not None else None
    return None


def _components(path: str) -> List[str]:
    return [c for c in path.split("/") if c and c != ".."]


def parse_path(path: str) -> Optional[CgroupOwner]:
    """The container named by one cgroup path, or None (host process, conmon, kernel thread)."""
    found = _owner_at(_components(path))
    return found[1] if found else None


def container_dirs(text: str, container_id: str) -> List[Tuple[str, str]]:
    """(controllers, the container's own cgroup path) for each line of a ``/proc/<pid>/cgroup``
    text that names ``container_id``, in the file's order.

    The path ends at the component that names the container, so a process in a sub-cgroup
    (crun's ``.../container``, systemd's ``init.scope``) gives its container's cgroup, under
    which every process of the container is. controllers is ``""`` for the cgroup v2 line
    (``0::``), else the v1 hierarchy's list as printed (``pids``, ``cpu,cpuacct``,
    ``name=systemd``). ``..`` components are dropped, as in ``parse_path``.
    """
    found: List[Tuple[str, str]] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        components = _components(parts[2])
        owner = _owner_at(components)
        if owner is not None and owner[1].id == container_id:
            found.append((parts[1], "/".join(components[: owner[0] + 1])))
    return found


@dataclass(frozen=True)
class Attribution:
    """Whose a ``/proc/<pid>/cgroup`` text is, and what else it names.

    ``owner``: as ``parse``. ``place``: the owner's cgroup, the winning line's path up to
    the component that names it (``docker/<id>``), which tells two cgroups that claim one id
    apart. ``others``: the ids of other containers the text names, deeper in a path or on
    another line; not empty only where someone made a cgroup after another container.
    """

    owner: Optional[CgroupOwner]
    place: str = ""
    others: FrozenSet[str] = frozenset()


# A run checks each container's pid up to three times (the resolution, after the namespace's
# key, with the namespace held open: pids.py, namespaces.py); every check reads the file
# again, and the same text gives the same (immutable) answer without being parsed again.
@lru_cache(maxsize=1024)
def attribute(text: str) -> Attribution:
    """The owner of a ``/proc/<pid>/cgroup`` text by the outermost rule, on the first line that
    names a container (the v1 hierarchies come before ``0::``, as the kernel prints them)."""
    owner: Optional[CgroupOwner] = None
    place = ""
    named: List[str] = []
    # cgroup v1 repeats one path on a dozen lines: each distinct path is looked at once.
    paths: Dict[str, Tuple[List[str], List[Tuple[int, Optional[CgroupOwner]]]]] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        known = paths.get(parts[2])
        if known is None:
            components = _components(parts[2])
            known = paths[parts[2]] = (components, list(_named(components)))
        components = known[0]
        first = True
        for depth, found in known[1]:
            if found is None:
                break  # a monitor's cgroup: nothing at or below it is a container's
            if first and owner is None:
                owner, place = found, "/".join(components[: depth + 1])
            first = False
            named.append(found.id)
    if owner is None:
        return Attribution(None)
    return Attribution(owner, place, frozenset(named) - {owner.id})


def parse(text: str) -> Optional[CgroupOwner]:
    """The container named by a ``/proc/<pid>/cgroup`` text; the first line that names one wins."""
    return attribute(text).owner

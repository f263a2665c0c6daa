"""Every process of a container: the pids in its cgroup and in the cgroups nested below it.

The pid resolver (``pids``) finds one pid per container, which is enough to read a
namespace; a container on the host network needs all of them, since its sockets are
the ones its processes hold. They come from the cgroup tree:

- the container's cgroup is named by any of its processes' ``/proc/<pid>/cgroup``
  (``cgroups.container_dirs``): the path up to the component that names the id;
- under the cgroup root that path is a directory in the v2 hierarchy (``<root>`` on a
  unified host, ``<root>/unified`` on a hybrid one) or in each v1 hierarchy
  (``<root>/<controllers>``, ``<root>/systemd`` for ``name=systemd``);
- its ``cgroup.procs`` and those of every directory below it list the container's
  processes (Documentation/admin-guide/cgroup-v2.rst "cgroup.procs": thread group ids,
  unordered, possibly repeated; cgroup-v1/cgroups.rst the same for v1).

The known pid must be among those found; if it is not (a cgroup namespace that hides
the path, another layout), or no directory exists, the container's members come from
one scan of ``/proc/*/cgroup`` (``discovery.scan``), made at most once per run. The
proc and podman backends have made that scan already and may hand it in as ``known``.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from container_netstat import cgroups, discovery
from container_netstat.errors import ContainerNetstatError
from container_netstat.procfs import ProcFS

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
# v1 hierarchies that every container joins, tried after the v2 one, before the rest.
_PREFERRED_V1 = ("pids", "memory", "name=systemd")


class MembersUnknown(ContainerNetstatError):
    """Neither the cgroup tree nor a /proc scan lists the container's processes."""


def _mount_dirs(controllers: str) -> List[str]:
    """Where a hierarchy is mounted under the cgroup root, by the controllers /proc prints."""
    if controllers == "":
        return ["", "unified"]
    if controllers.startswith("name="):
        return [controllers[len("name="):]]
    names = controllers.split(",")
    return [controllers] + (names if len(names) > 1 else [])


def _order(dirs: Sequence[tuple[str, str]]) -> List[tuple[str, str]]:
    rank = {c: n for n, c in enumerate(("",) + _PREFERRED_V1)}
    return sorted(dirs, key=lambda d: rank.get(d[0], len(rank)))


def read_procs(path: str) -> Optional[List[int]]:
    """The pids of one cgroup.procs file (all of it, however long); None if it is gone."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return [int(tok) for tok in data.split() if tok.isdigit()]


def walk(top: str) -> Optional[List[int]]:
    """The pids in ``top``'s cgroup.procs and in those of every cgroup below it, each once.

    None if ``top`` is not a cgroup directory. A sub-cgroup removed during the walk is
    skipped: its processes have moved or exited.
    """
    found = read_procs(os.path.join(top, "cgroup.procs"))
    if found is None:
        return None
    pids = set(found)
    stack = [top]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for sub in subdirs:
            pids.update(read_procs(os.path.join(sub, "cgroup.procs")) or ())
        stack.extend(subdirs)
    return sorted(pids)


class MemberFinder:
    """Finds every process of a container, from one process known to be in it."""

    def __init__(
        self,
        proc: ProcFS,
        cgroup_root: str = DEFAULT_CGROUP_ROOT,
        known: Optional[Mapping[str, Iterable[int]]] = None,
    ) -> None:
        self.proc = proc
        self.cgroup_root = cgroup_root
        self._scanned: Optional[Dict[str, List[int]]] = (
            {cid: sorted(set(pids)) for cid, pids in known.items()} if known is not None else None
        )
        self.sources: Dict[str, str] = {}  # container id -> "cgroup <dir>" or "proc-scan"

    def pids(self, container_id: str, pid: int) -> List[int]:
        """Every pid of the container that ``pid`` belongs to, lowest first.

        ProcessGone if ``pid`` has exited (its cgroup file is gone); MembersUnknown if no
        source lists the container.
        """
        if self._scanned is not None and container_id in self._scanned:
            self.sources[container_id] = "proc-scan"
            return self._scanned[container_id]
        text = self.proc.read_cgroup(pid)
        for controllers, rel in _order(cgroups.container_dirs(text, container_id)):
            for mount in _mount_dirs(controllers):
                top = os.path.join(self.cgroup_root, mount, rel)
                found = walk(top)
                if found and pid in found:
                    self.sources[container_id] = f"cgroup {top}"
                    return found
        return self._from_scan(container_id)

    def _from_scan(self, container_id: str) -> List[int]:
        if self._scanned is None:
            self._scanned = {cid: sorted(m.pid for m in members) for cid, members in discovery.scan(self.proc).items()}
        found = self._scanned.get(container_id)
        if not found:
            raise MembersUnknown(f"container {container_id[:12]}: no process found in its cgroup or in {self.proc.root}")
        self.sources[container_id] = "proc-scan"
        return found

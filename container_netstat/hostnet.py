"""Host-network containers and pods: the sockets their own processes hold.

A container on the host network shares the host's namespace, so the namespace's files
(sockstat, snmp, netstat) and its full socket list are the host's, not the container's.
What is the container's own is the sockets its processes hold:

1. its processes: every pid in its cgroup and below (``members``);
2. their sockets: ``readlink /proc/<pid>/fd/*`` gives ``socket:[<inode>]`` for a socket
   (net/socket.c ``sockfs_dname``); reading another process's fds needs ptrace read
   access to it (fs/proc/fd.c ``proc_fd_permission``, fs/proc/base.c
   ``proc_fd_access_allowed``; kernel/ptrace.c ``__ptrace_may_access``): CAP_SYS_PTRACE
   for a process of another uid or with capabilities we lack;
3. the host namespace's TCP and UDP sockets with their inodes: one sock_diag dump
   (``tcp_reader.TcpReader.sockets``), or the inode column of /proc/net/tcp{,6} and udp{,6};
4. a container's figures are the summary (``tcp_summary.summarize``) of the host's TCP
   sockets whose inode its processes hold, and the count of its UDP ones.

What cannot be attributed: TIME_WAIT mini-sockets, request sockets (SYN_RECV) and
orphans have inode 0, since no process holds them (net/ipv4/inet_diag.c
``inet_twsk_diag_fill`` and ``inet_req_diag_fill`` report inode 0; a closed socket has
no file left, include/net/sock.h ``sock_orphan``, ``sock_i_ino``). A connection waiting
in a listener's accept queue has no file either until ``accept()`` (``sock_graft``): it
shows in the listener's queue, not as a socket of its own.
So these figures have no TIME_WAIT, SYN_RECV or orphan count, and port pressure here
leaves TIME_WAIT out.

Sharing: a socket held by two containers (inherited across fork, passed with
SCM_RIGHTS) counts once in each; a pod counts the union of its containers' sockets, each
socket once; processes outside every container are attributed to none.

Limits: fds are read only for the containers given here (the host-network ones).
``fd_cap`` (``--hostnet-fd-cap``) is a budget for the whole run, not per process: every fd
of every group counts against it, so a tenant cannot multiply it by starting many
processes. Groups are read in the order given; the group during which the budget runs out
and every group not read yet are left out of the run, never counted in part, with one
warning naming them (listed for ``doctor`` as over the cap). The run's deadline
(deadline.py), when given, ends the scan the same way. A group any of whose processes
refuses us its fds is skipped: one info line per run, listed for ``doctor``; that is not
a failed container.

A group's processes are those of its containers' cgroups and the cgroups below them; a
cgroup a tenant makes below its own, named after another container, is still its own
(cgroups.py, docs/security.rst), so it cannot lend its sockets to another container or
take another's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from container_netstat import tcp_summary, sockdiag
from container_netstat.tcp_summary import TcpSocket
from container_netstat.records import Container, Figures, GroupStats, Report
from container_netstat.errors import ContainerNetstatError, ProcessGone, ProcReadError
from container_netstat.cgroup_members import MemberFinder
from container_netstat.deadline import Deadline
from container_netstat.tcp_reader import TCP, UDP, Selection, TcpReader
from container_netstat.procfs import ProcFS
from container_netstat.records import Tags

log = logging.getLogger(__name__)

FD_CAP = 65536  # open fds read in one run, over every group and process
TIME_WAIT = 6
OWN_NETNS = "/proc/thread-self/net/sockstat"  # this thread's namespace, as ProcFS.netns_key sees one


class FdsNotPermitted(ContainerNetstatError):
    """The process's fd directory or one of its links was refused (no ptrace read access)."""

    def __init__(self, pid: int, path: str, strerror: str) -> None:
        super().__init__(f"{path}: {strerror}: needs ptrace access (CAP_SYS_PTRACE)")
        self.pid = pid


class FdCapExceeded(ContainerNetstatError):
    """The process has more open fds than the budget has left: its group is left out."""

    def __init__(self, pid: int, cap: int) -> None:
        super().__init__(f"process {pid} has more than {cap} open fds, what the run's fd budget had left")
        self.pid = pid


def parse_fd_link(target: str) -> Optional[int]:
    """The inode of a ``socket:[<inode>]`` fd link; None for any other file."""
    if target[:8] == "socket:[" and target[-1:] == "]" and target[8:-1].isdigit():
        return int(target[8:-1])
    return None


def _fd_error(pid: int, path: str, err: OSError) -> ContainerNetstatError:
    """A failed fd listing or readlink: the process is gone, not ours to read, or unreadable."""
    if isinstance(err, (FileNotFoundError, ProcessLookupError)):
        return ProcessGone(pid, path)
    if isinstance(err, PermissionError):
        return FdsNotPermitted(pid, path, err.strerror or "permission denied")
    return ProcReadError(f"{path}: {err.strerror or err}")


def socket_inodes(proc: ProcFS, pid: int, cap: int = FD_CAP) -> FrozenSet[int]:
    """The inodes of the sockets one process holds, from ``readlink /proc/<pid>/fd/*``.

    ``read_fds`` without the count.
    """
    return read_fds(proc, pid, cap)[0]


def read_fds(proc: ProcFS, pid: int, cap: int = FD_CAP) -> Tuple[FrozenSet[int], int]:
    """(the inodes of the sockets one process holds, how many fds were listed).

    ProcessGone if the process exits before or while its fds are read (its fds are then
    closed); FdsNotPermitted without ptrace access; FdCapExceeded past ``cap`` open fds:
    the listing stops there, so a process with a million fds costs no more than the cap.
    """
    path = proc.path(pid, "fd")
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise _fd_error(pid, path, err) from err
    inodes: Set[int] = set()
    closed = 0
    count = 0
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                count += 1
                if count > cap:
                    raise FdCapExceeded(pid, cap)
                try:
                    target = os.readlink(entry.name, dir_fd=dir_fd)
                except (FileNotFoundError, ProcessLookupError):
                    closed += 1  # closed since the listing, or the process exited
                    continue
                inode = parse_fd_link(target)
                if inode is not None:
                    inodes.add(inode)
    except OSError as err:
        raise _fd_error(pid, path, err) from err
    finally:
        os.close(dir_fd)
    if closed and proc.is_gone(pid):
        raise ProcessGone(pid, path)  # its fds were closed under us: none of it counts
    return frozenset(inodes), count


@dataclass(frozen=True)
class HostSockets:
    """The host namespace's sockets, by inode, and how they were read."""

    tcp: Mapping[int, TcpSocket]  # inode -> socket; inode 0 left out
    udp: FrozenSet[int]
    path: str  # tcp_reader.SOCK_DIAG or tcp_reader.PROC


def index(tcp: Iterable[TcpSocket], udp: Iterable[TcpSocket], path: str) -> HostSockets:
    """Index a namespace's sockets by inode; a socket listed twice (it moved between the
    kernel's tables during the walk) is kept once."""
    return HostSockets({s.inode: s for s in tcp if s.inode}, frozenset(s.inode for s in udp if s.inode), path)


def attribute(inodes: AbstractSet[int], host: HostSockets) -> Figures:
    """The figures of a holder of ``inodes`` (sockets of any kind; others are ignored)."""
    tcp = [host.tcp[i] for i in inodes if i in host.tcp]
    return Figures(tcp_summary.summarize(tcp), len(tcp), sum(1 for i in inodes if i in host.udp))


# TIME_WAIT is not asked for: its mini-sockets have inode 0 and are often most of a busy
# host's TCP table. Request sockets come with SYN_RECV, which a real socket can be in too.
HELD_STATES = sockdiag.STATE_MASK & ~(1 << TIME_WAIT)  # include/net/tcp_states.h TCP_TIME_WAIT


def read_host(reader: TcpReader, proc: ProcFS, pid: int, inodes: Optional[AbstractSet[int]] = None,
              own_netns: str = OWN_NETNS) -> HostSockets:
    """The sockets of ``pid``'s namespace (the host's), only those in ``inodes`` if given:
    dumped where we are when this thread is in it already, which needs no capability,
    else through ``reader``'s setns; /proc/net/* where sock_diag cannot be used."""
    key = proc.netns_key(pid)
    try:
        here = os.stat(own_netns).st_ino == key
    except OSError:
        here = False
    select = Selection(HELD_STATES, inodes)
    tcp, path = reader.sockets(pid, TCP, here=here, select=select)
    udp, udp_path = reader.sockets(pid, UDP, here=here, select=select)
    return index(tcp, udp, path if path == udp_path else f"{path} (TCP), {udp_path} (UDP)")


@dataclass(frozen=True)
class Group:
    """A host-network container, or a pod, with each container's known pid."""

    owner: Container
    containers: Tuple[Tuple[Container, int], ...]
    tags: Tags


class _Skip(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _comm(proc: ProcFS, pid: int) -> str:
    try:
        with open(proc.path(pid, "comm"), encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


class _OverBudget(Exception):
    """The run's fd budget or its deadline ran out while reading a group."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _group_inodes(group: Group, finder: MemberFinder, proc: ProcFS, budget: int) -> Tuple[FrozenSet[int], int, int]:
    """The union of the inodes the group's processes hold, how many processes were read, and
    how many fds were listed (charged to the run's budget, of which ``budget`` is left)."""
    held: Set[int] = set()
    read = 0
    used = 0
    for container, pid in group.containers:
        try:
            pids = finder.pids(container.id, pid)
        except ProcessGone:
            continue  # exited: its sockets are closed; another container of the pod may be there
        except ContainerNetstatError as err:
            raise _Skip("failed", str(err)) from err
        for member in pids:
            try:
                inodes, count = read_fds(proc, member, budget - used)
            except ProcessGone:
                continue
            except FdsNotPermitted as err:
                raise _Skip("not_permitted", str(err)) from err
            except FdCapExceeded as err:
                raise _OverBudget(f"{err} ({_comm(proc, member)}, in container {container.name})") from err
            except ContainerNetstatError as err:
                raise _Skip("failed", str(err)) from err
            held.update(inodes)
            used += count
            read += 1
    if not read:
        raise _Skip("gone", "exited during the run")
    return frozenset(held), read, used


def read_groups(
    groups: Sequence[Group],
    reader: TcpReader,
    proc: ProcFS,
    finder: MemberFinder,
    host_pid: int,
    fd_cap: int = FD_CAP,
    own_netns: str = OWN_NETNS,
    deadline: Optional[Deadline] = None,
) -> Report:
    """Read every group's fds, then the host's sockets once, and attribute; see the docstring.

    ``fd_cap`` is the run's budget of fds over every group; ``deadline``, when given, ends
    the fd scan once it has passed. Either way the rest is left out with one warning.
    """
    held: List[Tuple[Group, FrozenSet[int], int]] = []
    skipped: Dict[str, List[Tuple[str, str]]] = {"not_permitted": [], "over_cap": [], "gone": [], "failed": []}
    budget = fd_cap
    stopped = ""
    for n, group in enumerate(groups):
        try:
            if deadline is not None and deadline.expired():
                raise _OverBudget("the run's deadline was reached")
            inodes, read, used = _group_inodes(group, finder, proc, budget)
        except _Skip as skip:
            skipped[skip.kind].append((group.owner.name, skip.reason))
            continue
        except _OverBudget as over:
            stopped = over.reason
            skipped["over_cap"] += [(g.owner.name, over.reason if g is group else "not read: the run's fd budget "
                                     "or deadline ran out before it") for g in groups[n:]]
            break
        budget -= used
        held.append((group, inodes, read))
    if stopped:
        names = [name for name, _ in skipped["over_cap"]]
        log.warning("host-network sockets: %s; left out of this run, not counted in part: %s",
                    stopped, ", ".join(f"container {name}" for name in names))
    for name, _ in skipped["gone"]:
        log.warning("container %s: exited during the run; skipped", name)
    for name, reason in skipped["failed"]:
        log.error("container %s: cannot read its host-network sockets: %s", name, reason)
    if skipped["not_permitted"]:
        names = [n for n, _ in skipped["not_permitted"]]
        log.info("host-network sockets: %d container(s) skipped, not permitted to read their fds (%s): %s",
                 len(names), skipped["not_permitted"][0][1], ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
    sources = {c.name: finder.sources[c.id] for g in groups for c, _ in g.containers if c.id in finder.sources}
    report = Report(
        not_permitted=tuple(skipped["not_permitted"]),
        over_cap=tuple(skipped["over_cap"]),
        gone=tuple(n for n, _ in skipped["gone"]),
        failed=tuple(skipped["failed"]),
        sources=sources,
    )
    if not held:
        return report
    try:
        host = read_host(reader, proc, host_pid, frozenset().union(*(i for _, i, _ in held)), own_netns)
    except ContainerNetstatError as err:
        log.error("host-network sockets: cannot read the host's sockets: %s", err)
        return replace(report, failed=report.failed + tuple((g.owner.name, str(err)) for g, _, _ in held))
    stats = [
        GroupStats(
            owner=group.owner,
            members=tuple(sorted(c.name for c, _ in group.containers)),
            tags=group.tags,
            pids=read,
            figures=attribute(inodes, host),
        )
        for group, inodes, read in held
    ]
    return replace(report, groups=tuple(sorted(stats, key=lambda s: s.tags)), path=host.path)

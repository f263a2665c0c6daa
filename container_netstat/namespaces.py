"""Containers -> one set of /proc/<pid>/net readings per network namespace.

Containers that share a namespace (a Kubernetes pod's containers join its pause
container; ``--network container:X``) are read once and reported under one owner.
Host-network containers have no namespace of their own: its figures would be the
host's, so they are never reported as a namespace. With the ``hostnet`` group each of
them (a pod once, with the containers that join it) reports the sockets its own
processes hold instead (hostnet.py), under metric names of their own.
One container that cannot be read never fails the run: it is counted instead.

Namespaces are read by a few worker threads (``workers``; 1 reads them one after the
other, still off the main thread): each enters a namespace only for its sock_diag dump
and comes back (tcp_reader.py), and recv gives up the GIL while the kernel walks its
table, so dumps overlap. The results are merged in the containers' order, so the output
does not depend on which thread was first. A namespace whose dump fails loses its TCP
states only; namespaces the run's deadline did not leave time for are listed as late.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from types import TracebackType
from typing import AbstractSet, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from container_netstat import tcp_summary, procnet, settings
from container_netstat.deadline import Deadline, OutOfTime
from container_netstat.errors import ContainerNetstatError, ProcessGone
from container_netstat.kubernetes import POD_UID
from container_netstat.metrics import DEFAULT_GROUPS, HOSTNET, STATES, BASIC, COUNTERS
from container_netstat.pids import PidResolver, Resolved
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, HostStats, NetnsStats, Readings, Report, Snapshot, Tags, TcpPath, TcpReading
from container_netstat.tcp_reader import DumpFailed, HomeLost, TcpReader

log = logging.getLogger(__name__)

HOST_PID = 1
# How long past the deadline the run waits for a worker still in a dump (each recv is
# bounded by what is left of the deadline, so this is only scheduling slack).
JOIN_SLACK = 2.0

# The sections the metric catalogue reads; the rest of snmp/netstat (Ip, Icmp, IpExt,
# MPTcpExt: hundreds of fields) is dropped at once, not kept for every namespace.
SNMP_SECTIONS = ("Tcp", "Udp")
NETSTAT_SECTIONS = ("TcpExt",)
_parse_snmp = partial(procnet.parse_snmp, keep=SNMP_SECTIONS)
_parse_netstat = partial(procnet.parse_snmp, keep=NETSTAT_SECTIONS)


def identity_tags(members: Sequence[Container], owner: Container) -> Tags:
    """Series identity: (namespace, pod) for a Kubernetes pod, else the owner's name.

    Only tags that do not change when a pod's container set changes.
    """
    for container in [owner, *members]:
        if container.pod:
            namespace, pod = container.pod
            return (("namespace", namespace), ("pod", pod))
    return (("container", owner.name),)


def _pick_owner(roots: Sequence[Container]) -> Container:
    return sorted(roots, key=lambda c: (not c.is_sandbox, c.name))[0]


def _find(by_ref: Mapping[str, Container], containers: Sequence[Container], ref: str) -> Optional[Container]:
    """The container a ``container:<ref>`` network mode names: full id or name, else an id prefix."""
    found = by_ref.get(ref)
    if found is None and len(ref) >= 12:
        found = next((c for c in containers if c.id.startswith(ref)), None)
    return found


def read_host(proc: ProcFS) -> HostStats:
    """Read the host's namespace key and sockstat (from pid 1 under the proc root)."""
    path = proc.path(HOST_PID, "net", "sockstat")
    return HostStats(
        kernel_release=proc.kernel_release(),
        key=proc.netns_key(HOST_PID),
        sockstat=procnet.parse_sockstat(proc.read_net(HOST_PID, "sockstat"), path),
    )


def _parse(proc: ProcFS, pid: int, name: str, parser):  # type: ignore[no-untyped-def]
    return parser(proc.read_net(pid, name), proc.path(pid, "net", name))


def _tcp_sockets(sockstat: procnet.Sections, sockstat6: procnet.Sections, path: str) -> int:
    """TCP sockets of a namespace by sockstat: inuse (IPv4 and IPv6) and TIME_WAIT."""
    return (procnet.field(sockstat, "TCP", "inuse", path) + procnet.field(sockstat, "TCP", "tw", path)
            + sockstat6.get("TCP6", {}).get("inuse", 0))


def read_netns(
    proc: ProcFS, pid: int, groups: AbstractSet[str] = DEFAULT_GROUPS, tcp: Optional[TcpReader] = None,
    deadline: Optional[Deadline] = None, name: str = "", still_ours: Optional[Callable[[int], bool]] = None,
) -> Readings:
    """Read and parse what ``groups`` need from one pid's /proc/<pid>/net.

    sockstat6 and tcp6 are absent when IPv6 is disabled: then there are no IPv6 sockets.
    A namespace whose sockstat shows no TCP socket at all is not dumped: its states are zeros.
    A dump that fails (tcp_reader.DumpFailed, or no time left for it) leaves the states
    out, with the reason in ``tcp_missing``; the other figures are kept.
    """
    sockstat: procnet.Sections = {}
    sockstat6: procnet.Sections = {}
    snmp: procnet.Sections = {}
    netstat: procnet.Sections = {}
    states: Optional[TcpReading] = None
    missing = ""
    if BASIC in groups or STATES in groups:
        sockstat = _parse(proc, pid, "sockstat", procnet.parse_sockstat)
        if proc.has_net(pid, "sockstat6"):
            sockstat6 = _parse(proc, pid, "sockstat6", procnet.parse_sockstat)
    if BASIC in groups or COUNTERS in groups:
        snmp = _parse(proc, pid, "snmp", _parse_snmp)
    if COUNTERS in groups:
        netstat = _parse(proc, pid, "netstat", _parse_netstat)
    if STATES in groups:
        reader = tcp or TcpReader(proc)
        if _tcp_sockets(sockstat, sockstat6, proc.path(pid, "net", "sockstat")) == 0:
            states = TcpReading(tcp_summary.empty(), None, reader.path, skipped=True)
        else:
            try:
                states = reader.read(pid, deadline, name, still_ours)
            except (DumpFailed, OutOfTime) as err:
                missing = str(err) or type(err).__name__
    if BASIC not in groups:
        sockstat, sockstat6 = {}, {}
    return Readings(sockstat, sockstat6, snmp, netstat, states, missing)


@dataclass(frozen=True)
class _Outcome:
    """What reading one namespace gave, to be merged (and logged) by the main thread."""

    stats: Optional[NetnsStats] = None
    gone: bool = False
    failed: str = ""


_LATE = object()  # a task the deadline left no time for


class _Pool:
    """A few threads working through a list of tasks; results in the tasks' order.

    A worker whose task raises HomeLost stops at once (it may be in a container's
    namespace); that task is failed. If every worker stopped with tasks left, a fresh
    thread (started here, so in the run's namespace) goes on with them. On leaving, tasks
    not started are dropped and marked late, and the workers are waited for (until the
    deadline and a little slack).
    """

    def __init__(self, tasks: Sequence[Callable[[], _Outcome]], workers: int, deadline: Optional[Deadline]) -> None:
        self.tasks, self.workers, self.deadline = tasks, max(1, workers), deadline
        self.results: List[object] = [_LATE] * len(tasks)
        self.todo: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        for i in range(len(tasks)):
            self.todo.put(i)
        self.threads: List[threading.Thread] = []
        self.done = False

    def __enter__(self) -> "_Pool":
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], err: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._drain()
        if not self.done:
            self._join()

    def run(self) -> List[object]:
        while not self.todo.empty():
            if self.deadline is not None and self.deadline.expired():
                break
            count = min(self.workers, len(self.tasks)) if not self.threads else 1
            self.threads = [threading.Thread(target=self._work, name=f"netns-{i}", daemon=True) for i in range(count)]
            for thread in self.threads:
                thread.start()
            if not self._join():
                break
        self._drain()
        self.done = True
        return list(self.results)

    def _work(self) -> None:
        while True:
            try:
                i = self.todo.get_nowait()
            except queue.Empty:
                return
            if self.deadline is not None and self.deadline.expired():
                continue  # stays _LATE
            try:
                self.results[i] = self.tasks[i]()
            except HomeLost as err:
                self.results[i] = err
                return
            except Exception as err:  # noqa: BLE001 - one namespace never stops the run
                self.results[i] = err

    def _join(self) -> bool:
        """Wait for the workers; False if one is still busy past the deadline."""
        for thread in self.threads:
            if self.deadline is None:
                thread.join()
            else:
                thread.join(max(0.0, self.deadline.remaining()) + JOIN_SLACK)
        return not any(thread.is_alive() for thread in self.threads)

    def _drain(self) -> None:
        while True:
            try:
                self.todo.get_nowait()
            except queue.Empty:
                return


def _read_netns_of(proc: ProcFS, groups: AbstractSet[str], tcp: Optional[TcpReader], deadline: Optional[Deadline],
                   name: str, still_ours: Optional[Callable[[int], bool]], pid: int) -> Readings:
    """``read_netns`` with the pid last, for a ``partial`` made once per container."""
    return read_netns(proc, pid, groups, tcp, deadline, name, still_ours)


T = TypeVar("T")


def _retrying(resolver: PidResolver, container: Container, pid: int, read: Callable[[int], T]) -> Tuple[int, T]:
    """(pid, read(pid)); if the pid is gone the container may still run: resolve it once more.

    A pid from cgroup.procs can be a short-lived child that exits between the two reads.
    """
    try:
        return pid, read(pid)
    except ProcessGone:
        again = resolver.resolve([(container.id, container.labels.get(POD_UID, ""))]).get(container.id)
        if again is None or again.pid == pid:
            raise
        return again.pid, read(again.pid)


def _claimed_twice(roots: Sequence[Container]) -> AbstractSet[str]:
    """Ids that two records carry: claims of one id from two namespaces (discovery.claims)."""
    counts = Counter(c.id for c in roots)
    return {cid for cid, n in counts.items() if n > 1}


def _own_pid(resolver: PidResolver, container: Container) -> Optional[Resolved]:
    """A disputed id's record: its own pid, if that process is still the container's."""
    if container.pid and resolver.still_owned(container.id, container.pid):
        return Resolved(container.pid, "proc-scan")
    return None


def _owned_key(resolver: PidResolver, proc: ProcFS, container: Container, pid: int) -> int:
    """The pid's namespace key, once the pid is checked to be still the container's after
    the key was read: a pid reused in between (pids.PidResolver.still_owned) counts as gone."""
    key = proc.netns_key(pid)
    if not resolver.still_owned(container.id, pid):
        raise ProcessGone(pid, proc.path(pid, "cgroup"))
    return key


def read_namespaces(
    containers: Sequence[Container],
    resolver: PidResolver,
    proc: ProcFS,
    groups: AbstractSet[str] = DEFAULT_GROUPS,
    tcp: Optional[TcpReader] = None,
    scanned: Optional[Mapping[str, Iterable[int]]] = None,
    fd_cap: Optional[int] = None,
    deadline: Optional[Deadline] = None,
    workers: int = settings.DEFAULT_WORKERS,
    still_ours: Optional[Callable[[Container, int], bool]] = None,
) -> Snapshot:
    """Read every container namespace once; see the module docstring.

    ``tcp`` reads TCP states (probed by the caller); one is made here if the group is asked
    for without it. ``scanned``: every pid of each container, where the discovery backend
    has scanned them already (discovery.py); ``fd_cap`` bounds the hostnet group's fd reads
    (default hostnet.FD_CAP).
    ``deadline``: the run's; namespaces not started by then are in ``Snapshot.late``, and
    each dump takes its budget from it. ``workers``: threads reading namespaces (1: one
    after the other). ``still_ours(container, pid)``: asked with the pid's namespace held
    open, before its dump, whether the pid is still the container's (pid reuse); False
    counts as the pid gone; by default the pid's cgroup must still name the container
    (pids.PidResolver.still_owned).
    """
    if STATES in groups and tcp is None:
        tcp = TcpReader(proc)
        tcp.probe()
    if still_ours is None:
        still_ours = lambda container, pid: resolver.still_owned(container.id, pid)  # noqa: E731
    host = read_host(proc)
    gone: List[str] = []
    failed: List[Tuple[str, str]] = []
    host_network: List[str] = []

    roots: List[Container] = []
    host_roots: List[Container] = []
    joiners: Dict[str, List[Container]] = {}
    by_ref = {ref: c for c in containers for ref in (c.name, c.id)}
    for container in containers:
        if container.is_host_network:
            log.debug("container %s: host network: the host's namespace, not reported as a namespace",
                      container.name)
            host_network.append(container.name)
            host_roots.append(container)
            continue
        target = _find(by_ref, containers, container.joins) if container.joins else None
        if target is not None and target is not container:
            joiners.setdefault(target.id, []).append(container)
        else:
            roots.append(container)

    claimed = _claimed_twice(roots)
    resolved = resolver.resolve(
        [(c.id, c.labels.get(POD_UID, "")) for c in roots if c.id not in claimed],
        known={c.id: c.pid for c in roots if c.pid and c.id not in claimed},
    )
    by_key: Dict[int, List[Tuple[Container, int]]] = {}
    host_entries: List[Tuple[Container, int]] = []  # roots found in the host's namespace, with a pid
    for container in roots:
        found = resolved.get(container.id) if container.id not in claimed else _own_pid(resolver, container)
        if found is None:
            log.warning("container %s: exited during the run; skipped", container.name)
            gone.append(container.name)
            continue
        try:
            if container.id in claimed:  # never re-resolved by id: that may give the other claim's pid
                pid, key = found.pid, _owned_key(resolver, proc, container, found.pid)
            else:
                pid, key = _retrying(resolver, container, found.pid, partial(_owned_key, resolver, proc, container))
        except ProcessGone:
            log.warning("container %s: exited during the run; skipped", container.name)
            gone.append(container.name)
            continue
        except ContainerNetstatError as err:
            log.error("container %s: cannot read its network namespace: %s", container.name, err)
            failed.append((container.name, str(err)))
            continue
        if key == host.key:
            log.debug("container %s: in the host's network namespace, not reported as a namespace", container.name)
            host_network.append(container.name)
            host_entries.append((container, pid))
            continue
        by_key.setdefault(key, []).append((container, pid))

    tcp, groups, path = _tcp_decision(tcp, groups, by_key)
    resolve_lock = threading.Lock()  # the resolver is not known to be thread-safe

    def resolve_again(container: Container, pid: int, read: Callable[[int], Readings]) -> Tuple[int, Readings]:
        try:
            return pid, read(pid)
        except ProcessGone:
            with resolve_lock:
                again = resolver.resolve([(container.id, container.labels.get(POD_UID, ""))]).get(container.id)
            if again is None or again.pid == pid:
                raise
            return again.pid, read(again.pid)

    def task(key: int, entries: List[Tuple[Container, int]]) -> Callable[[], _Outcome]:
        def read_one() -> _Outcome:
            owner = _pick_owner([c for c, _ in entries])
            members = [c for c, _ in entries] + [j for c, _ in entries for j in joiners.get(c.id, [])]
            for container, pid in sorted(entries, key=lambda e: e[0] is not owner):
                ours = partial(still_ours, container) if still_ours is not None else None
                try:
                    pid, readings = resolve_again(
                        container, pid, partial(_read_netns_of, proc, groups, tcp, deadline, owner.name, ours))
                except ProcessGone:
                    continue  # another member may still be there
                except HomeLost:
                    raise  # this thread stops (_Pool)
                except ContainerNetstatError as err:
                    return _Outcome(failed=str(err))
                return _Outcome(NetnsStats(owner=owner, members=tuple(sorted(c.name for c in members)), pid=pid,
                                           key=key, tags=identity_tags(members, owner), readings=readings))
            return _Outcome(gone=True)
        return read_one

    keys = list(by_key.items())
    with _Pool([task(key, entries) for key, entries in keys], workers, deadline) as pool:
        results = pool.run()
    namespaces: List[NetnsStats] = []
    late: List[str] = []
    for (key, entries), result in zip(keys, results):
        owner = _pick_owner([c for c, _ in entries])
        names = sorted([c.name for c, _ in entries] + [j.name for c, _ in entries for j in joiners.get(c.id, [])])
        if len(names) > 1:
            log.debug("namespace %d: %s share it; owner %s", key, ", ".join(names), owner.name)
        if result is _LATE:
            late.append(owner.name)
        elif isinstance(result, _Outcome) and result.stats is not None:
            namespaces.append(result.stats)
            if result.stats.readings.tcp_missing:
                log.warning("container %s: TCP states left out of this run: %s", owner.name,
                            result.stats.readings.tcp_missing)
        elif isinstance(result, _Outcome) and result.gone:
            log.warning("container %s: exited during the run; skipped", owner.name)
            gone.append(owner.name)
        else:
            why = result.failed if isinstance(result, _Outcome) else f"{type(result).__name__}: {result}"
            log.error("container %s: %s", owner.name, why)
            failed.append((owner.name, why))
    if late:
        log.warning("%d namespace(s) not read: the run's deadline came first: %s", len(late),
                    ", ".join(late[:10]) + (", ..." if len(late) > 10 else ""))

    host_ids = {c.id for c in host_roots} | {c.id for c, _ in host_entries}
    host_joined = tuple(sorted((j.name, target.name) for target in containers if target.id in host_ids
                               for j in joiners.get(target.id, [])))
    for name, target_name in host_joined:
        log.debug("container %s: joins host-network container %s", name, target_name)
    report: Optional[Report] = None
    if HOSTNET in groups:
        report = _hostnet(host_roots, host_entries, joiners, resolver, proc, tcp or path, scanned, fd_cap, deadline)
        gone += report.gone
        failed += report.failed

    return Snapshot(
        host=host,
        namespaces=tuple(sorted(namespaces, key=lambda n: n.tags)),
        containers=len(containers),
        gone=tuple(gone),
        failed=tuple(failed),
        host_network=tuple(host_network),
        pid_sources={c.name: resolved[c.id].via for c in roots if c.id in resolved},
        tcp_path=_tcp_path(path, namespaces, STATES in groups),
        groups=frozenset(groups),
        host_joined=host_joined,
        hostnet=report,
        late=tuple(late),
    )


def _hostnet(
    host_roots: Sequence[Container],
    host_entries: Sequence[Tuple[Container, int]],
    joiners: Mapping[str, Sequence[Container]],
    resolver: PidResolver,
    proc: ProcFS,
    tcp: Optional[TcpReader],
    scanned: Optional[Mapping[str, Iterable[int]]],
    fd_cap: Optional[int],
    deadline: Optional[Deadline] = None,
) -> Report:
    """One hostnet group per host-network container with the containers that join it,
    merged by identity tags: a pod's containers (each on the host network, or joined to
    its sandbox) make one group."""
    # Imported here: only the hostnet group reads processes' fds.
    from container_netstat import hostnet
    from container_netstat.cgroup_members import MemberFinder

    wanted = [*host_roots, *(j for c in host_roots for j in joiners.get(c.id, [])),
              *(j for c, _ in host_entries for j in joiners.get(c.id, []))]
    resolved = resolver.resolve([(c.id, c.labels.get(POD_UID, "")) for c in wanted],
                                known={c.id: c.pid for c in wanted if c.pid}) if wanted else {}
    pids = {c.id: found.pid for c in wanted for found in [resolved.get(c.id)] if found is not None}
    pids.update((c.id, pid) for c, pid in host_entries)
    gone: List[str] = []
    by_tags: Dict[Tags, List[Tuple[Container, int]]] = {}
    for root in [*host_roots, *(c for c, _ in host_entries)]:
        if root.id not in pids:
            log.warning("container %s: exited during the run; skipped", root.name)
            gone.append(root.name)
            continue
        group = [root, *(j for j in joiners.get(root.id, []) if j.id in pids)]
        by_tags.setdefault(identity_tags(group, root), []).extend((c, pids[c.id]) for c in group)
    groups = [hostnet.Group(_pick_owner([c for c, _ in entries]), tuple(entries), tags)
              for tags, entries in by_tags.items()]
    reader = tcp
    if reader is None:
        reader = TcpReader(proc)
        reader.probe()
    finder = MemberFinder(proc, resolver.cgroup_root, known=scanned)
    report = hostnet.read_groups(groups, reader, proc, finder, HOST_PID, hostnet.FD_CAP if fd_cap is None else fd_cap,
                                 deadline=deadline)
    if tcp is None:
        reader.close()
    return replace(report, gone=(*gone, *report.gone))


def _tcp_decision(
    tcp: Optional[TcpReader], groups: AbstractSet[str], by_key: Mapping[int, List[Tuple[Container, int]]]
) -> Tuple[Optional[TcpReader], AbstractSet[str], Optional[TcpReader]]:
    """(reader, groups, reader to describe): sock_diag confirmed on the first namespace's pid,
    or the states left out when they were not asked for and only /proc could give them."""
    if tcp is None or STATES not in groups:
        return None, groups, tcp
    first = next((pid for entries in by_key.values() for _, pid in entries), None)
    why = tcp.confirm(first) if first is not None else tcp.unavailable
    if why is None:
        log.info("TCP states: sock_diag inside each network namespace")
    elif tcp.optional:
        log.info("TCP states: off (%s); --tcp-states reads them from /proc/<pid>/net/tcp{,6} at about "
                 "4-12x the cost of a run without them", why)
        return None, groups - {STATES}, tcp
    else:
        log.info("TCP states: from /proc/<pid>/net/tcp{,6} (%s): 4-12x the cost of a run without them", why)
    return tcp, groups, tcp


def _tcp_path(tcp: Optional[TcpReader], namespaces: Sequence[NetnsStats], read: bool) -> Optional[TcpPath]:
    if tcp is None:
        return None
    skipped = sum(1 for ns in namespaces if ns.readings.tcp is not None and ns.readings.tcp.skipped)
    return TcpPath(tcp.path, tcp.unavailable or "", read, tcp.request, tuple(tcp.fallbacks), skipped)

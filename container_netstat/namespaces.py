"""Containers -> one set of /proc/<pid>/net readings per network namespace.

Containers that share a namespace (a Kubernetes pod's containers join its pause
container; ``--network container:X``) are read once and reported under one owner.
Host-network containers have no namespace of their own: its figures would be the
host's, so they are never reported as a namespace. With the ``hostnet`` group each of
them (a pod once, with the containers that join it) reports the sockets its own
processes hold instead (hostnet.py), under metric names of their own.
One container that cannot be read never fails the run: it is counted instead.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import AbstractSet, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

from container_netstat import tcp_summary, hostnet, procnet
from container_netstat.cgroup_members import MemberFinder
from container_netstat.deadline import Deadline
from container_netstat.errors import ContainerNetstatError, ProcessGone
from container_netstat.kubernetes import POD_UID
from container_netstat.metrics import DEFAULT_GROUPS, HOSTNET, STATES, BASIC, COUNTERS
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, HostStats, NetnsStats, Readings, Report, Snapshot, Tags, TcpPath, TcpReading
from container_netstat.tcp_reader import TcpReader

log = logging.getLogger(__name__)

HOST_PID = 1

# The sections the metric catalogue reads; the rest of snmp/netstat (Ip, Icmp, IpExt,
# MPTcpExt: hundreds of fields) is dropped at once, not kept for every namespace.
SNMP_SECTIONS = ("Tcp", "Udp")
NETSTAT_SECTIONS = ("TcpExt",)


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


def _only(sections: procnet.Sections, keep: Tuple[str, ...]) -> procnet.Sections:
    return {name: fields for name, fields in sections.items() if name in keep}


def _tcp_sockets(sockstat: procnet.Sections, sockstat6: procnet.Sections, path: str) -> int:
    """TCP sockets of a namespace by sockstat: inuse (IPv4 and IPv6) and TIME_WAIT."""
    return (procnet.field(sockstat, "TCP", "inuse", path) + procnet.field(sockstat, "TCP", "tw", path)
            + sockstat6.get("TCP6", {}).get("inuse", 0))


def read_netns(
    proc: ProcFS, pid: int, groups: AbstractSet[str] = DEFAULT_GROUPS, tcp: Optional[TcpReader] = None
) -> Readings:
    """Read and parse what ``groups`` need from one pid's /proc/<pid>/net.

    sockstat6 and tcp6 are absent when IPv6 is disabled: then there are no IPv6 sockets.
    A namespace whose sockstat shows no TCP socket at all is not dumped: its states are zeros.
    """
    sockstat: procnet.Sections = {}
    sockstat6: procnet.Sections = {}
    snmp: procnet.Sections = {}
    netstat: procnet.Sections = {}
    states: Optional[TcpReading] = None
    if BASIC in groups or STATES in groups:
        sockstat = _parse(proc, pid, "sockstat", procnet.parse_sockstat)
        if proc.has_net(pid, "sockstat6"):
            sockstat6 = _parse(proc, pid, "sockstat6", procnet.parse_sockstat)
    if BASIC in groups or COUNTERS in groups:
        snmp = _only(_parse(proc, pid, "snmp", procnet.parse_snmp), SNMP_SECTIONS)
    if COUNTERS in groups:
        netstat = _only(_parse(proc, pid, "netstat", procnet.parse_snmp), NETSTAT_SECTIONS)
    if STATES in groups:
        reader = tcp or TcpReader(proc)
        if _tcp_sockets(sockstat, sockstat6, proc.path(pid, "net", "sockstat")) == 0:
            states = TcpReading(tcp_summary.empty(), None, reader.path, skipped=True)
        else:
            states = reader.read(pid)
    if BASIC not in groups:
        sockstat, sockstat6 = {}, {}
    return Readings(sockstat, sockstat6, snmp, netstat, states)


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


def read_namespaces(
    containers: Sequence[Container],
    resolver: PidResolver,
    proc: ProcFS,
    groups: AbstractSet[str] = DEFAULT_GROUPS,
    tcp: Optional[TcpReader] = None,
    scanned: Optional[Mapping[str, Iterable[int]]] = None,
    fd_cap: int = hostnet.FD_CAP,
    deadline: Optional[Deadline] = None,
    workers: int = 1,
) -> Snapshot:
    """Read every container namespace once; see the module docstring.

    ``tcp`` reads TCP states (probed by the caller); one is made here if the group is asked
    for without it. ``scanned``: every pid of each container, where the discovery backend
    has scanned them already (discovery.py); ``fd_cap`` bounds the hostnet group's fd reads.
    """
    if STATES in groups and tcp is None:
        tcp = TcpReader(proc)
        tcp.probe()
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

    resolved = resolver.resolve(
        [(c.id, c.labels.get(POD_UID, "")) for c in roots], known={c.id: c.pid for c in roots if c.pid}
    )
    by_key: Dict[int, List[Tuple[Container, int]]] = {}
    host_entries: List[Tuple[Container, int]] = []  # roots found in the host's namespace, with a pid
    for container in roots:
        found = resolved.get(container.id)
        if found is None:
            log.warning("container %s: exited during the run; skipped", container.name)
            gone.append(container.name)
            continue
        try:
            pid, key = _retrying(resolver, container, found.pid, proc.netns_key)
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
    namespaces: List[NetnsStats] = []
    late: List[str] = []
    for key, entries in by_key.items():
        owner = _pick_owner([c for c, _ in entries])
        if deadline is not None and deadline.expired():
            late.append(owner.name)
            continue
        members = [c for c, _ in entries] + [j for c, _ in entries for j in joiners.get(c.id, [])]
        names = tuple(sorted(c.name for c in members))
        if len(members) > 1:
            log.debug("namespace %d: %s share it; owner %s", key, ", ".join(names), owner.name)
        for container, pid in sorted(entries, key=lambda e: e[0] is not owner):
            try:
                pid, readings = _retrying(resolver, container, pid, lambda p: read_netns(proc, p, groups, tcp))
            except ProcessGone:
                continue  # another member may still be there
            except ContainerNetstatError as err:
                log.error("container %s: %s", owner.name, err)
                failed.append((owner.name, str(err)))
                break
            namespaces.append(
                NetnsStats(
                    owner=owner,
                    members=names,
                    pid=pid,
                    key=key,
                    tags=identity_tags(members, owner),
                    readings=readings,
                )
            )
            break
        else:
            log.warning("container %s: exited during the run; skipped", owner.name)
            gone.append(owner.name)

    host_ids = {c.id for c in host_roots} | {c.id for c, _ in host_entries}
    host_joined = tuple(sorted((j.name, target.name) for target in containers if target.id in host_ids
                               for j in joiners.get(target.id, [])))
    for name, target_name in host_joined:
        log.debug("container %s: joins host-network container %s", name, target_name)
    report: Optional[Report] = None
    if HOSTNET in groups:
        report = _hostnet(host_roots, host_entries, joiners, resolver, proc, tcp or path, scanned, fd_cap)
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
    fd_cap: int,
) -> Report:
    """One hostnet group per host-network container with the containers that join it,
    merged by identity tags: a pod's containers (each on the host network, or joined to
    its sandbox) make one group."""
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
    report = hostnet.read_groups(groups, reader, proc, finder, HOST_PID, fd_cap)
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

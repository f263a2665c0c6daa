"""The metric catalogue: groups, names, sources, types and meanings, and the samples of a run.

A metric whose field is per namespace only on some kernels names that field
(``scope_field``); kernel_scopes.py decides where it is emitted on the running kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Callable, List, Mapping, Optional, Tuple

from container_netstat import procnet
from container_netstat.tcp_summary import NEAR_FULL_PERCENT, STATE_NAMES, TcpSummary
from container_netstat.tcp_reader import SOCK_DIAG
from container_netstat.records import Figures, GroupStats, HostStats, NetnsStats, Readings, Sample, Snapshot
from container_netstat.errors import ContainerNetstatError, ParseError
from container_netstat.kernel_scopes import HOST, NETNS

log = logging.getLogger(__name__)

# What a run reads, by metric group: basic (sockstat, sockstat6, snmp), counters
# (snmp, netstat), states (one sock_diag dump inside the namespace, else tcp and tcp6:
# both walk the host-wide TCP hash table; see tcp_reader.py), hostnet (the fds of each
# host-network container's processes, and one dump of the host's sockets: hostnet.py).
BASIC, COUNTERS, STATES, HOSTNET = "basic", "counters", "states", "hostnet"
GROUPS = (BASIC, COUNTERS, STATES, HOSTNET)
DEFAULT_GROUPS = frozenset({BASIC, COUNTERS, STATES})

PREFIX = "container.net."
GAUGE = "GAUGE"
COUNTER = "COUNTER"

# A value, or None where the namespace has none (no listener; no backlog or port range
# on the /proc path): the sample is then left out, never reported as 0.
Getter = Callable[[Readings], Optional[int]]


@dataclass(frozen=True)
class Metric:
    """A catalogue entry: emitted name (without PREFIX), group, type, what it reads, meaning."""

    name: str
    group: str
    counter_type: str
    reads: str
    meaning: str
    get: Getter
    scope_field: Optional[str] = None
    optional: bool = False  # a field some kernels lack: skipped there, not an error


def _f(sections: procnet.Sections, section: str, name: str, path: str) -> int:
    return procnet.field(sections, section, name, path)


def _f6(sections: procnet.Sections, section: str, name: str) -> int:
    # sockstat6 is absent when IPv6 is disabled: no IPv6 sockets then.
    return sections.get(section, {}).get(name, 0)


def _counter(name: str, file: str, section: str, field: str, meaning: str) -> Metric:
    def get(r: Readings) -> int:
        return _f(r.snmp if file == "snmp" else r.netstat, section, field, file)

    return Metric(name, COUNTERS, COUNTER, f"{file} {section}: {field}", meaning, get, optional=True)


STATES_SOURCE = "sock_diag dump inside the namespace, else /proc/<pid>/net/tcp{,6}"


def _tcp(r: Readings) -> TcpSummary:
    if r.tcp is None:
        raise ParseError("tcp", "TCP states were not read")
    return r.tcp.summary


def _state(state: str) -> Metric:
    return Metric(
        f"tcp.state.{state}", STATES, GAUGE, STATES_SOURCE,
        f"TCP sockets in {state.upper()}" + (" (the number of listeners)" if state == "listen" else ""),
        lambda r: _tcp(r).states[state],
    )


def _listening(value: Callable[[TcpSummary], Optional[int]]) -> Getter:
    """A listener figure, left out for a namespace without a listener."""
    return lambda r: value(_tcp(r)) if _tcp(r).listeners else None


def _pressure(r: Readings) -> Optional[int]:
    """Port pressure in percent of the namespace's ephemeral range; 0 when no two sockets
    share a remote, whatever the range; None where the range is unknown (/proc path)."""
    summary, reading = _tcp(r), r.tcp
    assert reading is not None
    if reading.port_range:
        return summary.peer_max * 100 // reading.port_range
    return 0 if summary.peer_max == 0 and reading.path == SOCK_DIAG else None


NETNS_METRICS: Tuple[Metric, ...] = (
    Metric(
        "tcp.established", BASIC, GAUGE, "snmp Tcp: CurrEstab",
        "TCP connections in ESTABLISHED (and CLOSE_WAIT on kernels with commit a46d0ea5c942)",
        lambda r: _f(r.snmp, "Tcp", "CurrEstab", "snmp"),
    ),
    Metric(
        "tcp.inuse", BASIC, GAUGE, "sockstat TCP: inuse + sockstat6 TCP6: inuse",
        "TCP sockets in any state but TIME_WAIT (listeners included), IPv4 and IPv6",
        lambda r: _f(r.sockstat, "TCP", "inuse", "sockstat") + _f6(r.sockstat6, "TCP6", "inuse"),
    ),
    Metric(
        "tcp.timewait", BASIC, GAUGE, "sockstat TCP: tw",
        "TCP sockets in TIME_WAIT (and closed FIN_WAIT2, kept as timewait sockets), IPv4 and IPv6",
        lambda r: _f(r.sockstat, "TCP", "tw", "sockstat"), scope_field="tw",
    ),
    Metric(
        "udp.inuse", BASIC, GAUGE, "sockstat UDP: inuse + sockstat6 UDP6: inuse", "UDP sockets, IPv4 and IPv6",
        lambda r: _f(r.sockstat, "UDP", "inuse", "sockstat") + _f6(r.sockstat6, "UDP6", "inuse"),
    ),
    Metric(
        "sockets.used", BASIC, GAUGE, "sockstat sockets: used",
        "sockets of every family (TCP, UDP, unix, netlink...)",
        lambda r: _f(r.sockstat, "sockets", "used", "sockstat"), scope_field="sockets_used",
    ),
    _counter("tcp.active_opens", "snmp", "Tcp", "ActiveOpens", "connections opened by connect()"),
    _counter("tcp.passive_opens", "snmp", "Tcp", "PassiveOpens", "connections accepted"),
    _counter("tcp.attempt_fails", "snmp", "Tcp", "AttemptFails", "connection attempts that failed"),
    _counter("tcp.estab_resets", "snmp", "Tcp", "EstabResets", "ESTABLISHED/CLOSE_WAIT connections reset"),
    _counter("tcp.retrans_segs", "snmp", "Tcp", "RetransSegs", "segments retransmitted"),
    _counter("tcp.in_errs", "snmp", "Tcp", "InErrs", "segments received in error"),
    _counter("tcp.out_rsts", "snmp", "Tcp", "OutRsts", "segments sent with RST"),
    _counter("tcp.listen_overflows", "netstat", "TcpExt", "ListenOverflows", "accept queue full: connection dropped"),
    _counter("tcp.listen_drops", "netstat", "TcpExt", "ListenDrops", "SYNs to a listener dropped, any reason"),
    _counter("tcp.timeouts", "netstat", "TcpExt", "TCPTimeouts", "retransmission timer expiries"),
    _counter("tcp.abort_on_data", "netstat", "TcpExt", "TCPAbortOnData", "connections reset on unexpected data"),
    _counter("tcp.abort_on_close", "netstat", "TcpExt", "TCPAbortOnClose", "closed with unread data: reset"),
    _counter("tcp.abort_on_timeout", "netstat", "TcpExt", "TCPAbortOnTimeout", "connections dropped after retries ran out"),
    _counter("udp.in_errors", "snmp", "Udp", "InErrors", "datagrams that could not be delivered"),
    _counter("udp.rcvbuf_errors", "snmp", "Udp", "RcvbufErrors", "datagrams dropped: receive buffer full"),
    _counter("udp.sndbuf_errors", "snmp", "Udp", "SndbufErrors", "datagrams dropped: send buffer full"),
    _counter("udp.no_ports", "snmp", "Udp", "NoPorts", "datagrams to a port nobody listens on"),
    *(_state(state) for state in STATE_NAMES.values()),
    Metric(
        "tcp.orphan", STATES, GAUGE, STATES_SOURCE + ": inode 0 in FIN_WAIT1/2, CLOSE, LAST_ACK, CLOSING",
        "TCP sockets of this namespace no process holds (sockstat's orphan is host-wide)",
        lambda r: _tcp(r).states["orphan"],
    ),
    Metric(
        "tcp.listen.queue_max", STATES, GAUGE, STATES_SOURCE + ": a LISTEN socket's receive queue",
        "the longest accept queue of any listener: connections the application has not accepted yet",
        _listening(lambda t: t.queue_max),
    ),
    Metric(
        "tcp.listen.fill_max_pct", STATES, GAUGE, "sock_diag: LISTEN rqueue * 100 / wqueue (backlog; 0 counts as 1)",
        "the fullest listener's accept queue in percent of its backlog; above 100 SYNs are dropped",
        _listening(lambda t: t.fill_max_percent),
    ),
    Metric(
        "tcp.listen.near_full", STATES, GAUGE, f"sock_diag: listeners at or above {NEAR_FULL_PERCENT} % fill",
        f"listeners whose accept queue is at or above {NEAR_FULL_PERCENT} % of its backlog",
        _listening(lambda t: t.near_full),
    ),
    Metric(
        "tcp.ports.peer_max", STATES, GAUGE, STATES_SOURCE + ": sockets per remote (address, port)",
        "the most sockets (LISTEN left out, TIME_WAIT in) connected to one remote address and port",
        lambda r: _tcp(r).peer_max,
    ),
    Metric(
        "tcp.ports.pressure_pct", STATES, GAUGE,
        "tcp.ports.peer_max * 100 / the namespace's net.ipv4.ip_local_port_range (hi - lo + 1)",
        "how much of the ephemeral port range the busiest remote uses: at 100 connect() to it fails",
        _pressure,
    ),
)


@dataclass(frozen=True)
class HostnetMetric:
    """A hostnet catalogue entry: a figure of the sockets a host-network container holds."""

    name: str
    reads: str
    meaning: str
    get: Callable[[Figures], Optional[int]]
    counter_type: str = GAUGE


HOSTNET_SOURCE = "the host's sockets (sock_diag, else /proc/net/tcp{,6}) whose inode its processes hold (/proc/<pid>/fd)"
# TIME_WAIT and request (SYN_RECV) sockets have inode 0: no process holds them (hostnet.py).
HOSTNET_STATES = tuple(s for s in STATE_NAMES.values() if s not in ("time_wait", "syn_recv"))


def _own_listening(value: Callable[[TcpSummary], Optional[int]]) -> Callable[[Figures], Optional[int]]:
    return lambda f: value(f.tcp) if f.tcp.listeners else None


def _own_state(state: str) -> Callable[[Figures], Optional[int]]:
    return lambda f: f.tcp.states[state]


HOSTNET_METRICS: Tuple[HostnetMetric, ...] = (
    HostnetMetric("hostnet.tcp.inuse", HOSTNET_SOURCE,
                  "TCP sockets its processes hold, listeners included (TIME_WAIT is no process's)",
                  lambda f: f.tcp_inuse),
    HostnetMetric("hostnet.udp.inuse", "the host's UDP sockets (sock_diag, else /proc/net/udp{,6}) whose inode "
                  "its processes hold", "UDP sockets its processes hold, IPv4 and IPv6", lambda f: f.udp_inuse),
    *(HostnetMetric(f"hostnet.tcp.state.{state}", HOSTNET_SOURCE, f"its TCP sockets in {state.upper()}",
                    _own_state(state)) for state in HOSTNET_STATES),
    HostnetMetric("hostnet.tcp.listen.queue_max", HOSTNET_SOURCE + ": a LISTEN socket's receive queue",
                  "the longest accept queue of its listeners", _own_listening(lambda t: t.queue_max)),
    HostnetMetric("hostnet.tcp.listen.fill_max_pct", "sock_diag: LISTEN rqueue * 100 / wqueue (backlog; 0 counts as 1)",
                  "its fullest listener's accept queue in percent of its backlog; above 100 SYNs are dropped",
                  _own_listening(lambda t: t.fill_max_percent)),
    HostnetMetric("hostnet.tcp.listen.near_full", f"sock_diag: its listeners at or above {NEAR_FULL_PERCENT} % fill",
                  f"its listeners whose accept queue is at or above {NEAR_FULL_PERCENT} % of its backlog",
                  _own_listening(lambda t: t.near_full)),
    HostnetMetric("hostnet.tcp.ports.peer_max", HOSTNET_SOURCE + ": its sockets per remote (address, port)",
                  "the most of its sockets (LISTEN left out; TIME_WAIT is no process's) connected to one remote",
                  lambda f: f.tcp.peer_max),
)


def hostnet_samples(stats: GroupStats) -> List[Sample]:
    """Samples of one host-network container or pod: the sockets its processes hold."""
    samples = []
    for m in HOSTNET_METRICS:
        value = m.get(stats.figures)
        if value is not None:
            samples.append(Sample(PREFIX + m.name, value, m.counter_type, stats.tags))
    return samples


def _host(name: str, field: str, section: str, meaning: str, scope_field: Optional[str] = None) -> Metric:
    return Metric(
        name, BASIC, GAUGE, f"sockstat {section}: {field}", meaning,
        lambda r: _f(r.sockstat, section, field, "sockstat"), scope_field=scope_field,
    )


HOST_METRICS: Tuple[Metric, ...] = (
    _host("host.tcp.orphan", "orphan", "TCP", "TCP sockets no process holds (host-wide on every kernel)"),
    _host("host.tcp.alloc", "alloc", "TCP", "TCP sockets allocated (host-wide on every kernel)"),
    _host("host.tcp.mem", "mem", "TCP", "pages used by TCP buffers (host-wide on every kernel)"),
    _host("host.udp.mem", "mem", "UDP", "pages used by UDP buffers (host-wide on every kernel)"),
    _host("host.tcp.timewait", "tw", "TCP", "TIME_WAIT of the whole host (kernels before ~4.13)", "tw"),
    _host("host.sockets.used", "used", "sockets", "sockets of the whole host (kernels before 4.16)", "sockets_used"),
)

COLLECTOR_METRICS = (
    ("collector.containers", "running containers listed by the runtime"),
    ("collector.namespaces", "container network namespaces reported"),
    ("collector.failed", "running containers that could not be read, or not before the run's deadline"),
)


def _emitted(metric: Metric, scopes: Mapping[str, str], groups: AbstractSet[str], where: str) -> bool:
    return metric.group in groups and (metric.scope_field is None or scopes[metric.scope_field] == where)


def _netns_plan(scopes: Mapping[str, str], groups: AbstractSet[str]) -> Tuple[Tuple[Metric, str], ...]:
    """The namespace metrics this run emits, each with its emitted name: chosen once per run,
    not once per namespace."""
    return tuple((m, PREFIX + m.name) for m in NETNS_METRICS if _emitted(m, scopes, groups, NETNS))


def netns_samples(ns: NetnsStats, scopes: Mapping[str, str], groups: AbstractSet[str] = DEFAULT_GROUPS,
                  plan: Optional[Tuple[Tuple[Metric, str], ...]] = None) -> List[Sample]:
    """Samples of one container namespace; kernel-dependent fields only where per namespace.
    ``plan``: ``_netns_plan(scopes, groups)``, when the caller has it already."""
    samples = []
    readings, tags = ns.readings, ns.tags
    for m, name in _netns_plan(scopes, groups) if plan is None else plan:
        if m.group == STATES and readings.tcp_missing:
            continue  # its dump failed (namespaces.py): no items for the states, not zeros
        try:
            value = m.get(readings)
        except ParseError:
            if m.optional:
                continue  # this kernel does not have the counter
            raise
        if value is None:
            continue
        samples.append(Sample(name, value, m.counter_type, tags))
    return samples


def host_samples(host: HostStats, scopes: Mapping[str, str]) -> List[Sample]:
    """Host-wide samples, once per run: global fields, and kernel-dependent ones where global."""
    readings = Readings(sockstat=host.sockstat)
    samples = []
    for m in HOST_METRICS:
        value = m.get(readings) if _emitted(m, scopes, {BASIC}, HOST) else None
        if value is not None:
            samples.append(Sample(PREFIX + m.name, value, m.counter_type))
    return samples


def snapshot_samples(
    snapshot: Snapshot, scopes: Mapping[str, str], groups: AbstractSet[str] = DEFAULT_GROUPS
) -> Tuple[List[Sample], Tuple[Tuple[str, str], ...]]:
    """All samples of a run (host, collector health, each namespace), and what failed.

    A namespace whose files lack a field this catalogue needs is left out and named
    in the second element, like a container that could not be read.
    """
    samples: List[Sample] = []
    failed = list(snapshot.failed)
    try:
        samples += host_samples(snapshot.host, scopes)
    except ContainerNetstatError as err:
        log.error("host: %s", err)
        failed.append(("host", str(err)))
    reported = 0
    plan = _netns_plan(scopes, groups)
    for ns in snapshot.namespaces:
        try:
            samples += netns_samples(ns, scopes, groups, plan)
            reported += 1
        except ContainerNetstatError as err:
            log.error("container %s: %s", ns.owner.name, err)
            failed.append((ns.owner.name, str(err)))
    if HOSTNET in groups and snapshot.hostnet is not None:
        for stats in snapshot.hostnet.groups:
            samples += hostnet_samples(stats)
    counts = (snapshot.containers, reported, len(failed) + len(snapshot.late))
    samples += [Sample(PREFIX + name, value, GAUGE) for (name, _), value in zip(COLLECTOR_METRICS, counts)]
    return samples, tuple(failed)

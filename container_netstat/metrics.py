"""The metric catalogue: names, sources, types, and which fields are per namespace.

Scope rules (FACTS §1):
- ``TCP: inuse``/``UDP: inuse`` (sockstat) and ``TCP6``/``UDP6`` (sockstat6), and snmp's
  ``Tcp:``/``Udp:`` MIBs are per network namespace on every kernel.
- ``TCP: tw`` is per namespace since the TIME_WAIT accounting moved into the
  per-netns ``tcp_death_row`` ("Namespaceify tcp_max_tw_buckets", about 4.13).
- ``sockets: used`` is per namespace since commit 648845ab7e20 ("sock: Move the
  socket inuse to namespace", 4.16).
- ``TCP: orphan``, ``alloc``, ``mem`` and ``UDP: mem`` are global counters on every
  kernel: they are reported once, as host metrics, never tagged as a container.
Distributions backport, so the version table can be overridden per field.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from container_netstat import procnet
from container_netstat.collect import HostStats, NetnsStats, Snapshot, Tags
from container_netstat.errors import ContainerNetstatError

log = logging.getLogger(__name__)

PREFIX = "container.net."
GAUGE = "GAUGE"
COUNTER = "COUNTER"

NETNS = "netns"
HOST = "host"
SCOPES = (NETNS, HOST)

# field -> (first kernel where it is per namespace, why)
SCOPE_TABLE: Dict[str, Tuple[Tuple[int, int], str]] = {
    "tw": ((4, 13), "per-netns tcp_death_row, 'Namespaceify tcp_max_tw_buckets'"),
    "sockets_used": ((4, 16), "commit 648845ab7e20 'sock: Move the socket inuse to namespace'"),
}


@dataclass(frozen=True)
class Sample:
    """One value to emit; tags are raw here and sanitized by each output format."""

    metric: str
    value: int
    counter_type: str
    tags: Tags = ()


def kernel_version(release: str) -> Optional[Tuple[int, int]]:
    """(major, minor) from a release string such as ``6.18.44-fc-v669``; None if unreadable."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def field_scopes(release: str, overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Decide, per kernel-dependent field, whether it is per namespace on this kernel.

    An unreadable release is treated as an old kernel: reporting a host value as a
    container's is the worse mistake.
    """
    version = kernel_version(release)
    scopes = {
        name: NETNS if version is not None and version >= since else HOST
        for name, (since, _why) in SCOPE_TABLE.items()
    }
    for name, scope in (overrides or {}).items():
        if name not in SCOPE_TABLE or scope not in SCOPES:
            raise ContainerNetstatError(
                f"bad scope override {name}={scope}: fields are {', '.join(SCOPE_TABLE)}, scopes {', '.join(SCOPES)}"
            )
        scopes[name] = scope
    return scopes


Getter = Callable[[procnet.Sections, procnet.Sections, procnet.Sections], int]


@dataclass(frozen=True)
class Metric:
    """A catalogue entry: emitted name (without PREFIX), type, source, scope field."""

    name: str
    counter_type: str
    source: str
    meaning: str
    get: Getter
    scope_field: Optional[str] = None


def _f(sections: procnet.Sections, section: str, name: str, source: str) -> int:
    return procnet.field(sections, section, name, source)


def _f6(sections: procnet.Sections, section: str, name: str) -> int:
    # sockstat6 is absent when IPv6 is disabled: no IPv6 sockets then.
    return sections.get(section, {}).get(name, 0) if sections else 0


NETNS_METRICS: Tuple[Metric, ...] = (
    Metric(
        "tcp.established", GAUGE, "snmp Tcp: CurrEstab",
        "TCP connections in ESTABLISHED (and CLOSE_WAIT on kernels with commit a46d0ea5c942)",
        lambda s, s6, snmp: _f(snmp, "Tcp", "CurrEstab", "snmp"),
    ),
    Metric(
        "tcp.inuse", GAUGE, "sockstat TCP: inuse + sockstat6 TCP6: inuse",
        "TCP sockets in any state but TIME_WAIT (listeners included), IPv4 and IPv6",
        lambda s, s6, snmp: _f(s, "TCP", "inuse", "sockstat") + _f6(s6, "TCP6", "inuse"),
    ),
    Metric(
        "tcp.timewait", GAUGE, "sockstat TCP: tw",
        "TCP sockets in TIME_WAIT, IPv4 and IPv6",
        lambda s, s6, snmp: _f(s, "TCP", "tw", "sockstat"),
        scope_field="tw",
    ),
    Metric(
        "udp.inuse", GAUGE, "sockstat UDP: inuse + sockstat6 UDP6: inuse",
        "UDP sockets, IPv4 and IPv6",
        lambda s, s6, snmp: _f(s, "UDP", "inuse", "sockstat") + _f6(s6, "UDP6", "inuse"),
    ),
    Metric(
        "sockets.used", GAUGE, "sockstat sockets: used",
        "sockets of every family (TCP, UDP, unix, netlink...)",
        lambda s, s6, snmp: _f(s, "sockets", "used", "sockstat"),
        scope_field="sockets_used",
    ),
)

HOST_METRICS: Tuple[Metric, ...] = (
    Metric("host.tcp.orphan", GAUGE, "sockstat TCP: orphan", "TCP sockets no process holds (host-wide on every kernel)",
           lambda s, s6, snmp: _f(s, "TCP", "orphan", "sockstat")),
    Metric("host.tcp.alloc", GAUGE, "sockstat TCP: alloc", "TCP sockets allocated (host-wide on every kernel)",
           lambda s, s6, snmp: _f(s, "TCP", "alloc", "sockstat")),
    Metric("host.tcp.mem", GAUGE, "sockstat TCP: mem", "pages used by TCP buffers (host-wide on every kernel)",
           lambda s, s6, snmp: _f(s, "TCP", "mem", "sockstat")),
    Metric("host.udp.mem", GAUGE, "sockstat UDP: mem", "pages used by UDP buffers (host-wide on every kernel)",
           lambda s, s6, snmp: _f(s, "UDP", "mem", "sockstat")),
    Metric("host.tcp.timewait", GAUGE, "sockstat TCP: tw", "TCP TIME_WAIT sockets of the whole host (kernels before ~4.13 only)",
           lambda s, s6, snmp: _f(s, "TCP", "tw", "sockstat"), scope_field="tw"),
    Metric("host.sockets.used", GAUGE, "sockstat sockets: used", "sockets of the whole host (kernels before 4.16 only)",
           lambda s, s6, snmp: _f(s, "sockets", "used", "sockstat"), scope_field="sockets_used"),
)

COLLECTOR_METRICS = (
    ("collector.containers", "running containers listed by the runtime"),
    ("collector.namespaces", "container network namespaces reported"),
    ("collector.failed", "running containers that could not be read"),
)


def netns_samples(ns: NetnsStats, scopes: Mapping[str, str]) -> List[Sample]:
    """Samples of one container namespace; kernel-dependent fields only where per namespace."""
    return [
        Sample(PREFIX + m.name, m.get(ns.sockstat, ns.sockstat6, ns.snmp), m.counter_type, ns.tags)
        for m in NETNS_METRICS
        if m.scope_field is None or scopes[m.scope_field] == NETNS
    ]


def host_samples(host: HostStats, scopes: Mapping[str, str]) -> List[Sample]:
    """Host-wide samples, once per run: global fields, and kernel-dependent ones where global."""
    return [
        Sample(PREFIX + m.name, m.get(host.sockstat, {}, {}), m.counter_type)
        for m in HOST_METRICS
        if m.scope_field is None or scopes[m.scope_field] == HOST
    ]


def snapshot_samples(snapshot: Snapshot, scopes: Mapping[str, str]) -> Tuple[List[Sample], Tuple[str, ...]]:
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
        failed.append("host")
    reported = 0
    for ns in snapshot.namespaces:
        try:
            samples += netns_samples(ns, scopes)
            reported += 1
        except ContainerNetstatError as err:
            log.error("container %s: %s", ns.owner.name, err)
            failed.append(ns.owner.name)
    counts = (snapshot.containers, reported, len(failed))
    samples += [Sample(PREFIX + name, value, GAUGE) for (name, _), value in zip(COLLECTOR_METRICS, counts)]
    return samples, tuple(failed)

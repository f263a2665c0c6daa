"""The records passed between the steps of a run: discover -> read -> build -> emit.

Typed and frozen; plain dicts appear only at the output edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Mapping, Optional, Tuple

from container_netstat import kubernetes, procnet
from container_netstat.tcp_summary import TcpSummary

Tags = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Container:
    """A running container as the list call reports it."""

    id: str
    name: str
    network_mode: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    # A pid inside the container when the backend already knows one (discovery.py);
    # the pid resolver still checks it against /proc/<pid>/cgroup.
    pid: Optional[int] = field(default=None, compare=False)

    @property
    def joins(self) -> Optional[str]:
        """The id or name of the container whose namespace this one joins, if any."""
        if self.network_mode.startswith("container:"):
            return self.network_mode.split(":", 1)[1]
        return None

    @property
    def is_host_network(self) -> bool:
        return self.network_mode == "host"

    @property
    def pod(self) -> Optional[Tuple[str, str]]:
        """(namespace, pod) for a Kubernetes container, else None."""
        return kubernetes.pod_of(self.labels)

    @property
    def is_sandbox(self) -> bool:
        return kubernetes.is_sandbox_container(self.labels)


@dataclass(frozen=True)
class TcpReading:
    """One namespace's TCP sockets, summarized, and how they were read."""

    summary: TcpSummary
    port_range: Optional[int]  # ephemeral ports of the namespace; None from /proc
    path: str  # SOCK_DIAG or PROC
    skipped: bool = False  # not dumped: sockstat showed no TCP socket at all


@dataclass(frozen=True)
class Readings:
    """What was read from one namespace, by file; empty where the groups did not ask."""

    sockstat: procnet.Sections = field(default_factory=dict)
    sockstat6: procnet.Sections = field(default_factory=dict)
    snmp: procnet.Sections = field(default_factory=dict)
    netstat: procnet.Sections = field(default_factory=dict)
    tcp: Optional[TcpReading] = None
    # Why the TCP states of this namespace are left out ("" when read or not asked for):
    # its dump ended badly; its other figures are reported.
    tcp_missing: str = ""


@dataclass(frozen=True)
class NetnsStats:
    """The raw readings of one container network namespace."""

    owner: Container
    members: Tuple[str, ...]
    pid: int
    key: int
    tags: Tags
    readings: Readings


@dataclass(frozen=True)
class HostStats:
    """The host's sockstat (host-wide fields are read here, once) and its kernel."""

    kernel_release: str
    key: int
    sockstat: procnet.Sections


@dataclass(frozen=True)
class Figures:
    """The sockets one host-network container or pod holds (hostnet.py)."""

    # time_wait, syn_recv and orphan are 0 by construction: those sockets have inode 0, no
    # process holds them ("What cannot be attributed" in hostnet.py's docstring)
    tcp: TcpSummary
    tcp_inuse: int
    udp_inuse: int


@dataclass(frozen=True)
class GroupStats:
    """One group's figures."""

    owner: Container
    members: Tuple[str, ...]  # container names, sorted
    tags: Tags
    pids: int  # processes whose fds were read
    figures: Figures


@dataclass(frozen=True)
class Report:
    """What the host-network group read in one run, and what it left out and why."""

    groups: Tuple[GroupStats, ...] = ()
    path: str = ""  # how the host's sockets were read; "" when nothing was dumped
    not_permitted: Tuple[Tuple[str, str], ...] = ()  # (owner name, reason): skipped
    over_cap: Tuple[Tuple[str, str], ...] = ()  # (owner name, reason): left out, warned
    gone: Tuple[str, ...] = ()
    failed: Tuple[Tuple[str, str], ...] = ()  # (owner name, reason)
    sources: Mapping[str, str] = field(default_factory=dict)  # container name -> where its pids came from


@dataclass(frozen=True)
class Snapshot:
    """Everything one run read, and what it could not."""

    host: HostStats
    namespaces: Tuple[NetnsStats, ...]
    containers: int
    gone: Tuple[str, ...]
    failed: Tuple[Tuple[str, str], ...]  # (container name, reason)
    host_network: Tuple[str, ...]
    pid_sources: Mapping[str, str] = field(default_factory=dict)  # container name -> how its pid was found
    tcp_path: Optional["TcpPath"] = None  # how TCP states were read; None without the group
    groups: AbstractSet[str] = frozenset()  # the metric groups read (states may have been left out)
    host_joined: Tuple[Tuple[str, str], ...] = ()  # (container, the host-network container it joins)
    hostnet: Optional["Report"] = None  # host-network containers' own sockets; None without the group
    late: Tuple[str, ...] = ()  # containers whose namespace was not read: the run's deadline came first


@dataclass(frozen=True)
class TcpPath:
    """How a run read TCP states: sock_diag inside each namespace, or /proc/<pid>/net/tcp{,6}."""

    path: str  # tcp_reader.SOCK_DIAG or tcp_reader.PROC
    reason: str  # why sock_diag is not used ("" when it is)
    read: bool  # False: sock_diag could not be used and the states, not asked for, were left out
    request: str  # the sock_diag request the kernel took: "legacy" (one walk) or "v2"
    proc_fallbacks: Tuple[str, ...] = ()  # why single namespaces were read from /proc
    skipped_empty: int = 0  # namespaces without a TCP socket: zeros, not dumped


@dataclass(frozen=True)
class Sample:
    """One value to emit; tags are raw here and sanitized by each output format."""

    metric: str
    value: int
    counter_type: str
    tags: Tags = ()

"""What an operator needs when numbers look odd: scopes on this kernel, runtime, and who failed.

It also says what the kernel charges for the states group: a network namespace without a TCP
table of its own shares the host's, and each dump walks all of it (docs/performance.rst, "The
kernel's shared TCP table"). ``tcp_ehash_entries`` read inside a namespace is its table's size,
negative where it shares the host's (the kernel's Documentation/networking/ip-sysctl.rst);
``measure_table`` reads it in a sample of namespaces and times a dump in each.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from container_netstat.deadline import Deadline, OutOfTime
from container_netstat.errors import ContainerNetstatError, ParseError
from container_netstat.records import NetnsStats, Snapshot
from container_netstat.kernel_scopes import HOST, PORT_RANGE_SCOPE, SCOPE_TABLE, kernel_version
from container_netstat.metrics import HOST_METRICS, HOSTNET_METRICS, NETNS_METRICS, PREFIX

NOT_ATTRIBUTABLE = (
    "TIME_WAIT sockets, request sockets (SYN_RECV) and orphans have inode 0: no process holds them, "
    "so they are in no host-network container's figures; nor is a connection waiting in an accept "
    "queue (it counts in its listener's queue)"
)
HOSTNET_NEEDS = (
    "ptrace read access to each process (CAP_SYS_PTRACE for another user's or a more privileged "
    "process) to read /proc/<pid>/fd; the host's sockets by sock_diag, made in our own namespace "
    "when it is the host's (no capability) or by setns (CAP_SYS_ADMIN), else /proc/net/tcp{,6} and udp{,6}"
)
CLOSE_WAIT_NOTE = (
    "Tcp: CurrEstab counts CLOSE_WAIT too on kernels with commit a46d0ea5c942 (2024, also in "
    "stable branches such as 5.15.y); the kernel version alone does not tell"
)


EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"
CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"  # kernel 6.1 and later
OWN_SOCKSTAT = "/proc/thread-self/net/sockstat"  # its inode tells our namespace (procfs.ProcFS.netns_key)
SAMPLE = 12  # namespaces whose table is read and whose dump is timed: enough for a median
SUGGESTED_BUCKETS = 1024
TABLE_TRADE_OFF = (
    "it applies only to network namespaces created after it is set (a container keeps the table "
    "it started with until it is recreated); each table costs kernel memory (8 bytes a bucket, "
    "1024 buckets: 8 KiB, plus its locks); and a namespace's TIME_WAIT limit becomes half its "
    "buckets (tcp_max_tw_buckets: 512 with 1024) and its SYN backlog buckets/128, at least 128 "
    "(net/ipv4/tcp_ipv4.c tcp_set_hashinfo), so a namespace that makes many short connections "
    "needs a larger table"
)


def parse_ehash(text: str, path: str = EHASH) -> int:
    """``tcp_ehash_entries`` or ``tcp_child_ehash_entries``: one integer."""
    words = text.split()
    try:
        if len(words) != 1:
            raise ValueError
        return int(words[0])
    except ValueError:
        raise ParseError(path, f"expected one integer, got {text.strip()[:40]!r}") from None


@dataclass(frozen=True)
class TableSample:
    """One sampled namespace: its table's size (negative: the host's, shared) and one timed dump."""

    owner: str
    buckets: Optional[int]  # None where it could not be read (``error`` says why)
    dump_wall: Optional[float]  # seconds
    dump_cpu: Optional[float]  # seconds of this thread's CPU: the kernel's walk is most of it
    error: str = ""


@dataclass(frozen=True)
class TableProbe:
    """What ``measure_table`` found: the host's settings and the sampled namespaces."""

    host_buckets: Optional[int]
    child_entries: Optional[int]  # None: no such sysctl (a kernel before 6.1) or not readable
    host_error: str
    samples: Tuple[TableSample, ...]
    dumped: int  # namespaces the run dumped (those holding a TCP socket)
    unread: str = ""  # why no namespace was sampled


class TableReader(Protocol):
    """What ``measure_table`` needs of tcp_reader.TcpReader: a /proc/sys file read inside a
    pid's namespace, and one dump there."""

    def read_sysctl(self, pid: int, path: str,
                    still_ours: Optional[Callable[[int], bool]] = None) -> Optional[str]: ...  # pragma: no cover

    def read(self, pid: int, deadline: Optional[Deadline] = None, name: str = "",
             still_ours: Optional[Callable[[int], bool]] = None) -> Any: ...  # pragma: no cover


def own_sysctl(path: str) -> Optional[str]:
    """A /proc/sys file as this thread's namespace sees it; None where the kernel has none."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read(256)
    except (OSError, ValueError):
        return None


def sample(namespaces: Sequence[NetnsStats], size: int = SAMPLE) -> List[NetnsStats]:
    """At most ``size`` namespaces, spread evenly over the (sorted) list."""
    if len(namespaces) <= size:
        return list(namespaces)
    step = len(namespaces) / size
    return [namespaces[int(i * step)] for i in range(size)]


def measure_table(reader: TableReader, snapshot: Snapshot, host_pid: int, deadline: Deadline,
                  unavailable: Optional[str], own_sysctl: Callable[[str], Optional[str]],
                  in_host_namespace: bool, netns_key: Callable[[int], int], size: int = SAMPLE,
                  clock: Callable[[], float] = time.perf_counter,
                  cpu_clock: Callable[[], float] = time.thread_time) -> TableProbe:
    """The host's table and child setting (read inside ``host_pid``'s namespace, or in our own
    where that is the host's), and for a sample of the run's namespaces the table's size and
    one timed dump. ``reader`` is a probed TcpReader; ``unavailable`` why it cannot enter
    namespaces (then only the host's settings are read, where we are in its namespace).
    A pid is believed to be its namespace's only while ``netns_key(pid)`` is the run's key
    for it, asked with the namespace held open: a pid reused since is not measured."""
    dumped = sum(1 for ns in snapshot.namespaces if ns.readings.tcp is not None and not ns.readings.tcp.skipped)

    def host_value(path: str) -> Tuple[Optional[int], str]:
        # Our own namespace is the host's (the usual case): no namespace to enter. Else the
        # host's pid 1's, entered as a container's is.
        if in_host_namespace:
            text = own_sysctl(path)
        elif unavailable is not None:
            return None, f"not read: {unavailable}"
        else:
            try:
                text = reader.read_sysctl(host_pid, path)
            except ContainerNetstatError as err:
                return None, f"not read: {err}"
        return (parse_ehash(text, path), "") if text is not None else (None, "")

    try:
        host_buckets, host_error = host_value(EHASH)
        child, child_error = host_value(CHILD_EHASH)
    except ParseError as err:
        host_buckets, child, host_error, child_error = None, None, str(err), ""
    if host_buckets is None and not host_error:
        host_error = "no tcp_ehash_entries on this kernel"
    if unavailable is not None:
        return TableProbe(host_buckets, child, host_error or child_error, (), dumped, unread=unavailable)
    samples: List[TableSample] = []
    for ns in sample(snapshot.namespaces, size):
        name = ns.owner.name
        def ours(pid: int, key: int = ns.key) -> bool:
            try:
                return netns_key(pid) == key
            except ContainerNetstatError:
                return False

        try:
            deadline.budget(1.0, f"the table of {name}")
            text = reader.read_sysctl(ns.pid, EHASH, ours)
            buckets = parse_ehash(text) if text is not None else None
            start, cpu = clock(), cpu_clock()
            reader.read(ns.pid, deadline, name, ours)
            samples.append(TableSample(name, buckets, clock() - start, cpu_clock() - cpu))
        except OutOfTime as err:
            samples.append(TableSample(name, None, None, None, str(err)))
            break
        except ContainerNetstatError as err:
            samples.append(TableSample(name, None, None, None, str(err)))
    return TableProbe(host_buckets, child, host_error or child_error, tuple(samples), dumped)


def _ms(values: List[float]) -> Optional[float]:
    return round(statistics.median(values) * 1000, 3) if values else None


def tcp_table(probe: TableProbe) -> Dict[str, Any]:
    """The shared-table report: who shares the host's table, what a dump costs, the advice."""
    read = [s for s in probe.samples if s.buckets is not None]
    sharing = [s.owner for s in read if s.buckets is not None and s.buckets < 0]
    own = {s.owner: s.buckets for s in read if s.buckets is not None and s.buckets > 0}
    timed = [s for s in probe.samples if s.dump_wall is not None and s.dump_cpu is not None]

    def costs(kept: List[TableSample]) -> Dict[str, Any]:
        return {"median_wall": _ms([s.dump_wall for s in kept if s.dump_wall is not None]),
                "median_cpu": _ms([s.dump_cpu for s in kept if s.dump_cpu is not None]), "timed": len(kept)}

    cpus = [s.dump_cpu for s in timed if s.dump_cpu is not None]
    # The run dumps every namespace that holds a TCP socket: the sample's mean stands for them.
    estimate = round(statistics.fmean(cpus) * 1000 * probe.dumped, 1) if cpus else None
    info: Dict[str, Any] = {
        "host_buckets": probe.host_buckets,
        "child_ehash_entries": probe.child_entries,
        "sampled": len(probe.samples),
        "sharing_host_table": len(sharing),
        "own_table": own,
        "not_read": [{"namespace": s.owner, "reason": s.error} for s in probe.samples if s.error],
        "dump_ms": {"sharing": costs([s for s in timed if s.buckets is not None and s.buckets < 0]),
                    "own_table": costs([s for s in timed if s.buckets is not None and s.buckets > 0])},
        "dumped_per_run": probe.dumped,
        "estimated_cpu_ms_per_run": estimate,
        "advice": _table_advice(probe, len(sharing), len(read)),
    }
    if probe.host_error:
        info["host_error"] = probe.host_error
    if probe.unread:
        info["namespaces_not_sampled"] = probe.unread
    return info


def _table_advice(probe: TableProbe, sharing: int, read: int) -> str:
    if probe.child_entries is None and probe.host_buckets is not None:
        return ("this kernel has no net.ipv4.tcp_child_ehash_entries (6.1 and later): every namespace shares "
                "the host's table and each dump walks all of it; where that costs too much, "
                "--metrics basic,counters leaves the states group out")
    if probe.child_entries is None:
        return "the host's settings could not be read: " + (probe.host_error or "-")
    if read and not sharing:
        return "every sampled namespace has a TCP table of its own: a dump walks only its own"
    setting = f"net.ipv4.tcp_child_ehash_entries={SUGGESTED_BUCKETS}"
    if probe.child_entries == 0:
        head = (f"each dump of a namespace sharing the host's table walks all {abs(probe.host_buckets or 0)} "
                f"buckets; sysctl -w {setting} (and the same in /etc/sysctl.d) gives each network namespace "
                "created afterwards a table of its own, whose dump walks only that")
    else:
        head = (f"net.ipv4.tcp_child_ehash_entries is {probe.child_entries}, but {sharing} of {read} sampled "
                "namespaces share the host's table: they were created before it was set (or the kernel could "
                "not allocate theirs); recreating their containers gives them tables of their own")
    return f"{head}. Trade-off: {TABLE_TRADE_OFF}"


def metric_scopes(scopes: Mapping[str, str]) -> Dict[str, str]:
    """Each metric name -> where its value comes from on this kernel."""
    out: Dict[str, str] = {}
    for m in NETNS_METRICS:
        if m.scope_field is None or scopes[m.scope_field] != HOST:
            out[PREFIX + m.name] = "per network namespace"
        else:
            out[PREFIX + m.name] = f"not reported: host-wide on this kernel (see {PREFIX}host.*)"
    for m in HOST_METRICS:
        if m.scope_field is None:
            out[PREFIX + m.name] = "host-wide on every kernel"
        elif scopes[m.scope_field] == HOST:
            out[PREFIX + m.name] = "host-wide on this kernel"
    for h in HOSTNET_METRICS:
        out[PREFIX + h.name] = "per host-network container or pod: the sockets its processes hold"
    return out


def host_network(snapshot: Snapshot) -> Dict[str, Any]:
    """The host-network containers, those joined to them, and what the hostnet group read."""
    report = snapshot.hostnet
    info: Dict[str, Any] = {
        "containers": list(snapshot.host_network),
        "joined": [{"container": name, "joins": target} for name, target in snapshot.host_joined],
        "group": "on" if report is not None else "off",
        "not_attributable": NOT_ATTRIBUTABLE,
        "needs": HOSTNET_NEEDS,
    }
    if report is None:
        return info
    info.update({
        "sockets_from": report.path or "-",
        "reported": [
            {"tags": ",".join(f"{k}={v}" for k, v in g.tags), "containers": list(g.members), "processes": g.pids,
             "pid_sources": sorted({report.sources.get(name, "-") for name in g.members})}
            for g in report.groups
        ],
        "skipped": [{"container": name, "reason": reason} for name, reason in report.not_permitted],
        "over_fd_cap": [{"container": name, "reason": reason} for name, reason in report.over_cap],
    })
    return info


def tcp_states(snapshot: Snapshot, unavailable: Optional[str]) -> Dict[str, Any]:
    """How TCP states are read on this host, and why: the path, its reason, its limits."""
    since, why = PORT_RANGE_SCOPE
    version = kernel_version(snapshot.host.kernel_release)
    per_netns = version is not None and version >= since
    path = snapshot.tcp_path
    info: Dict[str, Any] = {
        "path": "sock_diag" if unavailable is None else "proc",
        "default": "on" if unavailable is None else "off: --tcp-states reads /proc/<pid>/net/tcp{,6} (4-12x the cost)",
        "why": "setns into each namespace and one NETLINK_SOCK_DIAG dump" if unavailable is None else unavailable,
        "request": path.request if path is not None else "",
        "read_from_proc": list(path.proc_fallbacks) if path is not None else [],
        "empty_namespaces_not_dumped": path.skipped_empty if path is not None else 0,
        "port_range": ("per network namespace" if per_netns else "the host's (kernel before 3.18)")
        + f": {why}",
    }
    if unavailable is not None:
        info["omitted"] = ("tcp.listen.fill_max_pct, tcp.listen.near_full and tcp.ports.pressure_pct: "
                           "/proc/<pid>/net/tcp has no backlog, and the port range is readable only inside")
    return info


def report(snapshot: Snapshot, scopes: Mapping[str, str], docker: Mapping[str, Any],
           unavailable: Optional[str] = None, table: Optional[TableProbe] = None,
           transfer: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The doctor report as plain data (the CLI prints it as JSON or text). ``table``: the
    kernel's TCP table (TableProbe); ``transfer``: where the falcon-agent's transfer is and
    whether it answers Transfer.Ping (transfer.describe)."""
    namespaces: List[Dict[str, Any]] = [
        {
            "tags": ",".join(f"{k}={v}" for k, v in ns.tags),
            "owner": ns.owner.name,
            "containers": list(ns.members),
            "pid": ns.pid,
            "pid_source": snapshot.pid_sources.get(ns.owner.name, "joined"),
        }
        for ns in snapshot.namespaces
    ]
    return {
        "kernel": snapshot.host.kernel_release,
        "field_scopes": {
            name: {"scope": scopes[name], "per_namespace_since": ".".join(map(str, since)), "why": why}
            for name, (since, why) in SCOPE_TABLE.items()
        },
        "metrics": metric_scopes(scopes),
        "established_note": CLOSE_WAIT_NOTE,
        "tcp_states": tcp_states(snapshot, unavailable),
        "tcp_table": tcp_table(table) if table is not None else None,
        "docker": dict(docker),
        "containers": snapshot.containers,
        "namespaces": namespaces,
        "host_network": list(snapshot.host_network),
        "hostnet": host_network(snapshot),
        "exited_during_run": list(snapshot.gone),
        "unreadable": [{"container": name, "reason": reason} for name, reason in snapshot.failed],
        "transfer": dict(transfer or {}),
    }


def format_text(data: Mapping[str, Any]) -> str:
    """The report for a terminal."""
    lines = [f"kernel        {data['kernel']}"]
    docker = data["docker"]
    runtime = docker.get("runtime", "docker")
    lines.append(f"{runtime:<13} {docker.get('host')} (server {docker.get('server_version') or '-'}, "
                 f"API {docker.get('api_version') or '-'})")
    lines.append(f"containers    {data['containers']} running, {len(data['namespaces'])} namespaces reported")
    lines.append("")
    lines.append("fields whose scope depends on the kernel:")
    for name, info in data["field_scopes"].items():
        lines.append(f"  {name:<13} {info['scope']:<6} (per namespace since {info['per_namespace_since']}: {info['why']})")
    lines.append("")
    lines.append("metrics:")
    for name, scope in data["metrics"].items():
        lines.append(f"  {name:<40} {scope}")
    lines.append(f"  note: {data['established_note']}")
    lines.append("")
    tcp = data["tcp_states"]
    lines.append(f"TCP states    {tcp['path']} ({tcp['why']}); by default {tcp['default']}")
    if tcp["request"]:
        lines.append(f"  request     {tcp['request']}; {tcp['empty_namespaces_not_dumped']} empty namespaces not dumped")
    lines.append(f"  port range  {tcp['port_range']}")
    if tcp.get("omitted"):
        lines.append(f"  omitted     {tcp['omitted']}")
    for reason in sorted(set(tcp["read_from_proc"])):
        lines.append(f"  from /proc  {reason}")
    lines += _table_text(data.get("tcp_table"))
    lines.append("")
    lines.append("namespaces:")
    for ns in data["namespaces"]:
        lines.append(f"  {ns['tags']}  pid {ns['pid']} via {ns['pid_source']}: {', '.join(ns['containers'])}")
    lines += _host_network_text(data["hostnet"])
    if data["exited_during_run"]:
        lines.append(f"exited during the run: {', '.join(data['exited_during_run'])}")
    if data["unreadable"]:
        lines.append("could not read:")
        for entry in data["unreadable"]:
            lines.append(f"  {entry['container']}: {entry['reason']}")
    lines += _transfer_text(data.get("transfer") or {})
    return "\n".join(lines)


def _transfer_text(info: Mapping[str, Any]) -> List[str]:
    """Where the falcon-agent's transfer was learned, and which address answers."""
    if not info:
        return []
    lines = [f"transfer      {', '.join(info.get('addrs') or []) or '-'} (from {info.get('learned_from', '-')})"]
    if "not_learned" in info:
        lines.append(f"  {info['not_learned']}")
    for ping in info.get("ping", []):
        lines.append(f"  {ping['addr']}: {'answers' if ping['answers'] else ping['reason']}")
    return lines


def _host_network_text(info: Mapping[str, Any]) -> List[str]:
    if not info["containers"] and not info["joined"]:
        return []
    lines = [f"host network (no namespace of their own; hostnet group {info['group']}): {', '.join(info['containers'])}"]
    for entry in info["joined"]:
        lines.append(f"  joined      {entry['container']} joins {entry['joins']}")
    if info["group"] == "on":
        lines.append(f"  sockets     the host's, from {info['sockets_from']}")
        for group in info["reported"]:
            lines.append(f"  reported    {group['tags']}: {', '.join(group['containers'])} "
                         f"({group['processes']} processes via {', '.join(group['pid_sources'])})")
        for title, key in (("skipped", "skipped"), ("over fd cap", "over_fd_cap")):
            for entry in info[key]:
                lines.append(f"  {title:<11} {entry['container']}: {entry['reason']}")
    lines.append(f"  note: {info['not_attributable']}")
    lines.append(f"  needs: {info['needs']}")
    return lines


def _table_text(info: Optional[Mapping[str, Any]]) -> List[str]:
    if not info:
        return []
    child = info["child_ehash_entries"]
    lines = ["", f"TCP table     the host's: {info['host_buckets'] if info['host_buckets'] is not None else '-'} buckets; "
             f"tcp_child_ehash_entries {child if child is not None else '- (none on this kernel)'}"]
    if info.get("host_error"):
        lines.append(f"  host        {info['host_error']}")
    if info.get("namespaces_not_sampled"):
        lines.append(f"  namespaces  not sampled: {info['namespaces_not_sampled']}")
    else:
        lines.append(f"  sampled     {info['sampled']} namespaces: {info['sharing_host_table']} share the host's "
                     f"table, {len(info['own_table'])} have their own")
        for kind, title in (("sharing", "sharing the host's table"), ("own_table", "with a table of its own")):
            dump = info["dump_ms"][kind]
            if dump["timed"]:
                lines.append(f"  dump        {dump['median_wall']} ms wall, {dump['median_cpu']} ms CPU per namespace "
                             f"{title} (median of {dump['timed']})")
        if info["estimated_cpu_ms_per_run"] is not None:
            lines.append(f"  per run     {info['dumped_per_run']} namespaces dumped: about "
                         f"{info['estimated_cpu_ms_per_run']} ms of CPU")
        for entry in info["not_read"]:
            lines.append(f"  not read    {entry['namespace']}: {entry['reason']}")
    lines.append(f"  advice      {info['advice']}")
    return lines

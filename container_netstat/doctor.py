"""What an operator needs when numbers look odd: scopes on this kernel, runtime, and who failed."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from container_netstat.records import Snapshot
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
           unavailable: Optional[str] = None, transfer: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The doctor report as plain data (the CLI prints it as JSON or text). ``transfer``: where
    the falcon-agent's transfer is and whether it answers Transfer.Ping (transfer.describe)."""
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

"""The /proc half shared by the two comparison collectors, ``naive.py`` and ``floor.py``.

Written apart from the package on purpose, with the standard library only, so that the
benchmark's equality check compares independent readings. Given each running
container's pid, it reads /proc/<pid>/net/{sockstat,sockstat6,snmp,netstat} once per
network namespace (namespaces are told apart by the inode of their sockstat entry),
skips the host's namespace, and prints the same open-falcon array as
``container-netstat collect --dry-run`` with its default metric groups (basic gauges
and counters): the same metric names, the same tags (``namespace=,pod=`` for a
Kubernetes pod, else ``container=<name>``), the same kernel-dependent scope of ``tw``
and ``sockets: used``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

PREFIX = "container.net."
Sections = Dict[str, Dict[str, int]]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")
# (metric, file, section, field): monotonic counters, emitted where the kernel has them.
COUNTERS = (
    ("tcp.active_opens", "snmp", "Tcp", "ActiveOpens"),
    ("tcp.passive_opens", "snmp", "Tcp", "PassiveOpens"),
    ("tcp.attempt_fails", "snmp", "Tcp", "AttemptFails"),
    ("tcp.estab_resets", "snmp", "Tcp", "EstabResets"),
    ("tcp.retrans_segs", "snmp", "Tcp", "RetransSegs"),
    ("tcp.in_errs", "snmp", "Tcp", "InErrs"),
    ("tcp.out_rsts", "snmp", "Tcp", "OutRsts"),
    ("tcp.listen_overflows", "netstat", "TcpExt", "ListenOverflows"),
    ("tcp.listen_drops", "netstat", "TcpExt", "ListenDrops"),
    ("tcp.timeouts", "netstat", "TcpExt", "TCPTimeouts"),
    ("tcp.abort_on_data", "netstat", "TcpExt", "TCPAbortOnData"),
    ("tcp.abort_on_close", "netstat", "TcpExt", "TCPAbortOnClose"),
    ("tcp.abort_on_timeout", "netstat", "TcpExt", "TCPAbortOnTimeout"),
    ("udp.in_errors", "snmp", "Udp", "InErrors"),
    ("udp.rcvbuf_errors", "snmp", "Udp", "RcvbufErrors"),
    ("udp.sndbuf_errors", "snmp", "Udp", "SndbufErrors"),
    ("udp.no_ports", "snmp", "Udp", "NoPorts"),
)


@dataclass(frozen=True)
class Running:
    """A running container as a discovery step found it."""

    id: str
    name: str
    network_mode: str
    labels: Mapping[str, str]
    pid: int


def parse_sockstat(text: str) -> Sections:
    """``SECTION: name value name value ...`` lines."""
    out: Sections = {}
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        words = rest.split()
        if words:
            out[head] = {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    return out


def parse_snmp(text: str) -> Sections:
    """Header line, value line, same ``Prefix:``."""
    out: Sections = {}
    lines = [line for line in text.splitlines() if line.strip()]
    for header, values in zip(lines[0::2], lines[1::2]):
        head, _, names = header.partition(":")
        out[head] = dict(zip(names.split(), (int(v) for v in values.partition(":")[2].split())))
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sanitize(value: str, limit: int = 64) -> str:
    safe = _UNSAFE.sub("_", value) or "_"
    if len(safe) <= limit:
        return safe
    return safe[: limit - 9] + "-" + hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _tags(members: List[Running]) -> str:
    def key(c: Running) -> Tuple[bool, bool, str]:
        return (c.labels.get("io.kubernetes.docker.type") != "podsandbox",
                c.network_mode.startswith("container:"), c.name)

    members = sorted(members, key=key)
    for c in members:
        pod, namespace = c.labels.get("io.kubernetes.pod.name"), c.labels.get("io.kubernetes.pod.namespace")
        if pod and namespace:
            return f"namespace={sanitize(namespace)},pod={sanitize(pod)}"
    return f"container={sanitize(members[0].name)}"


def _per_netns(release: str) -> Dict[str, bool]:
    match = re.match(r"(\d+)\.(\d+)", release)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    return {"tw": version >= (4, 13), "sockets_used": version >= (4, 16)}


def _values(files: Dict[str, Sections], per_netns: Dict[str, bool]) -> List[Tuple[str, int, str]]:
    sockstat, six, snmp = files["sockstat"], files["sockstat6"], files["snmp"]
    values = [
        ("tcp.established", snmp["Tcp"]["CurrEstab"], "GAUGE"),
        ("tcp.inuse", sockstat["TCP"]["inuse"] + six.get("TCP6", {}).get("inuse", 0), "GAUGE"),
    ]
    if per_netns["tw"]:
        values.append(("tcp.timewait", sockstat["TCP"]["tw"], "GAUGE"))
    values.append(("udp.inuse", sockstat["UDP"]["inuse"] + six.get("UDP6", {}).get("inuse", 0), "GAUGE"))
    if per_netns["sockets_used"]:
        values.append(("sockets.used", sockstat["sockets"]["used"], "GAUGE"))
    for metric, file, section, name in COUNTERS:
        value = files[file].get(section, {}).get(name)
        if value is not None:
            values.append((metric, value, "COUNTER"))
    return values


def collect(running: List[Running], listed: int, proc: str = "/proc", step: int = 60,
            states: bool = False) -> List[Dict[str, Any]]:
    """The open-falcon items for these containers (``listed``: how many the runtime listed).

    ``states``: also the states group, by one sock_diag dump inside each namespace that
    holds a TCP socket (diag_reference.py), as the package's default run does."""
    release = _read(os.path.join(proc, "sys/kernel/osrelease")).strip()
    per_netns = _per_netns(release)
    host_path = os.path.join(proc, "1/net/sockstat")
    host_key = os.stat(host_path).st_ino
    host = parse_sockstat(_read(host_path))

    groups: Dict[int, List[Running]] = {}
    for c in running:
        if c.pid <= 0 or c.network_mode == "host":
            continue
        try:
            key = os.stat(os.path.join(proc, str(c.pid), "net/sockstat")).st_ino
        except OSError:
            continue  # exited since it was listed
        if key != host_key:
            groups.setdefault(key, []).append(c)

    endpoint = sanitize(socket.gethostname(), 255)
    now = int(time.time())

    def item(metric: str, value: int, tags: str = "", counter_type: str = "GAUGE") -> Dict[str, Any]:
        return {"endpoint": endpoint, "metric": PREFIX + metric, "timestamp": now, "step": step,
                "value": value, "counterType": counter_type, "tags": tags}

    items = [item("host.tcp." + f, host["TCP"][f]) for f in ("orphan", "alloc", "mem")]
    items.append(item("host.udp.mem", host["UDP"]["mem"]))
    if not per_netns["tw"]:
        items.append(item("host.tcp.timewait", host["TCP"]["tw"]))
    if not per_netns["sockets_used"]:
        items.append(item("host.sockets.used", host["sockets"]["used"]))

    reported = 0
    for members in groups.values():
        for c in members:  # any member's pid will do; one may have exited
            base = os.path.join(proc, str(c.pid), "net")
            try:
                files = {
                    "sockstat": parse_sockstat(_read(os.path.join(base, "sockstat"))),
                    "sockstat6": parse_sockstat(_read(os.path.join(base, "sockstat6")))
                    if os.path.exists(os.path.join(base, "sockstat6")) else {},
                    "snmp": parse_snmp(_read(os.path.join(base, "snmp"))),
                    "netstat": parse_snmp(_read(os.path.join(base, "netstat"))),
                }
            except OSError:
                continue
            tags = _tags(members)
            items += [item(metric, value, tags, kind) for metric, value, kind in _values(files, per_netns)]
            if states:
                import diag_reference

                sockstat, six = files["sockstat"], files["sockstat6"]
                held = sockstat["TCP"]["inuse"] + sockstat["TCP"]["tw"] + six.get("TCP6", {}).get("inuse", 0)
                try:
                    found = diag_reference.states(c.pid, proc) if held else diag_reference.empty()
                except OSError:
                    found = {}  # gone meanwhile: no states, as the package leaves them out
                items += [item(metric, value, tags) for metric, value in found.items() if value is not None]
            reported += 1
            break
    items += [item("collector.containers", listed), item("collector.namespaces", reported),
              item("collector.failed", 0)]
    return items


def emit(items: List[Dict[str, Any]], out: Optional[Any] = None) -> None:
    (out or sys.stdout).write(json.dumps(items, allow_nan=False, separators=(",", ":")) + "\n")

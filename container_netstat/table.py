"""A human view of a snapshot: one aligned line per container network namespace.

Built from the same samples as the other outputs, so it shows exactly what would be
pushed. A column whose metric was not collected (CLOSE_WAIT without the states group,
LISTEN_FILL without a listener or without sock_diag, TIME_WAIT on a kernel where it is
host-wide) reads ``-``. With the hostnet group, host-network containers and pods follow
in a section of their own, from their ``hostnet.*`` metrics (the sockets their processes
hold): their TIME_WAIT is no process's, so it always reads ``-`` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from container_netstat.metrics import PREFIX
from container_netstat.records import Sample

WIDTH = 80
MIN_NAME = 16
GAP = "  "
BOLD, YELLOW, RESET = "\033[1m", "\033[33m", "\033[0m"


@dataclass(frozen=True)
class Column:
    """A numeric column: its header (lowercased, the --sort key) and the metric it shows."""

    header: str
    metric: str
    optional: bool = False  # shown only when some namespace has the metric
    hostnet: Optional[str] = None  # the metric a host-network row shows here, if any


COLUMNS: Tuple[Column, ...] = (
    Column("ESTAB", PREFIX + "tcp.established", hostnet=PREFIX + "hostnet.tcp.state.established"),
    Column("INUSE", PREFIX + "tcp.inuse", hostnet=PREFIX + "hostnet.tcp.inuse"),
    Column("TIME_WAIT", PREFIX + "tcp.timewait"),
    Column("UDP", PREFIX + "udp.inuse", hostnet=PREFIX + "hostnet.udp.inuse"),
    Column("CLOSE_WAIT", PREFIX + "tcp.state.close_wait", hostnet=PREFIX + "hostnet.tcp.state.close_wait"),
    # The fullest listener's accept queue in percent of its backlog: above 100 SYNs are dropped.
    Column("LISTEN_FILL", PREFIX + "tcp.listen.fill_max_pct", hostnet=PREFIX + "hostnet.tcp.listen.fill_max_pct"),
)
HOSTNET_PREFIX = PREFIX + "hostnet."
HOSTNET_TITLE = "host network, the sockets its processes hold:"
NAME = "name"
SORT_KEYS: Tuple[str, ...] = (NAME, *(c.header.lower() for c in COLUMNS))
DEFAULT_SORT = "inuse"
# Values worth a colour: a CLOSE_WAIT is an application not closing (any non-zero count);
# a listener at or above 80 % of its backlog is about to drop connections.
_WARN = {"close_wait": 1, "listen_fill": 80}

_COLLECTOR = {
    "containers": PREFIX + "collector.containers",
    "namespaces": PREFIX + "collector.namespaces",
    "failed": PREFIX + "collector.failed",
}


@dataclass(frozen=True)
class Row:
    """One namespace: its display name and its values by column header."""

    name: str
    values: Dict[str, Optional[int]]
    hostnet: bool = False  # a host-network container or pod (hostnet.* metrics)


def display_name(tags: Sequence[Tuple[str, str]]) -> str:
    """``namespace/pod`` for a pod, the container's name otherwise, ``k=v,...`` for anything else."""
    found = dict(tags)
    if set(found) == {"namespace", "pod"}:
        text = f"{found['namespace']}/{found['pod']}"
    elif set(found) == {"container"}:
        text = found["container"]
    else:
        text = ",".join(f"{k}={v}" for k, v in sorted(found.items()))
    return printable(text)


def printable(text: str) -> str:
    """Printable ASCII only: a name from a label must not move the cursor or change colours."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def rows(samples: Iterable[Sample]) -> Tuple[List[Row], Dict[str, int]]:
    """Group the samples by namespace (their tags); untagged host/collector ones go to the summary."""
    wanted = {c.metric: c.header for c in COLUMNS}
    wanted_hostnet = {c.hostnet: c.header for c in COLUMNS if c.hostnet}
    by_tags: Dict[Tuple[Tuple[str, str], ...], Dict[str, Optional[int]]] = {}
    hostnet: Dict[Tuple[Tuple[str, str], ...], Dict[str, Optional[int]]] = {}
    summary: Dict[str, int] = {}
    collector = {metric: key for key, metric in _COLLECTOR.items()}
    for sample in samples:
        if not sample.tags:
            if sample.metric in collector:
                summary[collector[sample.metric]] = sample.value
            continue
        if sample.metric.startswith(HOSTNET_PREFIX):
            own = hostnet.setdefault(tuple(sorted(sample.tags)), {})
            if sample.metric in wanted_hostnet:
                own[wanted_hostnet[sample.metric]] = sample.value
            continue
        values = by_tags.setdefault(tuple(sorted(sample.tags)), {})
        if sample.metric in wanted:
            values[wanted[sample.metric]] = sample.value
    found = [Row(display_name(tags), values) for tags, values in by_tags.items()]
    found += [Row(display_name(tags), values, hostnet=True) for tags, values in hostnet.items()]
    return found, summary


def sort_rows(table: List[Row], key: str = DEFAULT_SORT) -> List[Row]:
    """By name ascending, or by a numeric column descending (missing values last), ties by name."""
    if key not in SORT_KEYS:
        raise ValueError(f"cannot sort by {key!r}: choose from {', '.join(SORT_KEYS)}")
    if key == NAME:
        return sorted(table, key=lambda r: r.name)
    header = key.upper()

    def order(row: Row) -> Tuple[int, int, str]:
        value = row.values.get(header)
        return (value is None, -(value or 0), row.name)

    return sorted(table, key=order)


def _shorten(text: str, width: int) -> str:
    """Cut the middle, keeping both ends: a pod's namespace and its generated suffix."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 2 + 1) // 2
    tail = width - 2 - head
    return text[:head] + ".." + (text[-tail:] if tail else "")


def render(
    samples: Iterable[Sample], sort: str = DEFAULT_SORT, width: int = WIDTH, color: bool = False
) -> str:
    """The table as text (no trailing newline): a header, one line per namespace, a summary."""
    table, summary = rows(samples)
    shown = [c for c in COLUMNS if not c.optional or any(c.header in r.values for r in table)]
    cells = {id(r): [_cell(r.values.get(c.header)) for c in shown] for r in table}
    widths = {c.header: max([len(c.header), *(len(cells[id(r)][i]) for r in table)]) for i, c in enumerate(shown)}
    numbers = sum(widths.values()) + len(GAP) * len(shown)
    longest = max([len("NAME"), *(len(r.name) for r in table)])
    name_width = min(longest, max(MIN_NAME, width - numbers))

    def line(name: str, values: List[str], paint: Optional[List[str]] = None) -> str:
        parts = [name.ljust(name_width)]
        for i, column in enumerate(shown):
            pad = " " * (widths[column.header] - len(values[i]))
            parts.append(pad + (paint[i] + values[i] + RESET if paint and paint[i] else values[i]))
        return GAP.join(parts).rstrip()

    header = line("NAME", [c.header for c in shown])
    out = [f"{BOLD}{header}{RESET}" if color else header]
    ordered = sort_rows(table, sort)
    for section in (False, True):
        part = [r for r in ordered if r.hostnet == section]
        if section and part:
            out.append(HOSTNET_TITLE)
        for row in part:
            values = cells[id(row)]
            paint = None
            if color:
                paint = [YELLOW if _warns(c.header, row.values.get(c.header)) else "" for c in shown]
            out.append(line(_shorten(row.name, name_width), values, paint))
    out.append(_summary(summary, sum(1 for r in table if not r.hostnet), sum(1 for r in table if r.hostnet)))
    return "\n".join(out)


def _warns(header: str, value: Optional[int]) -> bool:
    threshold = _WARN.get(header.lower())
    return threshold is not None and value is not None and value >= threshold


def _cell(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def _summary(summary: Dict[str, int], shown: int, hostnet: int = 0) -> str:
    namespaces = summary.get("namespaces", shown)
    parts = [f"{namespaces} namespace{'s' if namespaces != 1 else ''}"]
    if "containers" in summary:
        parts.append(f"{summary['containers']} running containers")
    if hostnet:
        parts.append(f"{hostnet} on the host network")
    if summary.get("failed"):
        parts.append(f"{summary['failed']} could not be read")
    return ", ".join(parts)

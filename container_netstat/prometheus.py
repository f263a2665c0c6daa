"""Prometheus text exposition of a snapshot, and the atomic textfile write node_exporter needs.

Rules from node_exporter's textfile collector and the Prometheus server (docs/facts.rst,
"node_exporter's textfile collector"):

- node_exporter reads ``*.prom`` files from ``--collector.textfile.directory`` on every scrape
  and skips a whole file that has sample timestamps: none are written.
- A scrape may come at any moment, so the file is written to a temporary name in the same
  directory (ending in ``.tmp``, which the collector ignores) and renamed over the old one:
  a reader sees the old file or the new one, never a mix.
- kubelet serves cAdvisor's ``container_network_tcp_usage_total`` and friends as 0 (its tcp
  and udp metrics are disabled): every name here starts with ``container_netstat_`` so it
  never collides with one of those.
- Labels are the falcon tags unsanitized (Prometheus label values may hold any UTF-8); the
  exposition library escapes them. ``namespace``, ``pod`` and ``container`` are also target
  labels under Kubernetes service discovery: without ``honor_labels`` a server renames ours
  ``exported_*`` (see docs/outputs.rst).
- The run's own health beside its timestamp (its duration, the namespaces it read and those it
  skipped) is written only here, as gauges: the open-falcon items stay what they were, and a
  dashboard reads them from the same scrape as the values they qualify (docs/metrics.rst,
  "The run's own health").
"""

from __future__ import annotations

import logging
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from container_netstat import metrics
from container_netstat.errors import ContainerNetstatError
from container_netstat.records import Sample, Snapshot
from container_netstat.safedir import SafeDir, SafeDirError

log = logging.getLogger(__name__)

NAME_PREFIX = "container_netstat_"
TIMESTAMP_METRIC = NAME_PREFIX + "collector_timestamp_seconds"
DURATION_METRIC = NAME_PREFIX + "collector_duration_seconds"
READ_METRIC = NAME_PREFIX + "collector_namespaces_read"
SKIPPED_METRIC = NAME_PREFIX + "collector_namespaces_skipped"
# The gauges render() writes itself, not from the catalogue: name -> HELP.
HEALTH_METRICS = (
    (TIMESTAMP_METRIC, "Unix time of the run that wrote these values"),
    (DURATION_METRIC, "Seconds from the start of the run that wrote these values to the building of its output"),
    (READ_METRIC, "Container network namespaces the run read"),
    (SKIPPED_METRIC, "Containers whose namespace the run did not read: exited during the run, "
                     "unreadable, or not reached before its deadline"),
)
TEXTFILE_MODE = 0o644
# A temporary file older than this was left by a run that was killed before its rename.
STALE_TEMP_SECONDS = 600

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class TextfileError(ContainerNetstatError):
    """The textfile could not be written (or its path is not one we may replace)."""


def metric_name(falcon_name: str) -> str:
    """``container.net.tcp.inuse`` -> ``container_netstat_tcp_inuse`` (counters get ``_total`` later)."""
    short = falcon_name[len(metrics.PREFIX):] if falcon_name.startswith(metrics.PREFIX) else falcon_name
    return NAME_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", short)


def label_name(key: str) -> str:
    """A tag key as a legal label name: ``[a-zA-Z_][a-zA-Z0-9_]*``, never the reserved ``__`` prefix."""
    name = _LABEL_UNSAFE.sub("_", key) or "_"
    if name[0].isdigit():
        name = "_" + name
    return "tag" + name if name.startswith("__") else name


def label_value(value: str) -> str:
    """Any text, as valid UTF-8 (a lone surrogate from a Docker label becomes ``?``)."""
    return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value


def _help_texts() -> Dict[str, str]:
    texts = {
        metrics.PREFIX + m.name: f"{m.meaning} ({m.reads})"
        for m in (*metrics.NETNS_METRICS, *metrics.HOST_METRICS)
    }
    texts.update({metrics.PREFIX + m.name: f"host-network container or pod: {m.meaning} ({m.reads})"
                  for m in metrics.HOSTNET_METRICS})
    texts.update({metrics.PREFIX + name: meaning for name, meaning in metrics.COLLECTOR_METRICS})
    return texts


@dataclass(frozen=True)
class RunHealth:
    """The run's own figures for the health gauges, fixed once, so that every Prometheus output
    of a run (``--format prometheus`` with ``--textfile``) writes the same bytes."""

    duration: float  # seconds from the start of the run to the building of its output
    namespaces_read: int
    namespaces_skipped: int

    @classmethod
    def of(cls, snapshot: Snapshot, started: float, clock: Callable[[], float] = time.monotonic) -> "RunHealth":
        """``started`` is the run's start on ``clock``. Skipped: gone (exited during the run),
        failed (unreadable), and ``late`` (not read before the run's deadline)."""
        skipped = len(snapshot.gone) + len(snapshot.failed) + len(snapshot.late)
        # A clock cannot go back, but a caller's ``started`` may be from another one: never negative.
        return cls(round(max(0.0, clock() - started), 6), len(snapshot.namespaces), skipped)


class _Families:
    """The object ``generate_latest`` reads: anything with ``collect()``."""

    def __init__(self, families: List[object]) -> None:
        self._families = families

    def collect(self) -> Iterator[object]:
        return iter(self._families)


def render(samples: Iterable[Sample], collected_at: Optional[float] = None,
           health: Optional[RunHealth] = None) -> bytes:
    """The snapshot in the Prometheus text format (``# HELP``, ``# TYPE``, no timestamps).

    Series are grouped by metric; within a metric every series carries the union of the
    label names, an absent one as ``""`` (what node_exporter serves anyway, and what
    Prometheus treats as absent). A second sample with the same name and labels is
    dropped with a warning: a duplicate series makes node_exporter fail the file.
    ``collected_at`` adds ``container_netstat_collector_timestamp_seconds``, the run's time
    as a value, so a stale file can be alerted on; ``health`` adds the run's duration and its
    namespaces read and skipped.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest

    helps = _help_texts()
    grouped: Dict[Tuple[str, str], Dict[Tuple[Tuple[str, str], ...], int]] = {}
    duplicated: Dict[Tuple[Tuple[str, str], ...], None] = {}
    for sample in samples:
        named: Dict[str, str] = {}
        for key, text in sorted(sample.tags):
            named.setdefault(label_name(key), label_value(text))
        labels = tuple(sorted(named.items()))
        series = grouped.setdefault((sample.metric, sample.counter_type), {})
        if labels in series:
            duplicated[labels] = None
            continue
        series[labels] = sample.value
    for labels in duplicated:
        # repr() keeps a label's newlines and quotes out of the line; a long value is cut.
        shown = ",".join(f"{k}={v[:60]!r}" + ("..." if len(v) > 60 else "") for k, v in labels)
        log.warning("%s: two namespaces with these labels; the series of the first only are written", shown)
    families: List[object] = []
    for (falcon_name, counter_type), series in sorted(grouped.items()):
        names = sorted({k for labels in series for k, _ in labels})
        help_text = helps.get(falcon_name, falcon_name)
        kind = CounterMetricFamily if counter_type == metrics.COUNTER else GaugeMetricFamily
        family = kind(metric_name(falcon_name), help_text, labels=names)
        for labels, number in sorted(series.items()):
            present: Mapping[str, str] = dict(labels)
            family.add_metric([present.get(n, "") for n in names], number)
        families.append(family)
    helps_of_health = dict(HEALTH_METRICS)
    own: List[Tuple[str, float]] = []
    if collected_at is not None:
        own.append((TIMESTAMP_METRIC, collected_at))
    if health is not None:
        own += [(DURATION_METRIC, health.duration),
                (READ_METRIC, health.namespaces_read), (SKIPPED_METRIC, health.namespaces_skipped)]
    families += [GaugeMetricFamily(name, helps_of_health[name], value=number) for name, number in own]
    return generate_latest(_Families(families))  # type: ignore[arg-type]


def write_textfile(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, fsync, rename,
    fsync the directory (safedir.py).

    A symbolic link at ``path`` is refused rather than replaced (the rename would
    replace the link itself, never write through it). The file is mode 0644 whatever
    the umask, for a node_exporter running as another user.
    """
    try:
        # The directory is the operator's to choose, a link included; the file in it is not.
        directory = SafeDir.open(path.parent, follow=True)
    except SafeDirError as err:
        raise TextfileError(f"cannot create a temporary file in {path.parent}: {err.reason}") from err
    with directory:
        try:
            found = directory.lstat(path.name)
        except SafeDirError as err:
            raise TextfileError(f"{path}: {err.reason}") from err
        if found is not None and stat.S_ISLNK(found.mode):
            raise TextfileError(f"{path} is a symbolic link: refusing to replace it")
        if found is not None and not found.regular:
            raise TextfileError(f"{path} is not a regular file")
        _remove_stale_temps(directory, path.name)
        try:
            directory.write(path.name, data, TEXTFILE_MODE, f".{path.name}.{secrets.token_hex(4)}.tmp")
        except SafeDirError as err:
            if err.op == "create":
                raise TextfileError(f"cannot create a temporary file in {path.parent}: {err.reason}") from err
            raise TextfileError(f"cannot write {path}: {err.reason}") from err


def _remove_stale_temps(directory: SafeDir, name: str) -> None:
    """Remove our temporary files that a killed run left behind (not a concurrent run's)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    try:
        listed = directory.list()
    except SafeDirError:
        return  # the write itself will report the problem
    for entry in listed:
        if entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp") and entry.regular \
                and entry.mtime < cutoff:
            try:
                directory.unlink(entry.name)
            except SafeDirError:
                continue
            log.info("removed %s, left by an interrupted run", directory.path / entry.name)

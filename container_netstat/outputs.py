"""Where a snapshot goes: the outputs behind one small interface.

Each output takes the run's samples, its open-falcon items and its collection time. The
JSON array (``--dry-run``, ``--format json``) and the push carry the items; the Prometheus
text (``--format prometheus``, ``--textfile``) and the table are built from the samples,
so every output shows exactly what would be pushed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, List, Optional, Protocol

from container_netstat import falcon
from container_netstat.records import Sample, Snapshot
from container_netstat.settings import Delivery, HostPaths

if TYPE_CHECKING:  # pragma: no cover
    from container_netstat.prometheus import RunHealth
    from container_netstat.deadline import Deadline
    from container_netstat.push import Outcome
    from container_netstat.spool import Spool
    from container_netstat.transfer import Check

log = logging.getLogger(__name__)

# Seconds of the run's deadline a push to the falcon-agent leaves for asking transfer once
# everything went: a transfer that answers does so in milliseconds, one that is away refuses
# at once or lets this run out (transfer.py).
CONFIRM_RESERVE = 1.5


class Output(Protocol):
    """One destination of a run's data."""

    carries_items: bool  # True if it needs the items (and so the endpoint)

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None: ...


class JsonOutput:
    """The open-falcon JSON array on a stream (the falcon-agent plugin reads it from stdout)."""

    carries_items = True

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None:
        self.stream.writelines(falcon.iter_dumps(items))


class PrometheusOutput:
    """The Prometheus text exposition format on a binary stream, as --textfile writes it."""

    carries_items = False
    health: "Optional[RunHealth]" = None  # the run's own gauges (with_health)

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None:
        from container_netstat import prometheus

        # Bytes, written as they are: a label value may hold an ANSI sequence, and the text
        # must be byte for byte what --textfile writes.
        self.stream.write(prometheus.render(samples, collected_at, self.health))


class TableOutput:
    """One aligned line per namespace, for a person."""

    carries_items = False

    def __init__(self, stream: IO[str], sort: str, width: Optional[int], color: bool) -> None:
        self.stream, self.sort, self.width, self.color = stream, sort, width, color

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None:
        from container_netstat import table

        self.stream.write(table.render(samples, self.sort, self.width or table.WIDTH, color=self.color) + "\n")


class TextfileOutput:
    """node_exporter's textfile, replaced atomically; TextfileError if it cannot be written."""

    carries_items = False
    health: "Optional[RunHealth]" = None  # the run's own gauges (with_health)

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None:
        from container_netstat import prometheus

        if not self.path.name.endswith(".prom"):
            log.warning("%s: node_exporter's textfile collector reads only *.prom files", self.path)
        prometheus.write_textfile(self.path, prometheus.render(samples, collected_at, self.health))


class PushOutput:
    """The spool replayed oldest first, then this run's items, by the run's one deadline (cli.py).

    To the falcon-agent, whose ``success`` says nothing about transfer (transfer.py), transfer
    is asked first: if none answers, every batch is spooled and nothing is sent; if none
    answers after the push, what was sent is kept for the next run too. ``outcome`` holds what
    the delivery did, for the exit code.
    """

    carries_items = True

    def __init__(self, delivery: Delivery, spool: "Spool", deadline: "Deadline", where: str,
                 paths: Optional[HostPaths] = None) -> None:
        self.delivery, self.spool, self.deadline, self.where = delivery, spool, deadline, where
        self.paths = paths or HostPaths()
        self.outcome: Optional["Outcome"] = None

    def emit(self, samples: List[Sample], items: List[falcon.Item], collected_at: int) -> None:
        from container_netstat import push

        d = self.delivery
        check = self._check()
        # Time kept back for asking transfer again once everything went.
        until = self.deadline.earlier(CONFIRM_RESERVE) if check is not None and check.learned else self.deadline
        why = check.before() if check is not None else None
        if why is not None:
            self.outcome = push.deliver(items, collected_at, push.Refusing(why), self.spool, d.batch_size,
                                        until, where=self.where)
            return
        confirm = check.after if check is not None and check.learned else None
        sender = push.HttpSender(push.Target(d.falcon_url, d.connect_timeout, d.read_timeout))
        try:
            self.outcome = push.deliver(items, collected_at, sender, self.spool, d.batch_size,
                                        until, where=self.where, confirm=confirm)
        finally:
            sender.close()

    def _check(self) -> "Optional[Check]":
        """The transfer check, for a push to the falcon-agent's /v1/push only: transfer's own
        /api/push reports what it took, and Nightingale is no agent."""
        from container_netstat import agent, transfer

        d = self.delivery
        if agent.hostname_url(d.falcon_url) is None:
            return None
        return transfer.Check.learn(self.paths, d.transfer_addrs, d.agent_config, d.connect_timeout, self.deadline)


def with_health(chosen: List[Output], snapshot: "Snapshot", started: float) -> None:
    """Give the Prometheus outputs the run's own health gauges (prometheus.RunHealth), one
    reading for all: ``started`` is the run's ``time.monotonic()`` at its start."""
    wanting = [output for output in chosen if isinstance(output, (PrometheusOutput, TextfileOutput))]
    if not wanting:  # the JSON and table outputs never load the Prometheus module
        return
    from container_netstat.prometheus import RunHealth

    health = RunHealth.of(snapshot, started)
    for output in wanting:
        output.health = health

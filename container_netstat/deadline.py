"""The run's one deadline: a monotonic time fixed at the start, from which every step takes
its budget (listing, each namespace, each dump, the agent lookup, each push, the replay).

A step asks ``budget(cap)`` for min(cap, what is left) and gets ``OutOfTime`` once nothing is
left: the caller then skips what it has not done, says so in one line, and the run ends by
the deadline instead of by the slowest peer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from container_netstat.errors import ContainerNetstatError


class OutOfTime(ContainerNetstatError):
    """The run's deadline left no time for this step."""


@dataclass(frozen=True)
class Deadline:
    """The monotonic time by which the run must be done."""

    end: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return self.end - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def budget(self, cap: float, what: str = "this step") -> float:
        """min(cap, seconds left); OutOfTime when none are left."""
        left = self.remaining()
        if left <= 0:
            raise OutOfTime(f"the run's deadline was reached before {what}")
        return min(cap, left)


# Long enough for a run that is not stalled, well inside cron's minute.
DEFAULT_SECONDS = 40.0

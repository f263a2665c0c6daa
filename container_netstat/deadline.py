"""The run's one deadline: a monotonic time fixed at the start, from which every step takes
its budget (listing, each namespace, each dump, the agent lookup, each push, the replay).

A step asks ``budget(cap)`` for min(cap, what is left) and gets ``OutOfTime`` once nothing is
left: the caller then skips what it has not done, says so in one line, and the run ends by
the deadline instead of by the slowest peer.

A socket timeout bounds each ``recv``, not a whole answer: a peer that sends one byte a second
keeps a reader with a 2 s timeout waiting for ever, and ``getaddrinfo`` takes no timeout at
all. ``within`` bounds such a call in total: it runs in a daemon thread that the run stops
waiting for once its budget is spent (docs/reliability.rst, "One deadline").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, TypeVar

from container_netstat.errors import ContainerNetstatError

T = TypeVar("T")


class OutOfTime(ContainerNetstatError):
    """The run's deadline left no time for this step."""


class StepTimeout(ContainerNetstatError):
    """A step did not end within its budget; it was left running in a daemon thread."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what}: not done within {seconds:.1f} s")
        self.what = what
        self.seconds = seconds


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

    def earlier(self, seconds: float) -> "Deadline":
        """The same clock, ``seconds`` sooner: a part of the run that must leave time for the rest."""
        return Deadline(self.end - seconds, self.clock)


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """``call()``'s result or exception, or StepTimeout once ``seconds`` have passed.

    The call runs in a daemon thread. One that overruns is not stopped (Python cannot stop a
    thread blocked in ``recv`` or ``getaddrinfo``); it is left behind and ends with the
    process, so a caller must not use what the call uses (a connection, a session) again.
    """
    done = threading.Event()
    result: List[T] = []
    error: List[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread as it is
            error.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name=f"within: {what}", daemon=True).start()
    if not done.wait(max(0.0, seconds)):
        raise StepTimeout(what, seconds)
    if error:
        raise error[0]
    return result[0]


# Long enough for a run that is not stalled, well inside cron's minute.
DEFAULT_SECONDS = 40.0
# The share of the deadline a pushing run keeps back from collection for the agent lookup and
# the delivery of what was read: without it a slow collection would leave nothing to send.
DELIVERY_SHARE = 0.25

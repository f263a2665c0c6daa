"""deadline.py: the run's one deadline, and calls bounded in total by it."""

from __future__ import annotations

import socket
import threading
import time
from typing import List

import pytest

from container_netstat.deadline import DEFAULT_SECONDS, Deadline, OutOfTime, StepTimeout, within


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_the_cap_or_what_is_left_and_none_left_is_out_of_time() -> None:
    clock = Clock()
    deadline = Deadline.after(10, clock)
    assert deadline.budget(3, "the list") == 3
    clock.now += 8
    assert deadline.budget(3, "the list") == pytest.approx(2)
    clock.now += 2
    assert deadline.expired()
    with pytest.raises(OutOfTime, match="deadline was reached before the list"):
        deadline.budget(3, "the list")


def test_earlier_is_the_same_clock_sooner() -> None:
    clock = Clock()
    deadline = Deadline.after(40, clock)
    collect_by = deadline.earlier(10)
    assert collect_by.remaining() == pytest.approx(30)
    clock.now += 31
    assert collect_by.expired() and not deadline.expired()
    assert DEFAULT_SECONDS < 60  # a cron minute


def test_within_gives_the_result_or_the_calls_own_exception() -> None:
    assert within(5, "adding", lambda: 1 + 1) == 2
    with pytest.raises(KeyError):
        within(5, "a lookup", lambda: {}["missing"])


def test_within_stops_waiting_for_a_recv_that_never_returns() -> None:
    # A real socket with no data: recv blocks for ever, as on a peer that never answers.
    ours, theirs = socket.socketpair()
    started = time.monotonic()
    try:
        with pytest.raises(StepTimeout, match=r"reading: not done within 0\.5 s"):
            within(0.5, "reading", lambda: ours.recv(1))
        assert 0.5 <= time.monotonic() - started < 1.5
        left = [t for t in threading.enumerate() if t.name == "within: reading"]
        assert left and all(t.daemon for t in left)  # it cannot keep the process alive
    finally:
        theirs.close()
        ours.shutdown(socket.SHUT_RDWR)
        ours.close()


def test_within_with_no_time_left_does_not_wait() -> None:
    release = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(StepTimeout):
            within(-1, "nothing", lambda: release.wait(10))
        assert time.monotonic() - started < 0.5
    finally:
        release.set()


def test_within_a_call_that_ends_in_time_leaves_no_thread() -> None:
    seen: List[str] = []
    within(5, "quick", lambda: seen.append(threading.current_thread().name))
    assert seen == ["within: quick"]
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "within: quick"]

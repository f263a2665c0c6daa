"""read_namespaces on real containers: worker threads, the run's deadline, a dump that
overruns, a worker that cannot return home, and the caller's pid check."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, List

import pytest

from conftest import pid_of
from container_netstat import tcp_reader
from container_netstat.deadline import Deadline
from container_netstat.namespaces import read_namespaces
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, Snapshot
from integration import workloads
from integration.test_collect_docker import background
from integration.test_states_docker import ss_figures

pytestmark = pytest.mark.docker

SELF = "/proc/thread-self/ns/net"


@pytest.fixture
def fleet(run_container: Any, holders: List[Any]) -> List[Any]:  # noqa: F811 - the fixture
    started = [run_container(name=f"wk-{i}", network_mode="none") for i in range(5)]
    for i, container in enumerate(started):
        holders.append(background(pid_of(container), workloads.hold(3 + i)))
    return started


def as_containers(started: List[Any]) -> List[Container]:
    return [Container(c.id, c.name, "none") for c in started]


def read(started: List[Any], **kwargs: Any) -> Snapshot:
    proc = ProcFS()
    reader = kwargs.pop("tcp", None)
    if reader is None:
        reader = tcp_reader.TcpReader(proc)
        assert reader.probe() is None
    return read_namespaces(as_containers(started), PidResolver(proc), proc, {"basic", "states"}, reader, **kwargs)


def states(snapshot: Snapshot) -> List[Any]:
    return [(ns.owner.name, ns.readings.tcp.summary if ns.readings.tcp else None) for ns in snapshot.namespaces]


def test_any_number_of_workers_gives_the_same_snapshot(fleet: List[Any]) -> None:
    home = os.stat(SELF).st_ino
    serial = read(fleet, workers=1, deadline=Deadline.after(30))
    assert [name for name, _ in states(serial)] == sorted(c.name for c in fleet)
    for container, (_, summary) in zip(sorted(fleet, key=lambda c: c.name), states(serial)):
        expected = ss_figures(pid_of(container))
        assert summary.states["established"] == expected["tcp.state.established"] == 2 * (3 + fleet.index(container))
    for workers in (2, 4):
        assert states(read(fleet, workers=workers, deadline=Deadline.after(30))) == states(serial)
    assert os.stat(SELF).st_ino == home and serial.late == ()


def test_namespaces_the_deadline_leaves_no_time_for_are_late(fleet: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        snapshot = read(fleet, workers=2, deadline=Deadline.after(0))
    assert snapshot.namespaces == () and sorted(snapshot.late) == sorted(c.name for c in fleet)
    lines = [r.getMessage() for r in caplog.records if "deadline came first" in r.getMessage()]
    assert len(lines) == 1 and all(c.name in lines[0] for c in fleet)


def test_a_dump_that_overruns_loses_only_that_namespaces_states(
    fleet: List[Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    victim = fleet[0]
    real = tcp_reader._replies

    def silent_for_victim(sock: Any, path: str, until: Deadline) -> Any:
        if victim.name in path:
            quiet = tcp_reader._netlink_socket()  # asked nothing: nothing comes, until the cap
            try:
                yield from real(quiet, path, until)
            finally:
                quiet.close()
        yield from real(sock, path, until)

    monkeypatch.setattr(tcp_reader, "_replies", silent_for_victim)
    monkeypatch.setattr(tcp_reader, "DUMP_SECONDS", 0.5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        snapshot = read(fleet, workers=2, deadline=Deadline.after(30))
    assert time.monotonic() - started < 0.5 + 10  # the cap, and a generous margin for the rest
    by_name = {ns.owner.name: ns for ns in snapshot.namespaces}
    assert set(by_name) == {c.name for c in fleet} and snapshot.failed == ()
    hit = by_name[victim.name].readings
    assert hit.tcp is None and "within its time" in hit.tcp_missing and hit.sockstat and hit.snmp
    assert all(by_name[c.name].readings.tcp is not None for c in fleet[1:])
    warned = [r.getMessage() for r in caplog.records if "TCP states left out" in r.getMessage()]
    assert len(warned) == 1 and victim.name in warned[0]


def test_a_worker_that_cannot_return_fails_its_namespace_and_a_fresh_thread_goes_on(fleet: List[Any]) -> None:
    reader = tcp_reader.TcpReader(ProcFS())
    assert reader.probe() is None
    real = reader._setns
    lost: List[str] = []

    def once_stuck(fd: int, kind: int) -> None:
        if fd == reader._home_fd and not lost:
            lost.append(threading.current_thread().name)  # the first way home does nothing
            return
        real(fd, kind)

    reader._setns = once_stuck
    home = os.stat(SELF).st_ino
    snapshot = read(fleet, tcp=reader, workers=1, deadline=Deadline.after(30))
    assert len(lost) == 1 and lost[0] != threading.main_thread().name
    (name, why), = snapshot.failed
    assert "could not return to its namespace" in why
    assert sorted([ns.owner.name for ns in snapshot.namespaces] + [name]) == sorted(c.name for c in fleet)
    assert all(ns.readings.tcp is not None for ns in snapshot.namespaces)
    assert os.stat(SELF).st_ino == home


def test_a_pid_the_caller_disowns_is_not_read(fleet: List[Any]) -> None:
    asked: List[Any] = []

    def still_ours(container: Container, pid: int) -> bool:
        asked.append((container.name, pid))
        return container.name != fleet[1].name

    snapshot = read(fleet, workers=2, deadline=Deadline.after(30), still_ours=still_ours)
    assert fleet[1].name in snapshot.gone
    assert sorted(ns.owner.name for ns in snapshot.namespaces) == sorted(c.name for c in fleet if c is not fleet[1])
    assert (fleet[1].name, pid_of(fleet[1])) in asked

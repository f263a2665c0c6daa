"""The sock_diag reader: its socket, its time bound, refusals, the worker threads and their
way home, on real netlink sockets and real network namespaces (``unshare -n``; root)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from container_netstat import metrics, namespaces, sockdiag, tcp_summary, tcp_reader
from container_netstat.deadline import Deadline
from container_netstat.errors import ContainerNetstatError
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, NetnsStats, Readings
from container_netstat.tcp_reader import DumpFailed, HomeLost, TcpReader

SELF = "/proc/thread-self/ns/net"

# A namespace of its own with a listener and three held connections: 7 TCP sockets.
HOLDER = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 7000)); srv.listen(8)
held = [socket.create_connection(("127.0.0.1", 7000)) for _ in range(3)]
held += [srv.accept()[0] for _ in range(3)]
print("ready", flush=True)
time.sleep(600)
"""


def root_only() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")


@pytest.fixture
def netns() -> Iterator[Callable[[], int]]:
    """Start processes each in a new network namespace holding HOLDER's sockets; their pids."""
    root_only()
    started: List[subprocess.Popen] = []

    def start() -> int:
        child = subprocess.Popen(["unshare", "-n", sys.executable, "-c", "import os; os.system('ip link set lo up "
                                  "2>/dev/null'); exec(" + repr(HOLDER) + ")"], stdout=subprocess.PIPE, text=True)
        started.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child.pid

    yield start
    for child in started:
        child.kill()
        child.wait()


def probed() -> TcpReader:
    reader = TcpReader(ProcFS())
    assert reader.probe() is None
    return reader


# -- the socket ----------------------------------------------------------------------------

def test_a_connected_socket_refuses_other_senders_an_unconnected_one_takes_them() -> None:
    root_only()
    ours = tcp_reader._netlink_socket()
    loose = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG)
    loose.bind((0, 0))
    attacker = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, sockdiag.NETLINK_SOCK_DIAG)
    forged = struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, 2, 1, ours.getsockname()[0], 0)
    try:
        with pytest.raises(ConnectionRefusedError):
            attacker.sendto(forged, (ours.getsockname()[0], 0))
        attacker.sendto(forged, (loose.getsockname()[0], 0))  # the test could fail: this one arrives
        loose.settimeout(5)
        data, (sender, _) = loose.recvfrom(100)
        assert data == forged and sender == attacker.getsockname()[0] != sockdiag.KERNEL_PORT
    finally:
        for s in (ours, loose, attacker):
            s.close()


def test_replies_that_never_come_end_by_the_deadline() -> None:
    root_only()
    sock = tcp_reader._netlink_socket()  # nothing asked: nothing will come
    started = time.monotonic()
    try:
        with pytest.raises(DumpFailed, match="within its time"):
            list(tcp_reader._replies(sock, "test", Deadline.after(0.3)))
    finally:
        sock.close()
    assert time.monotonic() - started < 0.3 + 2.0


def test_sequence_numbers_are_fresh_per_request() -> None:
    seqs = {tcp_reader._next_seq() for _ in range(1000)}
    assert len(seqs) == 1000 and 0 not in seqs


# -- refusals and bad endings, on a socket that answers what the test says ------------------

class Answering:
    """Stands for the netlink socket: takes requests, and ``_replies`` answers each with
    what ``script`` makes of (request kind, seq, port)."""

    def __init__(self, script: Callable[[int, int, int], List[bytes]]) -> None:
        self.script, self.requests = script, []  # type: Tuple[Any, List[Tuple[int, int]]]

    def getsockname(self) -> Tuple[int, int]:
        return (300, 0)

    def send(self, data: bytes) -> int:
        _len, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        self.requests.append((kind, seq))
        return len(data)

    def replies(self, sock: Any, path: str, until: Deadline) -> Iterator[Tuple[bytes, int]]:
        kind, seq = self.requests[-1]
        for data in self.script(kind, seq, 300):
            yield data, 0


def msg(state: int, seq: int, port: int, kind: int = sockdiag.SOCK_DIAG_BY_FAMILY) -> bytes:
    body = struct.pack("=BBBB", 2, state, 0, 0) + struct.pack(">HH", 1, 80) + bytes(44)
    body += struct.pack("=IIIII", 0, 0, 0, 0, 9)
    return struct.pack("=IHHII", 16 + len(body), kind, 2, seq, port) + body


def done(seq: int, port: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, 2, seq, port, code)


def err(seq: int, port: int, code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, sockdiag.NLMSG_ERROR, 0, seq, port, code) + bytes(16)


def run_dump(monkeypatch: pytest.MonkeyPatch, script: Callable[[int, int, int], List[bytes]]) -> Tuple[
        TcpReader, Answering, List[Any]]:
    fake = Answering(script)
    monkeypatch.setattr(tcp_reader, "_replies", fake.replies)
    reader = TcpReader(ProcFS())
    found: List[Any] = []
    reader._dump(fake, "test", tcp_reader.TCP, tcp_reader.EVERY, found.append, Deadline.after(5))  # type: ignore
    return reader, fake, found


def test_a_refusal_first_switches_to_the_v2_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(kind: int, seq: int, port: int) -> List[bytes]:
        if kind == sockdiag.TCPDIAG_GETSOCK:
            return [err(seq, port, -22)]
        return [msg(1, seq, port) + done(seq, port)]

    reader, fake, found = run_dump(monkeypatch, script)
    assert reader.request == "v2" and len(found) == 2  # one per family
    kinds = [k for k, _ in fake.requests]
    assert kinds == [sockdiag.TCPDIAG_GETSOCK, sockdiag.SOCK_DIAG_BY_FAMILY, sockdiag.SOCK_DIAG_BY_FAMILY]
    assert len({s for _, s in fake.requests}) == 3  # a fresh sequence number each


def test_a_refusal_after_records_is_a_failed_dump_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def script(kind: int, seq: int, port: int) -> List[bytes]:
        return [msg(1, seq, port, kind) + msg(8, seq, port, kind), err(seq, port, -1)]

    with pytest.raises(DumpFailed, match="refused after 2 records"):
        run_dump(monkeypatch, script)


@pytest.mark.parametrize("ending", ["cut", "intmin", "foreign done only", "no done"])
def test_a_bad_ending_is_a_failed_dump(monkeypatch: pytest.MonkeyPatch, ending: str) -> None:
    def script(kind: int, seq: int, port: int) -> List[bytes]:
        good = msg(1, seq, port, kind)
        return {
            "cut": [good[:50]],
            "intmin": [good + err(seq, port, -2**31)],
            "foreign done only": [good + done(seq + 1, port) + done(seq, port + 1)],
            "no done": [good],
        }[ending]

    with pytest.raises(DumpFailed):
        run_dump(monkeypatch, script)


def test_the_states_path_keeps_no_list_of_sockets() -> None:
    """200,000 sockets to 100 remotes, through the codec and the tally: the memory is the
    tally's, not the sockets' (as a list they took over 50 MB)."""
    def datagrams() -> Iterator[Tuple[bytes, int]]:
        for n in range(2000):
            yield b"".join(msg_to(n * 100 + i) for i in range(100)), 0
        yield done(5, 300), 0

    def msg_to(i: int) -> bytes:
        body = struct.pack("=BBBB", 2, 1, 0, 0) + struct.pack(">HH", 1, 8000 + i % 100) + bytes(44)
        body += struct.pack("=IIIII", 0, 0, 0, 0, i)
        return struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 2, 5, 300) + body

    tracemalloc.start()
    try:
        tally = tcp_summary.Tally()
        for s in sockdiag.Dump(5, 300).received(datagrams()):
            tally.add(s)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    summary = tally.summary()
    assert summary.states["established"] == 200_000 and summary.peer_max == 2000
    assert peak < 5 * 2**20, peak


# -- real namespaces: worker threads and the way home -----------------------------------------

def test_the_main_thread_never_enters_a_namespace(netns: Callable[[], int]) -> None:
    pid = netns()
    reader = probed()
    calls: List[Tuple[str, int]] = []
    real = reader._setns

    def watched(fd: int, kind: int) -> None:
        calls.append((threading.current_thread().name, os.fstat(fd).st_ino))
        real(fd, kind)

    reader._setns = watched
    home = os.stat(SELF).st_ino
    reading = reader.read(pid)  # from the main thread: the setns happen in a worker
    assert reading.path == tcp_reader.SOCK_DIAG and reading.summary.states["established"] == 6
    assert reading.summary.states["listen"] == 1
    assert calls and all(name != threading.main_thread().name for name, _ in calls)
    assert calls[0][1] == os.stat(f"/proc/{pid}/ns/net").st_ino and calls[-1][1] == home
    assert os.stat(SELF).st_ino == home


def stuck_reader() -> TcpReader:
    """A reader whose setns home does nothing: the thread stays in the container's namespace."""
    reader = probed()
    real = reader._setns

    def stuck(fd: int, kind: int) -> None:
        if fd != reader._home_fd:
            real(fd, kind)

    reader._setns = stuck
    return reader


def test_a_thread_that_cannot_return_stops(netns: Callable[[], int]) -> None:
    pid, other = netns(), netns()
    reader = stuck_reader()
    outcome: List[Any] = []

    def worker() -> None:
        for target in (pid, other):
            try:
                outcome.append(reader.read(target))
            except HomeLost as lost:
                outcome.append((lost, os.stat(SELF).st_ino))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    (first, where), (second, where_again) = outcome
    assert "could not return" in str(first) and where == os.stat(f"/proc/{pid}/ns/net").st_ino
    assert "could not return" in str(second) and where_again == where  # refused, not entered
    assert os.stat(SELF).st_ino != where  # the main thread is home


def test_the_pool_keeps_order_bounds_by_the_deadline_and_survives_lost_workers() -> None:
    order = list(range(12))

    def task(i: int) -> Callable[[], Any]:
        def run() -> Any:
            time.sleep(0.01 * (i % 3))
            if i in (2, 3):
                raise HomeLost(f"lost in {i}")
            if i == 5:
                raise ValueError("a bug")
            return namespaces._Outcome(failed=str(i))
        return run

    for workers in (1, 2, 4):
        with namespaces._Pool([task(i) for i in order], workers, Deadline.after(30)) as pool:
            results = pool.run()
        assert [r.failed for r in results if isinstance(r, namespaces._Outcome)] == \
            [str(i) for i in order if i not in (2, 3, 5)]
        assert isinstance(results[2], HomeLost) and isinstance(results[5], ValueError)
    started = time.monotonic()
    with namespaces._Pool([task(i) for i in order], 2, Deadline.after(0)) as pool:
        assert all(r is namespaces._LATE for r in pool.run())
    slow = [lambda: time.sleep(5) or namespaces._Outcome()] + [task(i) for i in range(6, 10)]
    with namespaces._Pool(slow, 1, Deadline.after(0.5)) as pool:
        results = pool.run()
    assert results[0] is namespaces._LATE and all(r is namespaces._LATE for r in results[1:])
    assert time.monotonic() - started < 0.5 + namespaces.JOIN_SLACK + 2.0


def test_a_failed_dump_leaves_out_only_the_states() -> None:
    owner = Container("id", "web", "bridge")
    proc = ProcFS()
    pid = os.getpid()
    readings = namespaces.read_netns(proc, pid, {metrics.BASIC})
    readings = Readings(readings.sockstat, readings.sockstat6, readings.snmp,
                        tcp_missing="sock_diag of web: replies ended before NLMSG_DONE")
    ns = NetnsStats(owner, ("web",), 1, 1, (("container", "web"),), readings)
    scopes = {"tw": "host", "sockets_used": "host"}
    names = [s.metric for s in metrics.netns_samples(ns, scopes, {metrics.BASIC, metrics.STATES})]
    assert "container.net.tcp.established" in names and "container.net.tcp.inuse" in names
    assert not [n for n in names if n.startswith("container.net.tcp.state.") or ".listen." in n or ".ports." in n]
    # the guard stays: states asked, never read, and no reason given, is still an error
    bare = NetnsStats(owner, ("web",), 1, 1, (("container", "web"),), Readings(sockstat=readings.sockstat,
                      sockstat6=readings.sockstat6, snmp=readings.snmp))
    with pytest.raises(ContainerNetstatError):
        metrics.netns_samples(bare, scopes, {metrics.BASIC, metrics.STATES})

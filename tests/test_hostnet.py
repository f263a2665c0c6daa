"""Host-network attribution: fd links -> socket inodes -> a container's figures.

Units on hand-made records and a fake fd tree, then real processes on this host: the
test's own sockets and those of child processes, read through the real /proc/<pid>/fd
and the real sock_diag dump (and /proc/net/tcp) of the namespace the tests run in.
Real containers are in tests/integration/test_hostnet_docker.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import pytest

from container_netstat import hostnet, records, tcp_reader
from container_netstat.tcp_summary import TcpSocket
from container_netstat.records import Container
from container_netstat.deadline import Deadline
from container_netstat.errors import ProcessGone
from container_netstat.hostnet import FdCapExceeded, FdsNotPermitted, Group, socket_inodes
from container_netstat.cgroup_members import MemberFinder
from container_netstat.tcp_reader import TcpReader
from container_netstat.procfs import ProcFS

PROC = ProcFS()


def inode(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


# -- fd links -----------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("socket:[123456]", 123456),
    ("socket:[0]", 0),
    ("pipe:[123456]", None),
    ("anon_inode:[eventpoll]", None),
    ("/tmp/socket:[5]", None),
    ("socket:[12x]", None),
    ("socket:[]", None),
])
def test_parse_fd_link(target: str, expected: object) -> None:
    assert hostnet.parse_fd_link(target) == expected


def fake_fds(root: Path, pid: int, links: Sequence[str]) -> ProcFS:
    d = root / str(pid) / "fd"
    d.mkdir(parents=True)
    for n, target in enumerate(links):
        os.symlink(target, d / str(n))
    (root / str(pid) / "stat").write_text(f"{pid} (app) S 1 1 1 0 -1\n")
    return ProcFS(str(root))


def test_fake_fd_tree(tmp_path: Path) -> None:
    proc = fake_fds(tmp_path, 42, ["/dev/null", "socket:[7]", "pipe:[8]", "socket:[9]", "socket:[7]"])
    assert socket_inodes(proc, 42) == {7, 9}


def test_fake_fd_tree_over_the_cap(tmp_path: Path) -> None:
    proc = fake_fds(tmp_path, 42, ["socket:[1]", "socket:[2]", "socket:[3]"])
    assert socket_inodes(proc, 42, cap=3) == {1, 2, 3}
    with pytest.raises(FdCapExceeded, match="process 42 has more than 2 open fds"):
        socket_inodes(proc, 42, cap=2)


def test_fake_pid_without_fd_dir_is_gone(tmp_path: Path) -> None:
    with pytest.raises(ProcessGone):
        socket_inodes(ProcFS(str(tmp_path)), 42)


# -- index and attribution (hand-made records) --------------------------------------------

PEER = (bytes([10, 0, 0, 1]), 5432)


def tcp(state: int, ino: int, peer: Tuple[bytes, int] = PEER, rq: int = 0, wq: int = 0) -> TcpSocket:
    return TcpSocket(state, peer, rq, wq, ino)


HOST = hostnet.index(
    [tcp(10, 1, (bytes(4), 0), rq=3, wq=4), tcp(1, 2), tcp(8, 3), tcp(8, 4), tcp(1, 5),
     tcp(6, 0), tcp(6, 0), tcp(3, 0), tcp(4, 0), tcp(1, 5)],  # TIME_WAIT, SYN_RECV, orphan: inode 0
    [tcp(7, 20, (bytes(4), 0)), tcp(1, 21)],
    tcp_reader.SOCK_DIAG,
)


def test_index_keeps_inode_zero_out() -> None:
    assert sorted(HOST.tcp) == [1, 2, 3, 4, 5]
    assert HOST.udp == {20, 21}


def test_attribute_counts_only_the_holders_sockets() -> None:
    fig = hostnet.attribute({1, 3, 4, 20, 999, 12345}, HOST)  # 999, 12345: pipes, unix sockets...
    assert (fig.tcp_inuse, fig.udp_inuse) == (3, 1)
    assert fig.tcp.states["listen"] == 1 and fig.tcp.states["close_wait"] == 2
    assert fig.tcp.states["time_wait"] == fig.tcp.states["syn_recv"] == fig.tcp.states["orphan"] == 0
    assert (fig.tcp.listeners, fig.tcp.queue_max, fig.tcp.fill_max_percent) == (1, 3, 75)
    assert fig.tcp.peer_max == 2  # the two CLOSE_WAIT share a remote; TIME_WAIT is not attributable


def test_shared_socket_counts_in_each_holder_and_once_in_their_union() -> None:
    a, b = {2, 5}, {5, 21}
    assert hostnet.attribute(a, HOST).tcp_inuse == 2
    assert hostnet.attribute(b, HOST).tcp_inuse == 1
    assert hostnet.attribute(a | b, HOST).tcp_inuse == 2
    assert hostnet.attribute(a | b, HOST).tcp.states["established"] == 2


def test_nobody_holds_nothing() -> None:
    fig = hostnet.attribute(set(), HOST)
    assert (fig.tcp_inuse, fig.udp_inuse, fig.tcp.listeners, fig.tcp.peer_max) == (0, 0, 0, 0)


# -- real processes -----------------------------------------------------------------------

def test_own_sockets_are_found_and_nothing_else(tmp_path: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX)
    read_end, write_end = os.pipe()
    path = tmp_path / "file"
    path.write_text("x")
    with open(path) as f, srv, udp, unix:
        found = socket_inodes(PROC, os.getpid())
        assert {inode(srv), inode(udp), inode(unix)} <= found
        assert os.fstat(read_end).st_ino not in found and os.fstat(f.fileno()).st_ino not in found
    os.close(read_end)
    os.close(write_end)


def test_real_process_over_the_cap() -> None:
    code = "import socket, time; s = [socket.socket() for _ in range(20)]; print(flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()
        count = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert len(socket_inodes(PROC, child.pid, cap=count)) == 20
        with pytest.raises(FdCapExceeded, match=f"process {child.pid} has more than {count - 1} open fds"):
            socket_inodes(PROC, child.pid, cap=count - 1)
    finally:
        child.kill()
        child.wait()


def test_exited_process_is_gone_and_a_zombie_holds_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); time.sleep(60)"])
    try:
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert socket_inodes(PROC, child.pid) == frozenset()
    finally:
        child.wait()
    with pytest.raises(ProcessGone):
        socket_inodes(PROC, child.pid)


def _as_nobody(work: Any) -> Dict[str, Any]:
    """Run ``work()`` in a forked child that dropped root for uid 65534; its JSON result."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = work()
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            result = {"error": repr(err)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


def test_another_users_fds_are_not_permitted() -> None:
    target = os.getpid()

    def work() -> Dict[str, Any]:
        try:
            socket_inodes(PROC, target)
        except FdsNotPermitted as err:
            return {"refused": str(err)}
        return {"refused": None}

    got = _as_nobody(work)
    assert got.get("refused") and "CAP_SYS_PTRACE" in got["refused"], got


# -- the whole group, on real child processes ---------------------------------------------

HOLDER = r"""
import os, socket, sys, time
k, udp, share = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "share"
srv = socket.socket(); srv.bind(("127.0.0.1", 0))
if k: srv.listen(8)    # without k: an unbound-to-a-peer, unlisted socket the tables do not show
held = []
for _ in range(k):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.close()              # the client side becomes an orphan (inode 0) ...
    held.append(a)         # ... and the accepted side stays in CLOSE_WAIT
u = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(udp)]
for s in u: s.bind(("127.0.0.1", 0))
if share and os.fork() == 0:   # a child that inherits every socket: another "container"
    os.write(1, b"%d\n" % os.getpid())   # one write each: the two lines never interleave
    time.sleep(120); sys.exit()
os.write(1, b"%d %d\n" % (os.getpid(), srv.getsockname()[1]))
time.sleep(120)
"""


PORTS: Dict[int, int] = {}  # holder pid -> its listener's port


@pytest.fixture
def holders() -> Iterator[Any]:
    started: List[subprocess.Popen] = []
    forked: List[int] = []

    def start(k: int, udp: int, share: bool = False) -> List[int]:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(k), str(udp), "share" if share else "-"],
                             stdout=subprocess.PIPE, text=True)
        started.append(p)
        assert p.stdout is not None
        lines = [p.stdout.readline().split() for _ in range(2 if share else 1)]
        PORTS.update({int(line[0]): int(line[1]) for line in lines if len(line) > 1})
        forked.extend(int(line[0]) for line in lines if int(line[0]) != p.pid)
        return [int(line[0]) for line in lines]

    yield start
    for pid in forked:  # the holders' own children (not ours to wait for)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for p in started:
        p.kill()
        p.wait()


def container(name: str) -> Container:
    return Container(id=(name * 64)[:64], name=name, network_mode="host")


def group(tags: str, *members: Tuple[Container, int]) -> Group:
    return Group(owner=members[0][0], containers=tuple(members), tags=(("container", tags),))


def run(groups: Sequence[Group], reader: TcpReader, **kw: Any) -> records.Report:
    known = {c.id: [pid] for g in groups for c, pid in g.containers}
    return hostnet.read_groups(groups, reader, PROC, MemberFinder(PROC, known=known), os.getpid(), **kw)


@pytest.fixture
def reader() -> Iterator[TcpReader]:
    r = TcpReader(PROC)
    r.probe()
    yield r
    r.close()


def test_each_holder_reports_its_own_sockets(holders: Any, reader: TcpReader) -> None:
    [leaky] = holders(k=3, udp=2)
    [quiet] = holders(k=0, udp=0)
    a, b = container("a"), container("b")
    report = run([group("a", (a, leaky)), group("b", (b, quiet))], reader)
    assert report.path == tcp_reader.SOCK_DIAG
    got = {s.owner.name: s.figures for s in report.groups}
    assert got["a"].tcp.states["close_wait"] == 3 and got["a"].tcp.states["listen"] == 1
    assert (got["a"].tcp_inuse, got["a"].udp_inuse, got["a"].tcp.listeners) == (4, 2, 1)
    assert got["a"].tcp.fill_max_percent == 0  # the listener's queue is empty; its backlog known
    assert got["b"].tcp_inuse == got["b"].udp_inuse == got["b"].tcp.listeners == 0
    assert got["b"].tcp.states["listen"] == 0
    assert not report.not_permitted and not report.over_cap and not report.gone and not report.failed


def test_host_process_sockets_are_nobodys(holders: Any, reader: TcpReader) -> None:
    [leaky] = holders(k=1, udp=0)
    [quiet] = holders(k=0, udp=0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    # the test process is a host process: its client socket to a's listener is nobody's, and
    # the server side waits in a's accept queue with inode 0 until accept()
    with srv, socket.create_connection(("127.0.0.1", PORTS[leaky])):
        report = run([group("a", (container("a"), leaky)), group("b", (container("b"), quiet))], reader)
    got = {s.owner.name: s.figures for s in report.groups}
    assert got["b"].tcp_inuse == 0
    assert (got["a"].tcp_inuse, got["a"].tcp.states["established"], got["a"].tcp.queue_max) == (2, 0, 1)


def test_shared_sockets_count_in_each_and_once_per_pod(holders: Any, reader: TcpReader) -> None:
    parent, child = holders(k=2, udp=1, share=True)
    x, y = container("x"), container("y")
    report = run([group("x", (x, parent)), group("y", (y, child)), group("pod", (x, parent), (y, child))], reader)
    got = {s.tags[0][1]: s.figures for s in report.groups}
    for name in ("x", "y", "pod"):
        assert (got[name].tcp_inuse, got[name].udp_inuse, got[name].tcp.states["close_wait"]) == (3, 1, 2), name
    assert [s.members for s in report.groups if s.tags[0][1] == "pod"] == [("x", "y")]


def test_proc_path_attributes_the_same_except_the_backlog(holders: Any) -> None:
    [leaky] = holders(k=2, udp=1)
    g = [group("a", (container("a"), leaky))]
    dumped = run(g, TcpReader(PROC)).groups[0].figures  # not probed: only the own-namespace dump
    from_proc = run(g, TcpReader(PROC), own_netns="/nonexistent").groups[0].figures  # /proc/net/*
    assert dumped.tcp.states == from_proc.tcp.states
    assert (dumped.tcp_inuse, dumped.udp_inuse) == (from_proc.tcp_inuse, from_proc.udp_inuse) == (3, 1)
    assert dumped.tcp.fill_max_percent == 0 and from_proc.tcp.fill_max_percent is None


def test_over_the_cap_the_group_is_left_out_with_a_warning(holders: Any, reader: TcpReader,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    [leaky] = holders(k=3, udp=0)
    [quiet] = holders(k=0, udp=0)
    a, b = container("a"), container("b")
    with caplog.at_level(logging.WARNING):
        report = run([group("a", (a, leaky)), group("pod", (b, quiet), (a, leaky))], reader, fd_cap=5)
    assert [s.owner.name for s in report.groups] == []
    assert [name for name, _ in report.over_cap] == ["a", "b"]  # never a partial count for the pod
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"process {leaky} has more than 5 open fds" in w and "(python" in w for w in warnings), warnings


def test_a_group_whose_processes_exited_is_gone(holders: Any, reader: TcpReader) -> None:
    [leaky] = holders(k=1, udp=0)
    [quiet] = holders(k=0, udp=0)
    os.kill(quiet, 9)
    os.waitpid(quiet, 0)
    a, b = container("a"), container("b")
    report = run([group("a", (a, leaky)), group("b", (b, quiet)), group("pod", (a, leaky), (b, quiet))], reader)
    assert report.gone == ("b",)
    assert {s.tags[0][1]: s.figures.tcp_inuse for s in report.groups} == {"a": 2, "pod": 2}


def test_not_permitted_is_a_skip_and_nothing_is_dumped(reader: TcpReader) -> None:
    target = os.getpid()

    def work() -> Dict[str, Any]:
        report = run([group("root-owned", (container("r"), target))], TcpReader(PROC))
        return {"skipped": [n for n, _ in report.not_permitted], "failed": list(report.failed),
                "groups": len(report.groups), "path": report.path}

    assert _as_nobody(work) == {"skipped": ["r"], "failed": [], "groups": 0, "path": ""}


# -- the reader's socket lists --------------------------------------------------------------

def test_reader_lists_the_same_sockets_by_every_path() -> None:
    """Our own sockets through the own-namespace dump, the setns dump and /proc/net/*."""
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen(5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.connect(("::1", 9))
    mine = {inode(srv), inode(udp), inode(udp6)}
    reader = TcpReader(PROC)
    probed = reader.probe() is None
    try:
        with srv, udp, udp6:
            for protocol, expected in ((tcp_reader.TCP, {(10, inode(srv))}),
                                       (tcp_reader.UDP, {(7, inode(udp)), (1, inode(udp6))})):
                here, path = reader.sockets(os.getpid(), protocol, here=True)
                assert path == tcp_reader.SOCK_DIAG
                entered, entered_path = reader.sockets(os.getpid(), protocol)
                assert entered_path == (tcp_reader.SOCK_DIAG if probed else tcp_reader.PROC)
                from_proc = reader._by_proc(os.getpid(), protocol, tcp_reader.EVERY)
                for found in (here, entered, from_proc):
                    assert {(s.state, s.inode) for s in found if s.inode in mine} == expected, protocol
            listener = [s for s in reader.sockets(os.getpid(), here=True)[0] if s.inode == inode(srv)]
            assert (listener[0].rqueue, listener[0].wqueue) == (0, 5)  # sock_diag gives the backlog
    finally:
        reader.close()


def test_host_dump_keeps_only_the_held_sockets_and_no_time_wait() -> None:
    """The host dump asks for no TIME_WAIT and keeps only the given inodes, by either path."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    a.close()  # the server side closes first: TIME_WAIT on its side once the client closes too
    c.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    reader = TcpReader(PROC)
    try:
        with srv, udp:
            wanted = {inode(srv), inode(udp)}
            for own in (hostnet.OWN_NETNS, "/nonexistent"):  # sock_diag here, then /proc/net/*
                host = hostnet.read_host(reader, PROC, os.getpid(), wanted, own_netns=own)
                assert set(host.tcp) == {inode(srv)} and host.udp == {inode(udp)}, own
                assert host.path == (tcp_reader.SOCK_DIAG if own == hostnet.OWN_NETNS else tcp_reader.PROC)
            everything = hostnet.read_host(reader, PROC, os.getpid())
            assert inode(srv) in everything.tcp
            assert not [s for s in everything.tcp.values() if s.state == 6]
    finally:
        reader.close()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_cap_is_one_budget_for_the_run_not_per_process(holders: Any, reader: TcpReader,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    many = [p for _ in range(3) for p in holders(k=2, udp=0)]  # one tenant, three processes
    [other] = holders(k=1, udp=0)
    per_process = max(fds(p) for p in many)
    cap = per_process * 2 + 1  # each process fits, the three together do not
    tenant = container("t")
    groups = [group("t", (tenant, many[0])), group("o", (container("o"), other))]  # all three are t's members
    known = {tenant.id: many, container("o").id: [other]}
    with caplog.at_level(logging.WARNING):
        report = hostnet.read_groups(groups, reader, PROC, MemberFinder(PROC, known=known), os.getpid(), fd_cap=cap)
    assert report.groups == ()  # the tenant spent the budget: it and the group after it are left out
    assert [name for name, _ in report.over_cap] == ["t", "o"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "container t" in warnings[0] and "container o" in warnings[0], warnings
    # the same processes one by one, as the per-process cap read them, fit
    alone = hostnet.read_groups(groups, reader, PROC, MemberFinder(PROC, known=known), os.getpid(),
                                fd_cap=sum(fds(p) for p in [*many, other]) + 3)
    assert {s.owner.name: s.figures.tcp.states["close_wait"] for s in alone.groups} == {"t": 6, "o": 1}


def test_groups_read_before_the_budget_ran_out_are_reported(holders: Any, reader: TcpReader) -> None:
    [small] = holders(k=1, udp=0)
    big = holders(k=2, udp=0) + holders(k=2, udp=0)
    cap = fds(small) + max(fds(p) for p in big) + 1
    b, s = container("b"), container("s")
    groups = [group("s", (s, small)), group("b", (b, big[0]))]
    report = hostnet.read_groups(groups, reader, PROC, MemberFinder(PROC, known={s.id: [small], b.id: big}),
                                 os.getpid(), fd_cap=cap)
    assert [s.owner.name for s in report.groups] == ["s"]
    assert [name for name, _ in report.over_cap] == ["b"]


def test_a_passed_deadline_leaves_the_unread_groups_out(holders: Any, reader: TcpReader,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    [one] = holders(k=1, udp=0)
    with caplog.at_level(logging.WARNING):
        report = run([group("a", (container("a"), one))], reader, deadline=Deadline(time.monotonic() - 1))
    assert report.groups == () and [name for name, _ in report.over_cap] == ["a"]
    assert any("deadline" in r.getMessage() and "container a" in r.getMessage() for r in caplog.records)

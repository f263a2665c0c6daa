"""doctor's look at the kernel's TCP table: the parser, the sample, the report and its advice
on a fake reader, and ``TcpReader.read_sysctl`` in real network namespaces (``unshare -n``;
root), one of them with a table of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from container_netstat import doctor, tcp_summary
from container_netstat.deadline import Deadline
from container_netstat.errors import ParseError, ProcessGone
from container_netstat.procfs import ProcFS
from container_netstat.records import Container, HostStats, NetnsStats, Readings, Snapshot, TcpReading
from container_netstat.tcp_reader import SOCK_DIAG, TcpReader

SELF = "/proc/thread-self/ns/net"


def namespace(name: str, pid: int, key: int, dumped: bool = True) -> NetnsStats:
    tcp = TcpReading(tcp_summary.empty(), None, SOCK_DIAG, skipped=not dumped)
    return NetnsStats(Container(name * 8, name, "none"), (name,), pid, key, (("container", name),),
                      Readings({}, {}, {}, {}, tcp))


def snapshot(*namespaces: NetnsStats) -> Snapshot:
    return Snapshot(HostStats("6.18.44", 1, {}), tuple(namespaces), len(namespaces), (), (), ())


class FakeReader:
    """Namespaces by pid: each with its tcp_ehash_entries text; a dump costs nothing."""

    def __init__(self, tables: Dict[int, Optional[str]]) -> None:
        self.tables = tables
        self.dumped: List[int] = []

    def read_sysctl(self, pid: int, path: str, still_ours: Optional[Callable[[int], bool]] = None) -> Optional[str]:
        if still_ours is not None and not still_ours(pid):
            raise ProcessGone(pid, f"/proc/{pid}/ns/net")
        return self.tables[pid]

    def read(self, pid: int, deadline: Optional[Deadline] = None, name: str = "",
             still_ours: Optional[Callable[[int], bool]] = None) -> None:
        if still_ours is not None and not still_ours(pid):
            raise ProcessGone(pid, f"/proc/{pid}/ns/net")
        self.dumped.append(pid)


def host_files(ehash: Optional[str], child: Optional[str]) -> Callable[[str], Optional[str]]:
    return lambda path: {doctor.EHASH: ehash, doctor.CHILD_EHASH: child}[path]


def ticking() -> Callable[[], float]:
    """A clock that advances 2 ms per call: each dump 'takes' 2 ms."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.002
        return now[0]
    return clock


def measure(reader: FakeReader, snap: Snapshot, ehash: Optional[str] = "262144", child: Optional[str] = "0",
            keys: Optional[Dict[int, int]] = None, deadline: Optional[Deadline] = None,
            unavailable: Optional[str] = None, size: int = doctor.SAMPLE) -> doctor.TableProbe:
    by_pid = keys if keys is not None else {ns.pid: ns.key for ns in snap.namespaces}
    return doctor.measure_table(reader, snap, 1, deadline or Deadline.after(30), unavailable,
                                host_files(ehash, child), True, lambda pid: by_pid[pid], size,
                                clock=ticking(), cpu_clock=ticking())


@pytest.mark.parametrize("text, value", [("262144\n", 262144), ("-262144\n", -262144), ("0\n", 0)])
def test_ehash_entries_parse(text: str, value: int) -> None:
    assert doctor.parse_ehash(text) == value


@pytest.mark.parametrize("text", ["", "1024 2048\n", "lots\n", "0x400\n"])
def test_anything_but_one_integer_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError, match="expected one integer"):
        doctor.parse_ehash(text)


def test_the_sample_is_spread_over_the_namespaces() -> None:
    many = [namespace(f"c{i:03d}", 100 + i, 1000 + i) for i in range(100)]
    picked = doctor.sample(many, 10)
    assert [ns.owner.name for ns in picked] == [f"c{i:03d}" for i in range(0, 100, 10)]
    assert doctor.sample(many[:3], 10) == many[:3]


def test_shared_and_own_tables_are_counted_and_the_advice_says_its_price() -> None:
    snap = snapshot(namespace("a", 10, 1), namespace("b", 11, 2), namespace("c", 12, 3, dumped=False))
    reader = FakeReader({10: "-262144\n", 11: "1024\n", 12: "-262144\n"})
    info = doctor.tcp_table(measure(reader, snap))
    assert info["host_buckets"] == 262144 and info["child_ehash_entries"] == 0
    assert info["sampled"] == 3 and info["sharing_host_table"] == 2 and info["own_table"] == {"b": 1024}
    assert info["dump_ms"]["sharing"] == {"median_wall": 2.0, "median_cpu": 2.0, "timed": 2}
    assert info["dump_ms"]["own_table"]["timed"] == 1
    assert info["dumped_per_run"] == 2 and info["estimated_cpu_ms_per_run"] == 4.0
    advice = info["advice"]
    assert "sysctl -w net.ipv4.tcp_child_ehash_entries=1024" in advice and "262144 buckets" in advice
    assert "only to network namespaces created after it is set" in advice
    assert "kernel memory" in advice and "tcp_max_tw_buckets: 512" in advice
    assert sorted(reader.dumped) == [10, 11, 12]
    text = doctor._table_text(info)
    assert "2 share the host's table, 1 have their own" in " ".join(text)
    assert any("sharing the host's table (median of 2)" in line for line in text)


def test_set_but_namespaces_older_than_the_setting_still_share() -> None:
    snap = snapshot(namespace("old", 10, 1), namespace("new", 11, 2))
    info = doctor.tcp_table(measure(FakeReader({10: "-262144", 11: "1024"}), snap, child="1024"))
    assert "tcp_child_ehash_entries is 1024, but 1 of 2 sampled namespaces share" in info["advice"]
    assert "recreating their containers" in info["advice"]


def test_every_namespace_with_its_own_table_needs_nothing() -> None:
    snap = snapshot(namespace("a", 10, 1))
    info = doctor.tcp_table(measure(FakeReader({10: "4096"}), snap, child="4096"))
    assert info["advice"].startswith("every sampled namespace has a TCP table of its own")


def test_a_kernel_without_the_setting_says_so() -> None:
    snap = snapshot(namespace("a", 10, 1))
    info = doctor.tcp_table(measure(FakeReader({10: None}), snap, ehash=None, child=None))
    assert info["host_buckets"] is None and info["child_ehash_entries"] is None
    assert info["sharing_host_table"] == 0 and info["own_table"] == {}
    assert "could not be read" in info["advice"] and "no tcp_ehash_entries" in info["host_error"]
    old = doctor.tcp_table(measure(FakeReader({10: None}), snap, ehash="65536", child=None))
    assert "no net.ipv4.tcp_child_ehash_entries (6.1 and later)" in old["advice"]


def test_a_pid_that_left_its_namespace_is_not_measured() -> None:
    """The pid was reused by another namespace since the run read it: its table and dump are
    another's, so neither is reported under this container's name."""
    snap = snapshot(namespace("moved", 10, 1), namespace("stays", 11, 2))
    reader = FakeReader({10: "-262144", 11: "-262144"})
    info = doctor.tcp_table(measure(reader, snap, keys={10: 99, 11: 2}))
    assert info["sampled"] == 2 and info["sharing_host_table"] == 1
    assert [e["namespace"] for e in info["not_read"]] == ["moved"] and "gone" in info["not_read"][0]["reason"]
    assert reader.dumped == [11]


def test_the_deadline_ends_the_sample() -> None:
    snap = snapshot(namespace("a", 10, 1), namespace("b", 11, 2))
    reader = FakeReader({10: "-262144", 11: "-262144"})
    probe = measure(reader, snap, deadline=Deadline(0.0))
    assert len(probe.samples) == 1 and "deadline" in probe.samples[0].error and reader.dumped == []


def test_without_setns_only_the_hosts_settings_are_read() -> None:
    snap = snapshot(namespace("a", 10, 1))
    reader = FakeReader({10: "-262144"})
    info = doctor.tcp_table(measure(reader, snap, unavailable="setns refused (Operation not permitted)"))
    assert info["host_buckets"] == 262144 and info["sampled"] == 0 and reader.dumped == []
    assert "setns refused" in info["namespaces_not_sampled"]
    assert any("not sampled" in line for line in doctor._table_text(info))


def test_a_bad_host_file_is_reported_not_raised() -> None:
    probe = measure(FakeReader({}), snapshot(), ehash="many\n")
    assert probe.host_buckets is None and "expected one integer" in probe.host_error


# -- real namespaces ---------------------------------------------------------------------------

@pytest.fixture
def netns_pair() -> Iterator[Tuple[int, int]]:
    """Two sleeping processes in new network namespaces: one sharing the host's TCP table, one
    with 1024 buckets of its own (tcp_child_ehash_entries set inside a throw-away namespace
    first, so the host's setting is untouched)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")
    if not os.path.exists("/proc/sys/net/ipv4/tcp_child_ehash_entries"):
        pytest.skip("kernel before 6.1: no per-namespace TCP tables")
    shared = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    own = subprocess.Popen(["unshare", "-n", "sh", "-c",
                            "echo 1000 > /proc/sys/net/ipv4/tcp_child_ehash_entries && exec unshare -n sleep 600"])
    try:
        for _ in range(200):  # until the inner unshare has run: its namespace differs from the outer one's
            out = subprocess.run(["nsenter", "-t", str(own.pid), "-n", "cat", "/proc/sys/net/ipv4/tcp_ehash_entries"],
                                 capture_output=True, text=True)
            if out.stdout.strip() == "1024":
                break
            threading.Event().wait(0.05)
        yield shared.pid, own.pid
    finally:
        for child in (shared, own):
            child.kill()
            child.wait()


def test_read_sysctl_reads_inside_each_namespace_off_the_main_thread(netns_pair: Tuple[int, int]) -> None:
    shared, own = netns_pair
    reader = TcpReader(ProcFS())
    assert reader.probe() is None
    home = os.stat(SELF).st_ino
    entered: List[str] = []
    real = reader._setns

    def watched(fd: int, kind: int) -> None:
        entered.append(threading.current_thread().name)
        real(fd, kind)

    reader._setns = watched
    with open(doctor.EHASH) as f:
        host = abs(int(f.read()))
    assert doctor.parse_ehash(reader.read_sysctl(shared, doctor.EHASH) or "") == -host  # the host's, shared
    assert doctor.parse_ehash(reader.read_sysctl(own, doctor.EHASH) or "") == 1024
    assert reader.read_sysctl(own, "/proc/sys/net/ipv4/no_such_setting") is None
    assert entered and threading.main_thread().name not in entered
    assert os.stat(SELF).st_ino == home
    with pytest.raises(ProcessGone):  # asked with the namespace held open: not the one expected
        reader.read_sysctl(own, doctor.EHASH, still_ours=lambda pid: False)
    reader.close()


def test_a_reader_that_cannot_enter_refuses(netns_pair: Tuple[int, int]) -> None:
    reader = TcpReader(ProcFS())  # not probed
    from container_netstat.tcp_reader import NotPermitted
    with pytest.raises(NotPermitted):
        reader.read_sysctl(netns_pair[0], doctor.EHASH)


def test_doctor_on_real_namespaces_tells_shared_from_own(netns_pair: Tuple[int, int]) -> None:
    shared, own = netns_pair
    proc = ProcFS()
    snap = snapshot(namespace("shared", shared, proc.netns_key(shared)), namespace("own", own, proc.netns_key(own)))
    reader = TcpReader(proc)
    assert reader.probe() is None
    with open(doctor.EHASH) as f:
        host = int(f.read())
    probe = doctor.measure_table(reader, snap, 1, Deadline.after(30), None, doctor.own_sysctl, True, proc.netns_key)
    reader.close()
    info = doctor.tcp_table(probe)
    assert info["host_buckets"] == host and info["own_table"] == {"own": 1024}
    assert info["sharing_host_table"] == 1 and not info["not_read"]
    assert info["dump_ms"]["sharing"]["timed"] == 1 and info["dump_ms"]["own_table"]["timed"] == 1

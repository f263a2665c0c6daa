"""TCP states, listener queues and port pressure on real containers, against ss.

Each workload runs in one container's network namespace on loopback and holds its sockets
still while the tool and ``nsenter -t PID -n ss`` look at them, so the two must agree
exactly. The sock_diag path is the default as root; the /proc path is forced by dropping
CAP_SYS_ADMIN from the run (``setpriv --bounding-set=-sys_admin``), or by a docker-group user.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

import pytest

from conftest import in_netns, pid_of, unavailable
from container_netstat import tcp_reader, sockdiag
from container_netstat.namespaces import read_namespaces
from container_netstat.records import Container
from container_netstat.errors import ProcessGone
from container_netstat.metrics import GAUGE, NETNS_METRICS
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS
from integration.test_collect_docker import background, by_tags, collect_json

pytestmark = pytest.mark.docker

# A namespace with every kind of socket the figures count: a listener that never accepts
# (backlog 2, 5 clients: Recv-Q 3 over Send-Q 2, 2 left in SYN_SENT), held connections,
# CLOSE_WAIT leaks and TIME_WAIT; it prints "ready" and holds them.
MIXED = r"""
import socket, time
stuck = socket.socket(socket.AF_INET6); stuck.bind(("::", 9001)); stuck.listen(2)   # never accepts
waiting = []
for _ in range(5):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", 9001)); waiting.append(c)
srv = socket.socket(socket.AF_INET6); srv.bind(("::", 9200)); srv.listen(64)
held = []
for _ in range({held}):
    held.append(socket.create_connection(("127.0.0.1", 9200))); held.append(srv.accept()[0])
leak = socket.socket(); leak.bind(("127.0.0.1", 9300)); leak.listen(16)
for _ in range(4):
    c = socket.create_connection(("127.0.0.1", 9300)); a, _ = leak.accept(); c.close(); held.append(a)
for _ in range(6):
    c = socket.create_connection(("127.0.0.1", 9300)); a, _ = leak.accept(); c.close(); a.recv(1); a.close()
time.sleep(1.5)
print("ready", flush=True)
time.sleep(600)
"""

MORE_CLIENTS = r"""
import socket, time
cs = []
for _ in range({k}):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", 9001)); cs.append(c)
time.sleep(1.5)
"""

# n connections to one remote (a listener that accepts them all), held.
FAN_OUT = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 5432)); srv.listen(512)
held = []
for _ in range({n}):
    held.append(socket.create_connection(("127.0.0.1", 5432))); held.append(srv.accept()[0])
print("ready", flush=True)
time.sleep(600)
"""

SS_NAMES = {
    "ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv", "FIN-WAIT-1": "fin_wait1",
    "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait", "UNCONN": "close", "CLOSE-WAIT": "close_wait",
    "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing",
}


def ss(pid: int, *args: str) -> List[List[str]]:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Hn", *args],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def ss_figures(pid: int) -> Dict[str, int]:
    """What ss says of one namespace, in the tool's names."""
    tcp = ss(pid, "-ta")
    figures: Dict[str, int] = {f"tcp.state.{name}": 0 for name in SS_NAMES.values()}
    for row in tcp:
        figures[f"tcp.state.{SS_NAMES[row[0]]}"] += 1
    listeners = [(int(r[1]), int(r[2])) for r in ss(pid, "-tl")]
    if listeners:
        figures["tcp.listen.queue_max"] = max(q for q, _ in listeners)
        fills = [q * 100 // max(b, 1) for q, b in listeners]
        figures["tcp.listen.fill_max_pct"] = max(fills)
        figures["tcp.listen.near_full"] = sum(f >= 80 for f in fills)
    peers = Counter(_peer(r[4]) for r in tcp if r[0] != "LISTEN" and not r[4].endswith(":*"))
    figures["tcp.ports.peer_max"] = max(peers.values(), default=0)
    return figures


def _peer(text: str) -> str:
    # [::ffff:127.0.0.1]:9200 and 127.0.0.1:9200 are the same remote
    return text.replace("[::ffff:", "").replace("]", "")


def port_range(pid: int) -> Tuple[int, int]:
    out = in_netns(pid, "print(open('/proc/sys/net/ipv4/ip_local_port_range').read())").stdout.split()
    return int(out[0]), int(out[1])


def without_sys_admin(*args: str) -> subprocess.CompletedProcess:
    """The CLI as root but without CAP_SYS_ADMIN: setns is refused, the /proc path is used."""
    return subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable, "-m",
         "container_netstat", "collect", "--dry-run", *args],
        capture_output=True, text=True, timeout=120)


@pytest.fixture
def mixed(run_container: Any, holders: List[Any]) -> Any:
    victim = run_container(name="st-mixed", network_mode="none")
    control = run_container(name="st-control", network_mode="none")
    holders.append(background(pid_of(victim), MIXED.format(held=20)))
    return victim, control


def test_every_figure_equals_ss_in_that_namespace(mixed: Any) -> None:
    victim, control = mixed
    items, err = collect_json("--include", victim.name, "--include", control.name, "--log-level", "info")
    assert "TCP states: sock_diag inside each network namespace" in err
    got = by_tags(items)
    mine, calm = got[f"container={victim.name}"], got[f"container={control.name}"]
    expected = ss_figures(pid_of(victim))
    assert {k: mine[k] for k in expected} == expected
    assert mine["tcp.state.close_wait"] == 4 and mine["tcp.listen.fill_max_pct"] == 150
    assert mine["tcp.listen.queue_max"] == 3 and mine["tcp.state.listen"] == 3
    low, high = port_range(pid_of(victim))
    assert mine["tcp.ports.pressure_pct"] == mine["tcp.ports.peer_max"] * 100 // (high - low + 1)
    # the leak and the full queue are that namespace's alone
    assert calm["tcp.state.close_wait"] == 0 and calm["tcp.state.listen"] == 0
    assert not [k for k in calm if k.startswith("tcp.listen.")]  # no listener: left out


def test_the_proc_path_gives_the_same_values_without_the_percentages(mixed: Any) -> None:
    victim, _ = mixed
    by_diag = by_tags(collect_json("--include", victim.name)[0])[f"container={victim.name}"]
    # Without CAP_SYS_ADMIN states are off by default, and there on request.
    off = without_sys_admin("--include", victim.name, "--log-level", "info")
    assert off.returncode == 0, off.stderr
    assert "TCP states: off (setns refused" in off.stderr
    assert not [i for i in json.loads(off.stdout) if i["metric"].startswith("container.net.tcp.state.")]
    on = without_sys_admin("--include", victim.name, "--tcp-states", "--log-level", "info")
    assert on.returncode == 0, on.stderr
    assert "TCP states: from /proc/<pid>/net/tcp{,6}" in on.stderr
    by_proc = by_tags(json.loads(on.stdout))[f"container={victim.name}"]
    omitted = {"tcp.listen.fill_max_pct", "tcp.listen.near_full", "tcp.ports.pressure_pct"}
    assert set(by_diag) - set(by_proc) == omitted
    # Every gauge both emit is equal; counters move on between two runs (the SYN_SENT
    # clients keep retrying into the full queue), so they are left out of the comparison.
    gauges = {m.name for m in NETNS_METRICS if m.counter_type == GAUGE} & set(by_proc) & set(by_diag)
    assert {k for k in gauges if k.startswith("tcp.state.")} and "tcp.ports.peer_max" in gauges
    assert {k: by_proc[k] for k in gauges} == {k: by_diag[k] for k in gauges}


def test_a_full_backlog_fills_before_listen_overflows_and_only_there(mixed: Any, holders: List[Any]) -> None:
    victim, control = mixed
    before = by_tags(collect_json("--include", victim.name, "--include", control.name)[0])
    assert before[f"container={victim.name}"]["tcp.listen.fill_max_pct"] >= 100
    in_netns(pid_of(victim), MORE_CLIENTS.format(k=6))  # SYNs to a full queue: dropped, counted
    after = by_tags(collect_json("--include", victim.name, "--include", control.name)[0])
    rising = after[f"container={victim.name}"]["tcp.listen_overflows"]
    assert rising > before[f"container={victim.name}"]["tcp.listen_overflows"]
    assert after[f"container={control.name}"]["tcp.listen_overflows"] == 0
    assert after[f"container={control.name}"].get("tcp.listen.fill_max_pct") is None


def test_port_pressure_against_a_range_set_inside_the_namespace(run_container: Any, holders: List[Any]) -> None:
    client = run_container(name="st-fanout", network_mode="none")
    pid = pid_of(client)
    subprocess.run(["nsenter", "-t", str(pid), "-n", "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40399"],
                   check=True, timeout=30)
    assert port_range(pid) == (40000, 40399)
    holders.append(background(pid, FAN_OUT.format(n=200)))
    got = by_tags(collect_json("--include", client.name)[0])[f"container={client.name}"]
    grouped = Counter(row[4] for row in ss(pid, "-ta") if row[0] != "LISTEN")
    assert got["tcp.ports.peer_max"] == grouped["127.0.0.1:5432"] == 200
    assert got["tcp.ports.pressure_pct"] == 200 * 100 // 400 == 50
    # the host's own range is untouched, so another namespace reads its own
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        assert f.read().split() != ["40000", "40399"]


def test_a_docker_group_user_gets_the_same_counts_without_percentages(
    docker_group_user: Any, mixed: Any  # noqa: F811 - the fixture
) -> None:
    victim, _ = mixed
    as_root = by_tags(collect_json("--include", victim.name)[0])[f"container={victim.name}"]
    default = docker_group_user("collect", "--dry-run", "--include", victim.name, "--log-level", "info")
    assert default.returncode == 0, default.stderr
    assert "TCP states: off" in default.stderr
    asked = docker_group_user("collect", "--dry-run", "--include", victim.name, "--tcp-states")
    assert asked.returncode == 0, asked.stderr
    got = by_tags(json.loads(asked.stdout))[f"container={victim.name}"]
    for key, value in ss_figures(pid_of(victim)).items():
        if key in ("tcp.listen.fill_max_pct", "tcp.listen.near_full"):
            assert key not in got
        else:
            assert got[key] == value == as_root[key], key
    assert "tcp.ports.pressure_pct" not in got


def _container(docker_container: Any) -> Container:
    return Container(docker_container.id, docker_container.name, "none")


def test_the_run_ends_in_the_namespace_it_started_in_even_when_a_dump_fails(
    mixed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, control = mixed
    home = os.readlink("/proc/thread-self/ns/net")
    proc = ProcFS()
    resolver = PidResolver(proc)
    snapshot = read_namespaces([_container(victim), _container(control)], resolver, proc, {"basic", "states"})
    assert os.readlink("/proc/thread-self/ns/net") == home
    assert [ns.readings.tcp.path for ns in snapshot.namespaces if ns.readings.tcp] == ["sock_diag"] * 2

    def cut_short(sock: Any, source: str, until: Any) -> Any:
        yield b"\x48\x00\x00\x00", 0  # from the kernel: a header promising 72 bytes, and nothing after it

    monkeypatch.setattr(tcp_reader, "_replies", cut_short)
    reader = tcp_reader.TcpReader(proc)
    assert reader.probe() is None
    with pytest.raises(tcp_reader.DumpFailed, match="cut short"):
        reader.read(pid_of(victim))
    assert os.readlink("/proc/thread-self/ns/net") == home
    # through collect: that namespace keeps its other figures, its states are left out
    broken = read_namespaces([_container(victim)], resolver, proc, {"basic", "states"}, reader)
    assert broken.failed == () and [ns.owner.name for ns in broken.namespaces] == [victim.name]
    (ns,) = broken.namespaces
    assert ns.readings.tcp is None and "cut short" in ns.readings.tcp_missing and ns.readings.sockstat
    assert os.readlink("/proc/thread-self/ns/net") == home


def test_a_container_that_exits_before_its_dump_is_skipped(run_container: Any) -> None:
    doomed = run_container(name="st-doomed", network_mode="none")
    pid = pid_of(doomed)
    reader = tcp_reader.TcpReader(ProcFS())
    assert reader.probe() is None
    doomed.kill()
    doomed.wait(timeout=30)
    with pytest.raises(ProcessGone):
        reader.read(pid)


def test_a_pid_that_leaves_the_namespace_during_the_dump_is_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ns file keeps the old namespace alive, so the dump works: the check after it must
    notice that the pid is in another namespace now (here it unshares a new one)."""
    if not os.path.exists("/usr/bin/unshare"):
        unavailable("unshare (util-linux) is not installed")
    child = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-c",
         "import ctypes, signal, time\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "signal.signal(signal.SIGUSR1, lambda *a: libc.unshare(0x40000000))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        reader = tcp_reader.TcpReader(ProcFS())
        assert reader.probe() is None
        before = os.stat(f"/proc/{child.pid}/ns/net").st_ino
        dump = reader._dump

        def moving(*args: Any) -> Any:
            os.kill(child.pid, signal.SIGUSR1)
            for _ in range(500):  # the child moves when it gets the signal: within 5 s on a loaded host
                if os.stat(f"/proc/{child.pid}/ns/net").st_ino != before:
                    break
                time.sleep(0.01)
            return dump(*args)

        monkeypatch.setattr(reader, "_dump", moving)
        with pytest.raises(tcp_reader.NamespaceGone):
            reader.read(child.pid)
    finally:
        child.kill()
        child.wait()


def _refusing(times: int) -> Any:
    """tcp_reader._replies that answers the first ``times`` requests with NLMSG_ERROR (EINVAL),
    addressed as the kernel addresses its own replies (the request's seq, our port id)."""
    real = tcp_reader._replies
    calls = {"n": 0}

    def replies(sock: Any, source: str, until: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            seq = port = None
            for data, _sender in real(sock, source, until):  # take the kernel's real answer first
                seq, port = seq or struct.unpack_from("=II", data, 8)[0], struct.unpack_from("=I", data, 12)[0]
                if struct.unpack_from("=H", data, len(data) - 16)[0] == sockdiag.NLMSG_DONE:
                    break
            yield struct.pack("=IHHIIi", 36, 2, 0, seq, port, -22) + bytes(16), 0
            return
        yield from real(sock, source, until)

    return replies


def test_a_refused_legacy_request_falls_back_to_the_v2_pair_then_to_proc(
    mixed: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    victim, _ = mixed
    pid = pid_of(victim)
    reader = tcp_reader.TcpReader(ProcFS())
    assert reader.probe() is None
    expected = reader.read(pid)
    monkeypatch.setattr(tcp_reader, "_replies", _refusing(1))
    again = tcp_reader.TcpReader(ProcFS())
    again.probe()
    with caplog.at_level("INFO", logger="container_netstat"):
        got = again.read(pid)
    assert again.request == "v2" and got.path == "sock_diag" and got.summary == expected.summary
    assert "legacy TCPDIAG_GETSOCK request was refused" in caplog.text
    # Both refused: that namespace comes from /proc, said once, with the same counts.
    monkeypatch.setattr(tcp_reader, "_replies", _refusing(3))
    last = tcp_reader.TcpReader(ProcFS())
    last.probe()
    with caplog.at_level("INFO", logger="container_netstat"):
        fallback = last.read(pid)
    assert fallback.path == "proc" and fallback.summary.states == expected.summary.states
    assert fallback.summary.fill_max_percent is None and last.fallbacks
    assert "read from /proc/<pid>/net/tcp{,6}: sock_diag of" in caplog.text

"""A tenant with CAP_NET_ADMIN over its own network namespace forges sock_diag replies.

The attacker is real: a process in one container's network namespace, run there with
``nsenter -t PID -n`` as root (so with CAP_NET_ADMIN over that namespace, as root of a
user-namespaced container or a container given NET_ADMIN has), watches that namespace's
``/proc/net/netlink`` for NETLINK_SOCK_DIAG sockets (protocol 4) and floods each one it
did not make with forged messages: NLMSG_DONE, inet_diag_msg records of CLOSE_WAIT sockets
and full listeners, NLMSG_ERROR with INT_MIN and other errnos, messages with garbage
lengths. Real ``collect --dry-run`` runs go on meanwhile: each must exit 0, report every
container, and give the forging namespace the states ``ss -tan`` shows there.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from conftest import pid_of
from container_netstat import tcp_reader
from container_netstat.deadline import Deadline
from container_netstat.procfs import ProcFS
from integration import workloads
from integration.test_collect_docker import background, by_tags, collect_json
from integration.test_states_docker import ss_figures

pytestmark = pytest.mark.docker

FORGER = r"""
import json, os, random, signal, socket, struct, sys, time

AF_NETLINK, SOCK_DIAG = 16, 4
stats = {"rounds": 0, "sent": 0, "refused": 0, "full": 0, "ports": []}
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(AF_NETLINK, socket.SOCK_RAW, SOCK_DIAG)
s.bind((0, 0))
s.setblocking(False)
own = s.getsockname()[0]
print("ready", flush=True)


def header(length, kind, flags, seq, port):
    return struct.pack("=IHHII", length, kind, flags, seq, port)


def record(state, rqueue, wqueue, seq, port, inode):
    body = struct.pack("=BBBB", 2, state, 0, 0) + struct.pack(">HH", 80, 4242)
    body += bytes(16) + bytes([10, 9, 8, 7]) + bytes(12) + bytes(12)
    body += struct.pack("=IIIII", 0, rqueue, wqueue, 0, inode)
    return header(16 + len(body), 18, 2, seq, port) + body


def forged(port):
    out = []
    for seq in (1, 0, random.getrandbits(32)):
        fake = b"".join(record(8, 0, 0, seq, port, 1000 + i) for i in range(60))   # CLOSE_WAIT leaks
        fake += b"".join(record(10, 129, 128, seq, port, 0) for _ in range(20))   # full listeners
        out += [
            fake,
            fake + header(20, 3, 2, seq, port) + struct.pack("=i", 0),            # and a DONE
            header(20, 3, 2, seq, port) + struct.pack("=i", 0),                    # an early DONE
            header(36, 2, 0, seq, port) + struct.pack("=i", -2**31) + bytes(16),   # errno INT_MIN
            header(36, 2, 0, seq, port) + struct.pack("=i", -1) + bytes(16),       # EPERM
            header(36, 2, 0, seq, port) + struct.pack("=i", 2**31 - 1) + bytes(16),
            header(20, 3, 2, seq, port) + struct.pack("=i", -2**31),               # DONE with INT_MIN
            header(0xFFFFFFFF, 20, 2, seq, port) + bytes(72),                      # garbage lengths
            header(8, 20, 2, seq, port),
            header(88, 20, 0x10 | 2, seq, port) + bytes(72),                       # DUMP_INTR
        ]
    return out


while not stop:
    stats["rounds"] += 1
    with open("/proc/net/netlink") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    for row in rows:
        protocol, port = int(row[1]), int(row[2])
        if protocol != SOCK_DIAG or port in (0, own):
            continue
        if port not in stats["ports"]:
            stats["ports"].append(port)
        for _ in range(20):  # a flood while the dump lasts
            for message in forged(port):
                try:
                    s.sendto(message, (port, 0))
                    stats["sent"] += 1
                except ConnectionRefusedError:
                    stats["refused"] += 1
                except BlockingIOError:
                    stats["full"] += 1
                except OSError:
                    break
print(json.dumps(stats), flush=True)
"""

RUNS = 6
STATES = [f"tcp.state.{name}" for name in ("established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2",
                                            "time_wait", "close", "close_wait", "last_ack", "listen", "closing")]


def forger(pid: int) -> subprocess.Popen:
    attacker = subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", FORGER],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert attacker.stdout is not None and attacker.stdout.readline().strip() == "ready"
    return attacker


def stop(attacker: subprocess.Popen) -> Dict[str, Any]:
    attacker.send_signal(signal.SIGTERM)
    out, err = attacker.communicate(timeout=60)
    assert attacker.returncode == 0, err
    stats: Dict[str, Any] = json.loads(out)
    return stats


@pytest.fixture
def tenants(run_container: Any, holders: List[Any]) -> Any:  # noqa: F811 - the fixture
    hostile = run_container(name="fg-hostile", network_mode="none")
    others = [run_container(name=f"fg-other{i}", network_mode="none") for i in range(2)]
    holders.append(background(pid_of(hostile), workloads.hold(300)))
    for i, other in enumerate(others):
        holders.append(background(pid_of(other), workloads.hold(5 + i)))
    return hostile, others


def test_forged_replies_change_nothing_and_stop_no_run(tenants: Any) -> None:
    hostile, others = tenants
    pid = pid_of(hostile)
    # ss asks by sock_diag too: read before the attacker starts (the sockets are held still)
    expected = ss_figures(pid)
    names = [hostile.name, *(o.name for o in others)]
    args = [arg for name in names for arg in ("--include", name)]
    attacker = forger(pid)
    try:
        for _ in range(RUNS):
            items, err = collect_json(*args, "--log-level", "info")  # asserts exit 0
            got = by_tags(items)
            assert set(got) - {""} == {f"container={name}" for name in names}, err  # "": host, collector
            mine = got[f"container={hostile.name}"]
            assert {k: mine[k] for k in STATES} == {k: expected[k] for k in STATES}, err
            assert mine["tcp.listen.queue_max"] == expected["tcp.listen.queue_max"]
            assert mine["tcp.listen.fill_max_pct"] == expected["tcp.listen.fill_max_pct"]
            assert "Traceback" not in err and "left out of this run" not in err
            for other in others:
                assert got[f"container={other.name}"]["tcp.state.close_wait"] == 0
    finally:
        seen = stop(attacker)
    # The attacker found our sockets in its namespace, and the kernel refused its messages.
    assert seen["rounds"] > 10 and seen["ports"] and seen["refused"] > 0 and seen["sent"] == 0, seen
    print(f"attacker: {seen['rounds']} rounds, {len(seen['ports'])} port ids, {seen['refused']} refused")
    assert ss_figures(pid) == expected  # nothing moved meanwhile: the comparison holds


def test_unconnected_the_forged_datagrams_arrive_and_are_dropped(
    tenants: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The second line: were the socket not connected, the forged datagrams would reach it;
    their sender is not the kernel, so they are dropped and counted and the figures hold, or,
    when the flood crowds out the kernel's replies, the dump ends by its time cap and only
    that namespace's states are lost."""
    hostile, _ = tenants
    pid = pid_of(hostile)
    expected = ss_figures(pid)

    def unconnected() -> Any:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)

    reader = tcp_reader.TcpReader(ProcFS())
    assert reader.probe() is None
    monkeypatch.setattr(tcp_reader, "_netlink_socket", unconnected)
    attacker = forger(pid)
    outcomes = []
    try:
        with caplog.at_level("INFO", logger="container_netstat"):
            for _ in range(3):
                started = time.monotonic()
                try:
                    summary = reader.read(pid, Deadline.after(2.0), hostile.name).summary
                except tcp_reader.DumpFailed as err:
                    assert "within its time" in str(err)
                    outcomes.append("failed")
                else:
                    assert {f"tcp.state.{k}": v for k, v in summary.states.items() if k != "orphan"} == \
                        {k: expected[k] for k in STATES}
                    assert summary.fill_max_percent == expected["tcp.listen.fill_max_pct"]
                    outcomes.append("read")
                assert time.monotonic() - started < 2.0 + 1.0  # the deadline, and a margin
    finally:
        stats = stop(attacker)
    assert stats["sent"] > 0, stats  # they did arrive this time
    assert "not from the kernel or not to this request were dropped" in caplog.text, outcomes

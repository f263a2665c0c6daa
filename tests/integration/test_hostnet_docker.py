"""Host-network containers and pods report the sockets their own processes hold (hostnet group).

The sockets must be held by the containers' own processes, in their cgroups, so each
workload runs inside its container: the busybox image has no Python, so the host's
``/usr`` is bind-mounted read-only at ``/host/usr``, ``/host/lib`` and ``/host/lib64`` are
made as the same symlinks into ``usr`` the host has (merged /usr), and the container's init
``chroot``-s there and ``exec``-s the host's ``/usr/bin/python3``. The Python process is then
the container's own (its cgroup, its pid namespace), on the host network. This needs no
change to any cgroup and leaves nothing behind when the container is removed.

Every figure is checked against ``ss -tanp`` / ``ss -uanp`` of the host namespace, keeping
the lines whose ``users:`` name one of the container's pids (``docker top``): the same
sockets by another tool. Ports are 47xxx, away from the rest of this host's traffic.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Dict, Iterable, List, Set

import pytest

from container_netstat import docker_api, hostnet
from container_netstat.cgroup_members import MemberFinder
from container_netstat.metrics import HOSTNET_STATES
from container_netstat.tcp_reader import TcpReader
from container_netstat.procfs import ProcFS

from conftest import TEST_LABEL, pid_of
from integration.test_collect_docker import by_tags, run_cli

pytestmark = pytest.mark.docker

CHROOT = 'ln -s usr/lib /host/lib && ln -s usr/lib64 /host/lib64 && exec chroot /host /usr/bin/python3 -c "$CODE"'
USR = {"/usr": {"bind": "/host/usr", "mode": "ro"}}
SS_STATES = {"ESTAB": "established", "SYN-SENT": "syn_sent", "FIN-WAIT-1": "fin_wait1", "FIN-WAIT-2": "fin_wait2",
             "CLOSE-WAIT": "close_wait", "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing",
             "UNCONN": "close", "SYN-RECV": "syn_recv", "TIME-WAIT": "time_wait"}

# A CLOSE_WAIT leak of k connections and a listener on 'port'; a forked child (another
# process of the container) holds a UDP socket of its own, the parent {udp} more.
LEAKY = r"""
import os, socket, time
srv = socket.socket(socket.AF_INET6); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", {port})); srv.listen(16)
held = []
for _ in range({k}):
    c = socket.create_connection(("127.0.0.1", {port}))
    a, _ = srv.accept()
    c.close()          # the peer closes (its side is an orphan, inode 0)...
    held.append(a)     # ...and the application never does: CLOSE_WAIT
u = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range({udp})]
for s in u: s.bind(("127.0.0.1", 0))
if os.fork() == 0:
    mine = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); mine.bind(("::1", 0))
    time.sleep(3600)
time.sleep(0.3)
print("ready", flush=True)
time.sleep(3600)
"""

# A client of a listener outside every container, and one UDP socket: no listener, no leak.
CLIENT = r"""
import socket, time
c = socket.create_connection(("127.0.0.1", {port}))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print("ready", flush=True)
time.sleep(3600)
"""

# A listener with n connections to itself, accepted and held: 2n ESTABLISHED.
SERVER = r"""
import socket, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {port})); srv.listen(8)
held = []
for _ in range({n}):
    held.append(socket.create_connection(("127.0.0.1", {port})))
    held.append(srv.accept()[0])
print("ready", flush=True)
time.sleep(3600)
"""

# Many sockets in one process, for the fd cap: {n} unbound TCP sockets (in no table) and 10 UDP ones.
MANY = r"""
import socket, time
held = [socket.socket() for _ in range({n})]
u = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
for s in u: s.bind(("127.0.0.1", 0))
print("ready", flush=True)
time.sleep(3600)
"""


def python_container(run_container: Any, name: str, code: str, **kwargs: Any) -> Any:
    """A container whose own process runs ``code`` with the host's Python (see the docstring)."""
    container = run_container(CHROOT, name=name, volumes=USR, environment={"CODE": code}, **kwargs)
    deadline = time.monotonic() + 30
    while b"ready" not in container.logs():
        container.reload()
        assert container.status == "running" and time.monotonic() < deadline, container.logs().decode()
        time.sleep(0.05)
    return container


def pids_of(container: Any) -> Set[int]:
    """The container's processes as Docker lists them (``docker top``)."""
    top = container.top(ps_args="-eo pid")
    return {int(row[0]) for row in top["Processes"]}


def ss_own(pids: Set[int], protocol: str) -> List[tuple]:
    """(state, Recv-Q, Send-Q, peer) of each host-namespace socket one of ``pids`` holds, by ``ss``;
    an IPv4-mapped peer as its IPv4 address."""
    out = subprocess.run(["ss", "-H", "-a", "-n", "-p", f"-{protocol}"], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        holders = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if holders & pids:
            fields = line.split()
            peer = re.sub(r"^\[::ffff:([0-9.]+)\]", r"\1", fields[4])
            found.append((SS_STATES[fields[0]], int(fields[1]), int(fields[2]), peer))
    return found


def expected(pids: Set[int]) -> Dict[str, int]:
    """The hostnet figures of a holder of ``pids``, as ss shows its sockets."""
    tcp = ss_own(pids, "t")
    states = Counter(state for state, _, _, _ in tcp)
    want = {f"hostnet.tcp.state.{s}": states.get(s, 0) for s in HOSTNET_STATES}
    want["hostnet.tcp.inuse"] = len(tcp)
    want["hostnet.udp.inuse"] = len(ss_own(pids, "u"))
    peers = Counter(peer for state, _, _, peer in tcp if state != "listen" and not peer.endswith(":*"))
    want["hostnet.tcp.ports.peer_max"] = max(peers.values(), default=0)
    listeners = [(rq, wq) for state, rq, wq, _ in tcp if state == "listen"]
    if listeners:
        fills = [rq * 100 // max(wq, 1) for rq, wq in listeners]
        want["hostnet.tcp.listen.queue_max"] = max(rq for rq, _ in listeners)
        want["hostnet.tcp.listen.fill_max_pct"] = max(fills)
        want["hostnet.tcp.listen.near_full"] = sum(1 for f in fills if f >= 80)
    return want


def hostnet_items(*args: str) -> subprocess.CompletedProcess:
    return run_cli("--dry-run", "--metrics", "basic,states,hostnet", *args)


def only(label: str) -> List[str]:
    return ["--include", f"{TEST_LABEL}={label}"]


def items_of(result: subprocess.CompletedProcess) -> Dict[str, Dict[str, int]]:
    assert result.returncode == 0, result.stderr
    return by_tags(json.loads(result.stdout))


@pytest.fixture
def host_listener() -> Iterable[socket.socket]:
    """A listener of this test process: a host process, outside every container."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 47190))
    srv.listen(8)
    yield srv
    srv.close()


def test_each_host_network_container_reports_its_own_sockets(run_container: Any, host_listener: socket.socket) -> None:
    leaky = python_container(run_container, "hn-leaky", LEAKY.format(port=47101, k=4, udp=2), network_mode="host")
    client = python_container(run_container, "hn-client", CLIENT.format(port=47190), network_mode="host")
    accepted, _ = host_listener.accept()  # the host process's side of client's connection
    with accepted:
        got = items_of(hostnet_items(*only(leaky.labels[TEST_LABEL])))
        leaky_pids, client_pids = pids_of(leaky), pids_of(client)
        want_leaky, want_client = expected(leaky_pids), expected(client_pids)
    assert len(leaky_pids) == 2  # the init and its forked child, both read
    mine = {k: v for k, v in got[f"container={leaky.name}"].items()}
    assert mine == want_leaky
    assert (mine["hostnet.tcp.state.close_wait"], mine["hostnet.tcp.state.listen"]) == (4, 1)
    assert (mine["hostnet.tcp.inuse"], mine["hostnet.udp.inuse"]) == (5, 3)
    theirs = got[f"container={client.name}"]
    assert theirs == want_client
    assert (theirs["hostnet.tcp.state.close_wait"], theirs["hostnet.tcp.state.listen"]) == (0, 0)
    assert (theirs["hostnet.tcp.state.established"], theirs["hostnet.udp.inuse"]) == (1, 1)
    assert "hostnet.tcp.listen.queue_max" not in theirs  # no listener: listener figures left out
    # never a namespace-wide value for them: only hostnet.* items carry their tags
    for tags in (f"container={leaky.name}", f"container={client.name}"):
        assert all(name.startswith("hostnet.") for name in got[tags]), tags
    # the test's listener and its accepted socket are a host process's: nobody's
    assert sum(v["hostnet.tcp.state.listen"] for t, v in got.items() if t.startswith("container=")) == 1


def test_host_network_pod_is_reported_once(run_container: Any) -> None:
    labels = {"io.kubernetes.pod.name": "ingress-7c9d", "io.kubernetes.pod.namespace": "edge",
              "io.kubernetes.pod.uid": "9e1c7f1a-0000-4000-8000-0000000000a1"}
    sandbox = run_container(name="k8s_POD_ingress", network_mode="host", labels={
        **labels, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"})
    app = python_container(run_container, "k8s_app_ingress", SERVER.format(port=47102, n=2),
                           network_mode=f"container:{sandbox.id}", labels={
                               **labels, "io.kubernetes.docker.type": "container",
                               "io.kubernetes.container.name": "app"})
    result = hostnet_items(*only(sandbox.labels[TEST_LABEL]), "--log-level", "debug")
    got = items_of(result)
    pod = got["namespace=edge,pod=ingress-7c9d"]
    assert pod == expected(pids_of(sandbox) | pids_of(app))
    assert (pod["hostnet.tcp.state.established"], pod["hostnet.tcp.state.listen"]) == (4, 1)
    assert all(name.startswith("hostnet.") for name in pod)
    assert not [t for t in got if sandbox.name in t or app.name in t]
    assert f"container {app.name}: joins host-network container {sandbox.name}" in result.stderr


def test_container_joined_to_a_host_network_container_is_in_its_group(run_container: Any) -> None:
    host_c = run_container(name="hn-owner", network_mode="host")
    joiner = python_container(run_container, "hn-joiner", SERVER.format(port=47103, n=1),
                              network_mode=f"container:{host_c.id}")
    got = items_of(hostnet_items(*only(host_c.labels[TEST_LABEL])))
    group = got[f"container={host_c.name}"]
    assert group == expected(pids_of(host_c) | pids_of(joiner))
    assert (group["hostnet.tcp.state.established"], group["hostnet.tcp.state.listen"]) == (2, 1)
    assert f"container={joiner.name}" not in got
    doctor = subprocess.run([sys.executable, "-m", "container_netstat", "doctor"],
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode in (0, 4), doctor.stderr  # 4: another container on this host was unreadable
    info = json.loads(doctor.stdout)["hostnet"]
    assert {"container": joiner.name, "joins": host_c.name} in info["joined"]
    assert host_c.name in info["containers"]
    reported = [g for g in info["reported"] if g["tags"] == f"container={host_c.name}"]
    assert reported and sorted(reported[0]["containers"]) == sorted([host_c.name, joiner.name])
    assert "inode 0" in info["not_attributable"]


def test_a_container_that_exits_mid_read_is_gone_not_failed(run_container: Any, docker_client: Any) -> None:
    stays = python_container(run_container, "hn-stays", SERVER.format(port=47104, n=1), network_mode="host")
    leaves = python_container(run_container, "hn-leaves", SERVER.format(port=47105, n=1), network_mode="host")
    listed = {c.name: c for c in docker_api.list_containers(docker_client)
              if c.name in (stays.name, leaves.name)}
    groups = [hostnet.Group(listed[c.name], ((listed[c.name], pid_of(c)),), (("container", c.name),))
              for c in (stays, leaves)]
    proc = ProcFS()
    finder = MemberFinder(proc)
    pids = {c.name: finder.pids(listed[c.name].id, pid_of(c)) for c in (stays, leaves)}
    known = MemberFinder(proc, known={listed[n].id: p for n, p in pids.items()})  # listed before the exit
    leaves.kill()
    leaves.wait(timeout=30)
    reader = TcpReader(proc)
    reader.probe()
    try:
        report = hostnet.read_groups(groups, reader, proc, known, 1)
    finally:
        reader.close()
    assert report.gone == (leaves.name,) and not report.failed
    assert [g.owner.name for g in report.groups] == [stays.name]
    assert report.groups[0].figures.tcp.states["established"] == 2


def test_docker_group_user_skips_the_group_with_one_info_line(docker_group_user: Any, run_container: Any) -> None:
    held = python_container(run_container, "hn-root", SERVER.format(port=47106, n=1), network_mode="host")
    plain = run_container(name="hn-plain", network_mode="none")
    label = held.labels[TEST_LABEL]
    result = docker_group_user("collect", "--dry-run", "--metrics", "basic,hostnet", "--include",
                               f"{TEST_LABEL}={label}", "--log-level", "info")
    assert result.returncode == 0, result.stderr
    got = by_tags(json.loads(result.stdout))
    assert f"container={held.name}" not in got  # skipped, not zeros
    assert f"container={plain.name}" in got
    assert got[""]["collector.failed"] == 0
    lines = [line for line in result.stderr.splitlines() if "not permitted" in line]
    assert len(lines) == 1 and "INFO" in lines[0] and held.name in lines[0] and "CAP_SYS_PTRACE" in lines[0]
    assert "ERROR" not in result.stderr and "WARNING" not in result.stderr
    doctor = docker_group_user("doctor")
    assert doctor.returncode == 0, doctor.stderr
    skipped = json.loads(doctor.stdout)["hostnet"]["skipped"]
    assert held.name in [s["container"] for s in skipped]


def test_past_the_fd_cap_the_container_is_left_out_with_a_warning(run_container: Any) -> None:
    many = python_container(run_container, "hn-many", MANY.format(n=1000), network_mode="host")
    few = python_container(run_container, "hn-few", SERVER.format(port=47107, n=1), network_mode="host")
    label = many.labels[TEST_LABEL]
    result = hostnet_items(*only(label), "--hostnet-fd-cap", "500")
    got = items_of(result)
    assert f"container={many.name}" not in got  # never a partial count
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert f"container {many.name}" in warnings[0] and f"process {pid_of(many)} has more than" in warnings[0]
    assert "(python3" in warnings[0] and "left out of this run" in warnings[0]
    # the cap is the run's: a group read before it ran out is reported, one after it is named
    if f"container={few.name}" in got:
        assert got[f"container={few.name}"]["hostnet.tcp.state.established"] == 2
    else:
        assert f"container {few.name}" in warnings[0]
    under = items_of(hostnet_items(*only(label), "--hostnet-fd-cap", "2000"))
    assert under[f"container={many.name}"]["hostnet.udp.inuse"] == 10
    assert under[f"container={many.name}"]["hostnet.tcp.inuse"] == 0  # unbound sockets are in no table


def test_without_the_group_host_network_containers_are_not_reported(run_container: Any) -> None:
    held = python_container(run_container, "hn-off", SERVER.format(port=47108, n=1), network_mode="host")
    items, = [json.loads(run_cli("--dry-run", *only(held.labels[TEST_LABEL])).stdout)]
    assert not [i for i in items if held.name in i["tags"]]



def test_proc_runtime_reports_what_the_docker_runtime_reports(run_container: Any) -> None:
    """--runtime proc has scanned every member already (discovery.scan): the same figures."""
    leaky = python_container(run_container, "hn-proc", LEAKY.format(port=47109, k=2, udp=1), network_mode="host")
    via_docker = items_of(hostnet_items(*only(leaky.labels[TEST_LABEL])))
    via_proc = items_of(hostnet_items("--runtime", "proc", *only(leaky.labels[TEST_LABEL])))
    tags = f"container={leaky.name}"
    assert via_proc[tags] == via_docker[tags] == expected(pids_of(leaky))
    assert via_proc[tags]["hostnet.tcp.state.close_wait"] == 2


# The collector itself, run inside a host-network container (as the DaemonSet runs it), with
# a listener of its own: its container is reported like any other.
COLLECTOR = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(4)
from container_netstat.cli import main
main(["collect", "--dry-run", "--metrics", "basic,hostnet", "--include", "{include}", "--log-level", "info"])
"""


def test_the_collector_in_a_host_network_container_reports_itself(run_container: Any) -> None:
    import container_netstat
    import docker as docker_sdk

    held = python_container(run_container, "hn-beside", SERVER.format(port=47112, n=1), network_mode="host")
    label = held.labels[TEST_LABEL]
    package = os.path.dirname(os.path.dirname(container_netstat.__file__))
    site = os.path.dirname(os.path.dirname(docker_sdk.__file__))  # docker, click, requests... beside it
    collector = run_container(
        CHROOT, name="hn-collector", network_mode="host",
        volumes={**USR, "/proc": {"bind": "/host/proc", "mode": "ro"},
                 "/sys/fs/cgroup": {"bind": "/host/sys/fs/cgroup", "mode": "ro"},
                 "/var/run/docker.sock": {"bind": "/host/var/run/docker.sock", "mode": "rw"},
                 package: {"bind": "/host/src", "mode": "ro"}, site: {"bind": "/host/site", "mode": "ro"}},
        environment={"CODE": COLLECTOR.format(port=47111, include=f"{TEST_LABEL}={label}"),
                     "PYTHONPATH": "/src:/site", "PYTHONDONTWRITEBYTECODE": "1",
                     # the copied charset_normalizer may be built for another 3.11 patch release
                     "PYTHONWARNINGS": "ignore:Unable to find acceptable character"})
    status = collector.wait(timeout=120)
    out = collector.logs(stdout=True, stderr=False).decode()
    assert status["StatusCode"] == 0, collector.logs(stdout=False, stderr=True).decode()
    got = by_tags(json.loads(out))
    why = collector.logs(stdout=False, stderr=True).decode()
    assert f"container={collector.name}" in got and f"container={held.name}" in got, (sorted(got), why)
    own = got[f"container={collector.name}"]
    assert (own["hostnet.tcp.state.listen"], own["hostnet.tcp.inuse"], own["hostnet.tcp.state.established"]) == (1, 1, 0)
    assert got[f"container={held.name}"] == expected(pids_of(held))

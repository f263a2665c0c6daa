"""The collector against a real Docker daemon and real containers, values checked exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from container_netstat import namespaces
from container_netstat import docker_api
from container_netstat.metrics import DEFAULT_GROUPS
from container_netstat.metrics import NETNS_METRICS
from container_netstat.pids import PidResolver
from container_netstat.procfs import ProcFS

from conftest import in_netns, pid_of
from integration.workloads import hold, time_wait, udp

pytestmark = pytest.mark.docker

Key = Tuple[str, str]
BASIC = {"tcp.established", "tcp.inuse", "tcp.timewait", "udp.inuse", "sockets.used"}
# every metric the default groups emit on this kernel (all its counters exist here)
# What a namespace without a listener reports by default: the listener figures are left out.
DEFAULT_METRICS = [m for m in NETNS_METRICS if m.group in DEFAULT_GROUPS and not m.name.startswith("tcp.listen.")]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))





def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "container_netstat", "collect", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def collect_json(*args: str) -> Tuple[List[Dict[str, Any]], str]:
    result = run_cli("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def by_tags(items: List[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for item in items:
        out.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    return out


def background(pid: int, code: str) -> subprocess.Popen:
    proc = in_netns(pid, code, background=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def ss_count(pid: int, state: str) -> int:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ss", "-Htan", "state", state],
        check=True, capture_output=True, text=True,
    ).stdout
    return len(out.splitlines())


def test_server_with_n_clients_timewait_and_udp(run_container: Any, holders: List[Any]) -> None:
    n, m = 7, 5
    server = run_container(name="server", network_mode="none")
    busy = run_container(name="tw", network_mode="none")
    quiet = run_container(name="quiet", network_mode="none")
    spid, bpid = pid_of(server), pid_of(busy)
    holders.append(background(spid, hold(n)))
    holders.append(background(spid, udp(2, 3)))
    in_netns(bpid, time_wait(m))

    items, _ = collect_json()
    got = by_tags(items)
    s = got[f"container={server.name}"]
    # n client sockets and n accepted ones live in the same namespace (loopback).
    assert s["tcp.established"] == 2 * n == ss_count(spid, "established")
    # clients are IPv4 (TCP: inuse), listener and accepted sockets IPv6 (TCP6: inuse)
    assert s["tcp.inuse"] == 2 * n + 1
    assert s["udp.inuse"] == 5
    assert s["tcp.timewait"] == 0
    b = got[f"container={busy.name}"]
    assert b["tcp.timewait"] == m == ss_count(bpid, "time-wait")
    assert b["tcp.established"] == 0
    q = {k: v for k, v in got[f"container={quiet.name}"].items() if k in BASIC}
    baseline = q.pop("sockets.used")  # an idle namespace holds a socket or so of its own
    assert q == {"tcp.established": 0, "tcp.inuse": 0, "tcp.timewait": 0, "udp.inuse": 0}
    # sockets: used is per namespace on this kernel: the server's own sockets on top
    assert s["sockets.used"] == baseline + (2 * n + 1) + 5
    assert b["sockets.used"] == baseline  # TIME_WAIT entries are not sockets
    # host-wide fields appear once, untagged, never on a container
    assert {"host.tcp.orphan", "host.tcp.alloc", "host.tcp.mem", "host.udp.mem"} <= set(got[""])
    # (tcp.orphan, of the states group, is the namespace's own count from its socket list)
    for tags, values in got.items():
        if tags:
            assert not [k for k in values if k != "tcp.orphan" and ("orphan" in k or "alloc" in k or "mem" in k)]


def test_values_match_ss_for_every_test_namespace(run_container: Any, holders: List[Any]) -> None:
    containers = [run_container(name=f"mix{i}", network_mode="none") for i in range(4)]
    for i, c in enumerate(containers):
        pid = pid_of(c)
        if i % 2 == 0:
            holders.append(background(pid, hold(i + 1)))
        in_netns(pid, time_wait(i))
    got = by_tags(collect_json()[0])
    for c in containers:
        pid = pid_of(c)
        values = got[f"container={c.name}"]
        # 6.x kernels count CLOSE_WAIT in CurrEstab (commit a46d0ea5c942)
        assert values["tcp.established"] == ss_count(pid, "established") + ss_count(pid, "close-wait")
        assert values["tcp.timewait"] == ss_count(pid, "time-wait")
        non_tw = len(subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htan"],
                                    capture_output=True, text=True, check=True).stdout.splitlines())
        assert values["tcp.inuse"] == non_tw - values["tcp.timewait"]


def test_host_network_container_is_not_reported(run_container: Any) -> None:
    host_c = run_container(name="hostnet", network_mode="host")
    items, stderr = collect_json("--log-level", "debug")
    assert not [i for i in items if host_c.name in i["tags"]]
    assert f"container {host_c.name}: host network" in stderr


def test_shared_namespace_reported_once_under_its_owner(run_container: Any) -> None:
    owner = run_container(name="owner", network_mode="none")
    joiner = run_container(name="joiner", network_mode=f"container:{owner.id}")
    items, stderr = collect_json("--log-level", "debug")
    got = by_tags(items)
    assert f"container={owner.name}" in got
    assert not [t for t in got if joiner.name in t]
    assert len([i for i in items if i["tags"] == f"container={owner.name}"]) == len(DEFAULT_METRICS)
    assert joiner.name in stderr and "share it" in stderr


def test_kubernetes_pod_reported_once_by_pod(run_container: Any, holders: List[Any]) -> None:
    labels = {"io.kubernetes.pod.name": "web-7d4b9", "io.kubernetes.pod.namespace": "shop"}
    pause = run_container(
        name="k8s_POD", network_mode="none",
        labels={**labels, "io.kubernetes.docker.type": "podsandbox", "io.kubernetes.container.name": "POD"},
    )
    app = run_container(
        name="k8s_app", network_mode=f"container:{pause.id}",
        labels={**labels, "io.kubernetes.docker.type": "container", "io.kubernetes.container.name": "app"},
    )
    holders.append(background(pid_of(app), hold(2)))
    got = by_tags(collect_json()[0])
    pod = got["namespace=shop,pod=web-7d4b9"]
    assert pod["tcp.established"] == 4
    assert not [t for t in got if pause.name in t or app.name in t]


def test_hostile_label_cannot_break_the_tag_string(run_container: Any) -> None:
    evil = 'x,pod=other ns="a">\nb/c' + "é" * 20
    run_container(
        name="evil", network_mode="none",
        labels={"io.kubernetes.pod.name": evil, "io.kubernetes.pod.namespace": "n s,x=y"},
    )
    items, _ = collect_json()
    mine = [i for i in items if i["tags"].startswith("namespace=n_s_x_y,")]
    assert len(mine) == len(DEFAULT_METRICS)
    for item in mine:
        pieces = dict(p.split("=", 1) for p in item["tags"].replace(" ", "").split(","))
        assert list(pieces) == ["namespace", "pod"]
        assert pieces["pod"].startswith("x_pod_other_ns")
        assert not set("\n\r'\">/ ") & set(item["tags"])


def test_container_exiting_between_list_and_read_is_skipped(run_container: Any, docker_client: Any, caplog) -> None:
    stays = run_container(name="stays", network_mode="none")
    leaves = run_container(name="leaves", network_mode="none")
    proc = ProcFS()
    client = docker_api.connect(dict(os.environ), 30)
    listed = [c for c in docker_api.list_containers(client) if c.name in (stays.name, leaves.name)]
    assert len(listed) == 2
    leaves.kill()
    leaves.wait(timeout=30)
    snapshot = namespaces.read_namespaces(listed, PidResolver(proc, inspect=docker_api.inspector(client)), proc)
    assert [ns.owner.name for ns in snapshot.namespaces] == [stays.name]
    assert snapshot.gone == (leaves.name,)
    assert snapshot.failed == ()
    assert f"container {leaves.name}: exited during the run; skipped" in caplog.text


def test_pid_vanishing_after_resolution_is_skipped(run_container: Any, caplog) -> None:
    leaves = run_container(name="late", network_mode="none")
    proc = ProcFS()
    client = docker_api.connect(dict(os.environ), 30)
    listed = [c for c in docker_api.list_containers(client) if c.name == leaves.name]
    real = PidResolver(proc, inspect=docker_api.inspector(client))
    resolved = real.resolve([(leaves.id, "")])
    leaves.kill()
    leaves.wait(timeout=30)

    class Stale(PidResolver):
        def resolve(self, containers, known=None):  # the pid was found just before the exit
            return resolved

    snapshot = namespaces.read_namespaces(listed, Stale(proc), proc)
    assert snapshot.namespaces == () and snapshot.gone == (leaves.name,)


def test_no_containers_gives_host_items_only() -> None:
    proc = ProcFS()
    snapshot = namespaces.read_namespaces([], PidResolver(proc), proc)
    assert snapshot.namespaces == () and snapshot.containers == 0


def test_docker_socket_missing_is_exit_3_one_line() -> None:
    result = run_cli("--dry-run", "--docker-host", "unix:///nonexistent/docker.sock")
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot reach Docker at unix:///nonexistent/docker.sock" in lines[0]


def test_silent_docker_socket_times_out_within_bound(tmp_path) -> None:
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    conns: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])  # accept, never answer
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        result = run_cli("--dry-run", "--docker-host", f"unix://{path}", "--docker-timeout", "1", timeout=30)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        thread.join()
        server.close()
    assert result.returncode == 3
    assert "timed out" in result.stderr
    assert elapsed < 15  # 1 s per call, a few calls at most, plus start-up


def test_permission_denied_on_socket_is_exit_3(tmp_path) -> None:
    # root passes file modes through CAP_DAC_OVERRIDE: drop it (and DAC_READ_SEARCH)
    # so a mode-000 socket refuses us as it refuses a user outside the docker group.
    path = str(tmp_path / "locked.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    os.chmod(path, 0)
    try:
        result = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             "--inh-caps=-dac_override,-dac_read_search",
             sys.executable, "-m", "container_netstat", "collect", "--dry-run",
             "--docker-host", f"unix://{path}"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    finally:
        server.close()
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dry_run_stdout_is_only_json(run_container: Any) -> None:
    run_container(name="plain", network_mode="none")
    result = run_cli("--dry-run", "--log-level", "debug")
    assert result.returncode == 0
    assert isinstance(json.loads(result.stdout), list)
    assert result.stderr  # debug lines went to stderr, not stdout

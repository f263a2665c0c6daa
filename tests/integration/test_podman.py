"""Real Podman: its Docker-compatible API service on a socket this test starts.

scripts/setup-runtimes.sh installs Podman, writes the containers.conf these tests use
(no default rlimits: this machine lacks CAP_SYS_RESOURCE; runc, since crun refuses
hybrid cgroup hosts) and imports the busybox image. Under CI=true a missing piece fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from conftest import IMAGE, TEST_LABEL, in_netns, pid_of, unavailable
from integration.test_collect_docker import background
from integration.workloads import hold, time_wait

pytestmark = pytest.mark.docker

STATE = os.environ.get("CONTAINER_NETSTAT_TEST_STATE", "/var/lib/container-netstat-test")
CONTAINERS_CONF = os.path.join(STATE, "containers.conf")
PODMAN_IMAGE = f"localhost/{IMAGE}"




def podman_env() -> Dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                          timeout=120, check=check)


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`podman system service` on a socket of its own, for the whole session."""
    if not shutil.which("podman"):
        unavailable("podman is not installed (scripts/setup-runtimes.sh installs it)")
    if not os.path.exists(CONTAINERS_CONF):
        unavailable(f"{CONTAINERS_CONF} missing (scripts/setup-runtimes.sh writes it)")
    if podman("image", "exists", PODMAN_IMAGE, check=False).returncode != 0:
        unavailable(f"podman image {PODMAN_IMAGE} missing (scripts/setup-runtimes.sh imports it)")
    path = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{path}"],
                               env=podman_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    address = f"unix://{path}"
    try:
        import docker

        deadline = time.monotonic() + 30
        while True:
            try:
                docker.DockerClient(base_url=address, timeout=5).ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or service.poll() is not None:
                    unavailable(f"podman system service did not answer on {path}")
                time.sleep(0.2)
        yield address
    finally:
        service.terminate()
        service.wait(timeout=30)


@pytest.fixture
def podman_run(podman_socket: str) -> Iterator[Callable[..., Tuple[str, str, int]]]:
    """Start a real Podman container; returns (id, name, pid); removed after the test."""
    run_id = uuid.uuid4().hex[:8]
    started: List[str] = []

    def run(name: str, *options: str, command: str = "sleep 100000") -> Tuple[str, str, int]:
        full = f"cnp-{run_id}-{name}"
        result = podman("run", "-d", "--ulimit", "host", "--label", f"{TEST_LABEL}={run_id}",
                        "--name", full, *options, PODMAN_IMAGE, "sh", "-c", command)
        started.append(full)
        cid = result.stdout.strip().splitlines()[-1]
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", full).stdout.strip())
        return cid, full, pid

    yield run
    for name in reversed(started):
        podman("rm", "-f", "-t", "0", name, check=False)


def collect(*args: str) -> Tuple[Dict[str, Dict[str, int]], str]:
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out: Dict[str, Dict[str, int]] = {}
    for item in json.loads(result.stdout):
        out.setdefault(item["tags"], {})[item["metric"].replace("container.net.", "")] = item["value"]
    return out, result.stderr


def ss_count(pid: int, *filters: str) -> int:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htan", *filters],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_podman_values_equal_docker_values_for_the_same_workload(
    podman_socket: str, podman_run: Any, run_container: Any, holders: List[subprocess.Popen]
) -> None:
    _, pname, ppid = podman_run("twin", "--network", "none")
    _, pidle, _ = podman_run("idle", "--network", "none")
    twin = run_container(name="twin", network_mode="none")
    didle = run_container(name="idle", network_mode="none")
    dpid = pid_of(twin)
    for pid in (ppid, dpid):
        holders.append(background(pid, hold(3, udp=2)))
        in_netns(pid, time_wait(4))

    via_podman, err = collect("--runtime", "podman", "--docker-host", podman_socket,
                              "--include", pname, "--include", pidle, "--log-level", "debug")
    via_docker, _ = collect("--runtime", "docker", "--include", twin.name, "--include", didle.name)
    p, d = via_podman[f"container={pname}"], via_docker[f"container={twin.name}"]
    # An idle namespace holds a runtime-specific socket or so of its own (Docker's one more
    # than Podman's here): sockets.used is compared above each runtime's idle baseline.
    p["sockets.used"] -= via_podman[f"container={pidle}"]["sockets.used"]
    d["sockets.used"] -= via_docker[f"container={didle.name}"]["sockets.used"]
    assert p == d  # every other gauge and counter: the same kernel counts the same sockets
    assert p["sockets.used"] == 2 * 3 + 1 + 2
    assert p["tcp.established"] == 6 == ss_count(ppid, "state", "established")
    assert p["tcp.timewait"] == 4 == ss_count(ppid, "state", "time-wait")
    assert p["udp.inuse"] == 2
    assert p["tcp.active_opens"] == 3 + 4
    # one list call; the pid came from the /proc scan and passed the cgroup check
    assert f"pid {ppid} from proc-scan" in err
    assert via_podman[""]["collector.containers"] == 2


def test_podman_shared_namespace_is_reported_once(podman_socket: str, podman_run: Any,
                                                  holders: List[subprocess.Popen]) -> None:
    oid, owner, opid = podman_run("a-owner", "--network", "none")
    _, joiner, _ = podman_run("b-joiner", "--network", f"container:{oid}")
    holders.append(background(opid, hold(2, udp=0)))
    got, err = collect("--runtime", "podman", "--docker-host", podman_socket,
                       "--include", f"{TEST_LABEL}=*", "--log-level", "debug")
    mine = {t: v for t, v in got.items() if owner in t or joiner in t}
    # Podman's compatible list carries no network mode: the namespace key groups them
    assert list(mine) == [f"container={owner}"]
    assert mine[f"container={owner}"]["tcp.established"] == 4
    assert "share it" in err and joiner in err


def test_proc_backend_names_podman_containers_from_containers_storage(podman_run: Any) -> None:
    _, name, pid = podman_run("named", "--network", "none")
    got, err = collect("--runtime", "proc", "--include", name, "--log-level", "debug")
    assert f"container={name}" in got
    assert "podman runtime" in err


def test_podman_socket_that_does_not_answer_is_exit_3(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run",
                             "--runtime", "podman", "--docker-host", f"unix://{tmp_path}/none.sock"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert f"cannot reach Podman at unix://{tmp_path}/none.sock" in result.stderr

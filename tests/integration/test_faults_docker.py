"""Faults of the Docker side: a private dockerd stopped or hung, and container churn.

The private daemon has its own socket, data-root and exec-root, so breaking it never
touches the daemon the other tests use; a SIGSTOP is always undone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, List

import pytest

from conftest import IMAGE, unavailable

pytestmark = pytest.mark.docker


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "container_netstat", "collect", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def private_dockerd() -> Iterator[Any]:
    if not shutil.which("dockerd"):
        unavailable("dockerd is not installed")
    base = tempfile.mkdtemp(prefix="cn-dockerd-", dir="/tmp")
    sock = os.path.join(base, "docker.sock")
    # A bridge of its own: a dockerd started with --bridge none deletes docker0, which
    # belongs to the daemon the other tests use.
    bridge = "cn-faults0"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    log = open(os.path.join(base, "dockerd.log"), "w")
    proc = subprocess.Popen(
        ["dockerd", "--host", f"unix://{sock}", "--data-root", os.path.join(base, "data"),
         "--exec-root", os.path.join(base, "exec"), "--pidfile", os.path.join(base, "docker.pid"),
         "--bridge", bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not os.path.exists(sock):
        time.sleep(0.2)
    ok = subprocess.run(["docker", "-H", f"unix://{sock}", "info"], capture_output=True, timeout=30).returncode == 0
    if not ok:
        proc.kill()
        unavailable(f"private dockerd did not start; see {base}/dockerd.log")

    class Daemon:
        pid = proc.pid
        url = f"unix://{sock}"
        process = proc

    try:
        yield Daemon
    finally:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_private_daemon_answers(private_dockerd: Any) -> None:
    result = run_cli("--dry-run", "--docker-host", private_dockerd.url)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    values = {i["metric"]: i["value"] for i in items}
    assert values["container.net.collector.containers"] == 0
    assert not [i for i in items if i["tags"]]


def test_hung_daemon_ends_within_the_timeout(private_dockerd: Any) -> None:
    os.kill(private_dockerd.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        result = run_cli("--dry-run", "--docker-host", private_dockerd.url, "--docker-timeout", "2", timeout=60)
        elapsed = time.monotonic() - start
    finally:
        os.kill(private_dockerd.pid, signal.SIGCONT)
    assert result.returncode == 3
    assert result.stdout == ""
    assert "timed out" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert elapsed < 20  # 2 s per call; the run cannot hang


def test_stopped_daemon_is_exit_3(private_dockerd: Any) -> None:
    private_dockerd.process.terminate()
    private_dockerd.process.wait(timeout=30)
    result = run_cli("--dry-run", "--docker-host", private_dockerd.url, timeout=60)
    assert result.returncode == 3
    assert "cannot reach Docker" in result.stderr
    assert ("refused" in result.stderr) or ("no such socket" in result.stderr)


def test_churn_while_collecting(docker_client: Any) -> None:
    """Containers start and vanish during runs: every run succeeds with valid JSON."""
    stop = threading.Event()
    errors: List[str] = []
    label = {"container-netstat-test": "churn"}

    def churn() -> None:
        n = 0
        while not stop.is_set():
            try:
                c = docker_client.containers.run(IMAGE, ["sh", "-c", "sleep 0.3"], detach=True,
                                                 network_mode="none", labels=label, name=f"cnt-churn-{n}")
                n += 1
                if n % 2:
                    c.remove(force=True)
                else:
                    c.wait(timeout=10)
                    c.remove(force=True)
            except Exception as err:  # noqa: BLE001
                errors.append(str(err))
                time.sleep(0.1)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(8):
            result = run_cli("--dry-run")
            assert result.returncode == 0, result.stderr
            assert isinstance(json.loads(result.stdout), list)
            assert "Traceback" not in result.stderr
            for line in result.stderr.splitlines():
                assert "exited during the run" in line, line
    finally:
        stop.set()
        thread.join(timeout=30)
        for c in docker_client.containers.list(all=True, filters={"label": "container-netstat-test=churn"}):
            c.remove(force=True)
    assert len(errors) < 5, errors

"""One deadline for the whole run, against real Docker, real servers and a real resolver.

Each peer a run talks to is played for real: a receiver and a falcon-agent that answer one
byte a second (tests/receiver.py ``drip``), a nameserver that never answers (a UDP socket
that reads queries and says nothing, put in front of the run by a private resolv.conf in a
mount namespace of its own), a Docker API that answers one byte a second on a unix socket, a
collection made slow by a namespace read that takes its time, and a run that hangs under the
loop script. Every run must end by its deadline plus a margin, say in one line what it
skipped, and keep what it could not send for the next run, which delivers it oldest first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from container_netstat import cli
from container_netstat.spool import Spool

from conftest import TEST_LABEL, unavailable
from receiver import AGENT, TRANSFER, Receiver

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
LOOP = ROOT / "deploy" / "container-netstat-loop"
MARGIN = 2.0  # the run's start-up before its deadline starts, the spool's write, the exit


@pytest.fixture(autouse=True)
def docker_up(docker_client: Any) -> None:
    """Every run here collects from the real daemon."""



@pytest.fixture
def container(run_container: Any) -> str:
    # No network: a namespace of its own, and --include keeps other tests' containers out.
    return str(run_container(name="deadline", network_mode="none").name)


def collect(spool_dir: Path, url: str, *args: str, prefix: Tuple[str, ...] = (),
            timeout: float = 90) -> Tuple["subprocess.CompletedProcess[str]", float]:
    command = [*prefix, sys.executable, "-m", "container_netstat", "collect", "--falcon-url", url,
               "--spool-dir", str(spool_dir), *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    return result, time.monotonic() - started


def spooled(spool_dir: Path) -> List[List[dict]]:
    """The items of each batch waiting in the spool, oldest first."""
    spool = Spool(spool_dir)
    spool.open()
    try:
        return [spool.load(entry) for entry in spool.pending()]
    finally:
        spool.close()


def deadline_lines(stderr: str) -> List[str]:
    """The run's one line about what its deadline made it skip."""
    return [line for line in stderr.splitlines() if line.startswith("container-netstat: WARNING: the run's deadline")]


def delivered_later(receiver: Receiver, spool_dir: Path, url: str, container: str,
                    waiting: List[List[dict]]) -> None:
    """The receiver fixed, the next run sends the spooled batch first, then its own."""
    receiver.ok()
    receiver.hostname()
    result, _ = collect(spool_dir, url, "--include", container, "--deadline", "30")
    assert result.returncode == cli.EXIT_OK, result.stderr
    accepted = [p for p in receiver.accepted() if p.items]
    assert len(accepted) == 2, [p.reply for p in receiver.pushes]
    old = [(i["metric"], i["tags"], i["timestamp"]) for i in waiting[0]]
    assert [(i["metric"], i["tags"], i["timestamp"]) for i in accepted[0].items] == old
    assert accepted[0].items[0]["timestamp"] < accepted[1].items[0]["timestamp"]
    assert spooled(spool_dir) == []


@pytest.mark.parametrize("headers", [False, True], ids=["body-drips", "headers-drip"])
def test_a_dripping_receiver_ends_the_run_by_its_deadline_and_the_next_run_delivers(
        receiver: Receiver, tmp_path: Path, container: str, headers: bool) -> None:
    receiver.drip(1.0, headers=headers, lookup=False)
    result, elapsed = collect(tmp_path, receiver.url(TRANSFER), "--include", container, "--deadline", "5")
    assert elapsed < 5 + MARGIN, (elapsed, result.stderr)
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert result.stdout == ""
    assert [p.reply for p in receiver.pushes] == ["drip"]  # the batch was sent, the answer never came
    waiting = spooled(tmp_path)
    assert len(waiting) == 1 and any(i["tags"] == f"container={container}" for i in waiting[0])
    (line,) = deadline_lines(result.stderr)
    assert f"1 batches of this run ({len(waiting[0])} items) spooled" in line
    delivered_later(receiver, tmp_path, receiver.url(TRANSFER), container, waiting)


def test_a_dripping_agent_ends_the_run_by_its_deadline_and_the_next_run_delivers(
        receiver: Receiver, tmp_path: Path, container: str) -> None:
    # The falcon-agent drips both its name (GET /proc/kernel/hostname) and its push answer.
    receiver.drip(1.0)
    result, elapsed = collect(tmp_path, receiver.url(AGENT), "--include", container, "--deadline", "5")
    assert elapsed < 5 + MARGIN, (elapsed, result.stderr)
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert receiver.lookups == ["/proc/kernel/hostname"]
    assert "no complete answer within" in result.stderr
    waiting = spooled(tmp_path)
    assert len(waiting) == 1
    assert {i["endpoint"] for i in waiting[0]} == {socket.gethostname()}
    assert len(deadline_lines(result.stderr)) == 1
    delivered_later(receiver, tmp_path, receiver.url(AGENT), container, waiting)


def test_an_agent_dripping_only_its_name_costs_the_lookup_not_the_run(
        receiver: Receiver, tmp_path: Path, container: str) -> None:
    receiver.drip(1.0, push=False)
    result, elapsed = collect(tmp_path, receiver.url(AGENT), "--include", container, "--deadline", "15",
                              "--connect-timeout", "1")
    assert result.returncode == cli.EXIT_OK, result.stderr
    assert elapsed < 1 + 2 + 5, elapsed  # the lookup's connect + read timeouts, and the run
    assert "no complete answer within 3.0 s" in result.stderr
    assert {i["endpoint"] for i in receiver.items()} == {socket.gethostname()}
    assert deadline_lines(result.stderr) == []


class SilentNameserver:
    """A UDP socket on port 53 of a loopback address that reads queries and never answers."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queries: List[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def silent_resolver(tmp_path: Path) -> Iterator[Tuple[SilentNameserver, Tuple[str, ...]]]:
    """(the nameserver, a command prefix that runs a process with it as its only resolver)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        unavailable("a private resolv.conf needs root and unshare (util-linux)")
    # An address of the loopback range of its own, so that two test runs on one machine never meet.
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    try:
        server = SilentNameserver(address)
    except OSError as err:
        unavailable(f"cannot listen on {address}:53: {err}")
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {server.address}\noptions timeout:30 attempts:3\n")
    # The bind mount lives only in the new mount namespace: the host's resolv.conf is untouched.
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind "{conf}" /etc/resolv.conf && exec "$@"', "sh")
    try:
        yield server, prefix
    finally:
        server.close()


@pytest.mark.parametrize("path, said", [
    (TRANSFER, "cannot resolve 'falcon.deadline-test.invalid' within"),
    # The agent's name is asked first: that question takes the time left, and says so.
    (AGENT, ("no host name from the falcon-agent at http://falcon.deadline-test.invalid:1988"
             "/proc/kernel/hostname (no complete answer within")),
])
def test_a_receiver_name_that_never_resolves_is_spooled_by_the_deadline(
        silent_resolver: Tuple[SilentNameserver, Tuple[str, ...]], tmp_path: Path, container: str,
        path: str, said: str) -> None:
    server, prefix = silent_resolver
    spool_dir = tmp_path / "spool"
    url = f"http://falcon.deadline-test.invalid:1988{path}"
    # A connect timeout longer than the run: only the deadline bounds the name's resolution.
    result, elapsed = collect(spool_dir, url, "--include", container, "--deadline", "5", "--connect-timeout", "10",
                              prefix=prefix)
    assert elapsed < 5 + MARGIN, (elapsed, result.stderr)
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert server.queries, "the name was never asked of the silent nameserver"
    assert said in result.stderr
    assert len(spooled(spool_dir)) == 1
    assert len(deadline_lines(result.stderr)) == 1


class DrippingDockerApi:
    """A Docker API on a unix socket that answers every request one byte a second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                self.requests += 1
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]":
                    if self._stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def test_a_docker_api_answering_a_byte_a_second_ends_the_run_by_its_deadline(tmp_path: Path) -> None:
    api = DrippingDockerApi(tmp_path / "docker.sock")
    try:
        command = [sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "docker",
                   "--docker-host", f"unix://{api.path}", "--docker-timeout", "10", "--deadline", "4"]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=ROOT, check=False)
        elapsed = time.monotonic() - started
    finally:
        api.close()
    assert elapsed < 4 + MARGIN, (elapsed, result.stderr)
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert api.requests >= 1
    assert "no container list within" in result.stderr
    assert result.stdout == ""


@pytest.fixture
def gc_back() -> Iterator[None]:
    import gc

    yield
    gc.enable()  # collect disables it for its one short run; this one ran in the test process


def test_a_collection_cut_short_by_the_deadline_names_what_it_skipped_and_exits_4(
        run_container: Any, monkeypatch: pytest.MonkeyPatch, gc_back: None) -> None:
    """The slow step is injected: each namespace read waits 0.8 s before reading for real."""
    from click.testing import CliRunner

    from container_netstat import namespaces

    started_containers = [run_container(name=f"slow{i}", network_mode="none") for i in range(6)]
    names = {c.name for c in started_containers}
    label = f"{TEST_LABEL}={started_containers[0].labels[TEST_LABEL]}"
    real = namespaces.read_netns
    reads: List[float] = []

    def slow_read(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.8)
        reads.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(namespaces, "read_netns", slow_read)
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["collect", "--dry-run", "--include", label, "--deadline", "2",
                                           "--workers", "1", "--metrics", "basic"])
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 0.8 + MARGIN, elapsed  # a read started before the deadline may end after it
    assert result.exit_code == cli.EXIT_PARTIAL, result.stderr
    items = json.loads(result.stdout)  # stdout is the JSON array and nothing else
    read = {tag.split("=", 1)[1] for i in items for tag in i["tags"].split(",") if tag.startswith("container=")}
    (line,) = deadline_lines(result.stderr)
    late = {name for name in names if name in line}
    assert late and read and late | read == names and not late & read, (line, read)
    assert f"{len(late)} containers not read" in line
    assert len(reads) == len(read) < len(names)


def test_the_loop_stops_a_run_that_hangs_and_goes_on(tmp_path: Path) -> None:
    if not shutil.which("timeout"):
        unavailable("the loop needs timeout (coreutils)")
    starts = tmp_path / "starts"
    fake = tmp_path / "bin" / "container-netstat"
    fake.parent.mkdir()
    # A run that hangs and ignores SIGTERM, as one stuck in a blocking call might: only the
    # loop's kill ends it.
    fake.write_text(f'#!/bin/sh\ntrap "" TERM\necho "$$ $*" >> "{starts}"\nwhile :; do sleep 1; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "CONTAINER_NETSTAT_INTERVAL": "1"}
    loop = subprocess.Popen(["sh", str(LOOP), "--deadline", "1", "--dry-run"], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # First run: stopped at 1 + 1 + 10 s, killed 5 s later; the second starts at once.
        limit = time.monotonic() + 1 + 1 + 10 + 5 + 10
        runs: List[str] = []
        while time.monotonic() < limit and len(runs) < 2:
            time.sleep(0.5)
            runs = starts.read_text().splitlines() if starts.exists() else []
        assert len(runs) >= 2, runs
        first, second = (int(run.split()[0]) for run in runs[:2])
        assert not _alive(first)
        assert runs[0].split()[1:] == ["collect", "--deadline", "1", "--dry-run"]
        # SIGTERM to the loop reaches the run through timeout, which kills it 5 s later.
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=15) == 0
        assert not _alive(second)
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
        for run in starts.read_text().splitlines() if starts.exists() else []:
            if _alive(int(run.split()[0])):
                os.kill(int(run.split()[0]), signal.SIGKILL)
        _, stderr = loop.communicate(timeout=10)
    assert "collect did not end within 12 s (deadline 1 s): stopped (137)" in stderr


def _alive(pid: int) -> bool:
    """Running, neither gone nor a zombie waiting for a reaper (timeout's kill takes timeout too)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

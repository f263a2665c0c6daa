"""A run imports only what its mode needs: ``collect --dry-run`` on the local Docker socket loads
neither the docker SDK nor requests/urllib3 (the list call is made with http.client,
docker_api.list_unix), and that list call on a real Unix socket: its answer, and every way a
daemon (or whatever listens there) can fail it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from container_netstat import discovery, docker_api
from container_netstat.errors import DockerUnavailable

HEAVY = ("docker", "requests", "urllib3", "charset_normalizer", "idna")


def imported(*args: str, env: Optional[dict] = None) -> List[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "container_netstat", *args],
                          capture_output=True, text=True, timeout=120, env=env)
    return [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]


def test_help_and_a_proc_dry_run_import_no_http_library() -> None:
    for args in (("--help",), ("collect", "--dry-run", "--runtime", "proc", "--include", "no-such-container-*")):
        modules = imported(*args)
        assert "container_netstat.cli" in modules
        assert not [m for m in modules if m.split(".")[0] in HEAVY], args


@pytest.mark.docker
def test_a_docker_dry_run_lists_without_the_sdk(docker_client: object) -> None:
    modules = imported("collect", "--dry-run", "--runtime", "docker", "--include", "no-such-container-*")
    assert "container_netstat.docker_api" in modules
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


class Server:
    """A real Unix socket server that answers each connection with ``reply`` (bytes), or never."""

    def __init__(self, path: str, reply: Optional[bytes]) -> None:
        self.path, self.reply = path, reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.requests: List[bytes] = []
        self.held: List[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests.append(conn.recv(65536))
            if self.reply is None:
                self.held.append(conn)  # never answers
                continue
            conn.sendall(self.reply)
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    servers: List[Server] = []

    def start(reply: Optional[bytes]) -> str:
        path = str(tmp_path / f"d{len(servers)}.sock")
        servers.append(Server(path, reply))
        return path

    yield start
    for server in servers:
        server.close()


def http(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


LISTED = [
    {"Id": "a" * 64, "Names": ["/web", "/other/alias"], "HostConfig": {"NetworkMode": "bridge"},
     "Labels": {"io.kubernetes.pod.name": "p"}},
    {"Id": "b" * 64, "Names": [], "HostConfig": None, "Labels": None},
]


def test_the_list_from_a_unix_socket(serve) -> None:
    path = serve(http("200 OK", json.dumps(LISTED).encode()))
    found = docker_api.list_unix(path, 5)
    assert [(c.name, c.network_mode, dict(c.labels)) for c in found] == [
        ("web", "bridge", {"io.kubernetes.pod.name": "p"}), ("b" * 12, "default", {})]


@pytest.mark.parametrize("reply, why", [
    (http("500 Internal Server Error", b'{"message":"boom"}'), "500 Internal Server Error"),
    (http("200 OK", b"<html>not json"), "not a container list"),
    (http("200 OK", b'{"Id": "x"}'), "not a container list"),
    (http("200 OK", b'[{"Names": ["/x"]}]'), "not a container list"),
    (b"garbage\r\n\r\n", "garbage"),
    (b"", "Remote end closed connection"),
])
def test_a_bad_answer_is_docker_unavailable(serve, reply: bytes, why: str) -> None:
    with pytest.raises(DockerUnavailable, match=why):
        docker_api.list_unix(serve(reply), 5)


def test_a_daemon_that_never_answers_times_out(serve) -> None:
    with pytest.raises(DockerUnavailable, match="timed out"):
        docker_api.list_unix(serve(None), 0.5)


def test_no_socket_and_no_permission_say_so(tmp_path: Path) -> None:
    with pytest.raises(DockerUnavailable, match="no such socket"):
        docker_api.list_unix(str(tmp_path / "missing.sock"), 1)
    if os.geteuid() == 0:
        return  # root connects anyway
    path = str(tmp_path / "closed.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    os.chmod(path, 0)
    with pytest.raises(DockerUnavailable, match="permission denied"):
        docker_api.list_unix(path, 1)
    sock.close()


def test_only_a_local_docker_socket_skips_the_sdk() -> None:
    assert docker_api.unix_path("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert docker_api.unix_path("tcp://127.0.0.1:2376") is None
    assert docker_api.unix_path("unix://relative.sock") is None
    assert discovery.DockerBackend({}, 1).plain_list
    assert not discovery.PodmanBackend("unix:///run/podman/podman.sock", 1, None).plain_list  # type: ignore[arg-type]


# What a dry run printing JSON has no use for: the Prometheus text format, transfer's RPC check
# (no --transfer-addr given), the hostnet group (not a default group), and secrets with hmac
# and hashlib (random names and netlink sequence numbers come from os.urandom).
NOT_FOR_A_DRY_RUN = ("container_netstat.prometheus", "container_netstat.transfer", "container_netstat.hostnet",
                     "container_netstat.cgroup_members", "secrets", "hmac", "hashlib")


def test_a_dry_run_loads_no_module_it_does_not_use() -> None:
    modules = imported("collect", "--dry-run", "--runtime", "proc", "--include", "no-such-container-*")
    assert "container_netstat.tcp_reader" in modules and "container_netstat.spool" in modules
    assert [m for m in NOT_FOR_A_DRY_RUN if m in modules] == []


def test_the_modules_left_out_still_load_when_asked_for() -> None:
    modules = imported("collect", "--format", "prometheus", "--runtime", "proc", "--include", "no-such-container-*")
    assert "container_netstat.prometheus" in modules
    modules = imported("collect", "--dry-run", "--metrics", "basic,hostnet", "--runtime", "proc", "--include",
                       "no-such-container-*")
    assert "container_netstat.hostnet" in modules
    done = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--dry-run", "--runtime", "proc",
                           "--transfer-addr", "no-port-here"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--transfer-addr" in done.stderr, done.stderr


def test_each_process_starts_its_sequence_numbers_elsewhere() -> None:
    code = "from container_netstat import tcp_reader; print(tcp_reader._next_seq())"
    starts = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             check=True).stdout.strip() for _ in range(3)}
    assert len(starts) == 3
    assert all(0 < int(s) < 2**31 + 1 for s in starts)

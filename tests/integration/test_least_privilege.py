"""The main path as a non-root user in the docker group, and what it must never do."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import container_netstat
from conftest import pid_of, unavailable
from integration.workloads import hold
from integration.test_collect_docker import background, by_tags, collect_json

pytestmark = pytest.mark.docker

USER = "cnetstat-test"
PACKAGES = ("click", "docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer")


@pytest.fixture(scope="module")
def docker_group_user() -> Iterator[Any]:
    """A system user in the docker group, and a world-readable copy of the package and its deps."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    try:
        grp.getgrnam("docker")
    except KeyError:
        unavailable("no docker group (Debian's docker.io creates it)")
    python = shutil.which("python3", path="/usr/bin") or ""
    if not python:
        unavailable("no /usr/bin/python3")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--groups", "docker", USER], check=True)
    site = Path(tempfile.mkdtemp(prefix="cn-nonroot-", dir="/tmp"))
    roots = [Path(container_netstat.__file__).parent]
    for name in PACKAGES:
        module = __import__(name)
        roots.append(Path(module.__file__).parent)
    for root in roots:
        shutil.copytree(root, site / root.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    def run(*args: str, user: str = USER) -> subprocess.CompletedProcess:
        groups = ["--init-groups"] if user == USER else ["--clear-groups"]
        return subprocess.run(
            ["setpriv", f"--reuid={user}", f"--regid={user}", *groups,
             "--bounding-set=-all", "--inh-caps=-all",
             python, "-m", "container_netstat", *args],
            capture_output=True, text=True, timeout=120, cwd="/",
            # the copied charset_normalizer was built for another patch release of 3.11;
            # requests then warns once at import: not the tool's output under test.
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": "/",
                 "PYTHONWARNINGS": "ignore:Unable to find acceptable character"},
        )

    yield run
    shutil.rmtree(site, ignore_errors=True)


def test_docker_group_member_gets_the_same_numbers_as_root(docker_group_user: Any, run_container: Any) -> None:
    holders: List[Any] = []
    try:
        server = run_container(name="lp-server", network_mode="none")
        owner = run_container(name="lp-owner", network_mode="none")
        run_container(name="lp-joiner", network_mode=f"container:{owner.id}")
        holders.append(background(pid_of(server), hold(3)))
        as_user = docker_group_user("collect", "--dry-run", "--log-level", "debug")
        assert as_user.returncode == 0, as_user.stderr
        as_root = by_tags(collect_json()[0])
        got = by_tags(json.loads(as_user.stdout))
        for tags in (f"container={server.name}", f"container={owner.name}"):
            for metric in ("tcp.established", "tcp.inuse", "udp.inuse", "sockets.used"):
                assert got[tags][metric] == as_root[tags][metric], (tags, metric)
        assert got[f"container={server.name}"]["tcp.established"] == 6
        # served by the world-readable cgroup files, not by inspect or root-only pid files
        assert f"{server.id[:12]}: pid" in as_user.stderr and "from cgroup" in as_user.stderr
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_user_outside_the_docker_group_is_refused_clearly(docker_group_user: Any) -> None:
    result = docker_group_user("collect", "--dry-run", user="65534")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

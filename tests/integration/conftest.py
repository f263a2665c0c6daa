"""Fixtures shared by the integration tests: helper processes, and a docker-group user."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import container_netstat
from conftest import unavailable
from receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The project's falcon-agent and transfer stand-in on 127.0.0.1 (tests/receiver.py)."""
    with Receiver() as server:
        yield server


@pytest.fixture
def holders() -> Iterator[List["subprocess.Popen[str]"]]:
    """Processes a test starts (clients, servers entering a namespace); killed afterwards."""
    procs: List["subprocess.Popen[str]"] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


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


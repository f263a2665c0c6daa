"""Credentials from the environment never reach stderr or stdout in full: a DOCKER_HOST or
CONTAINER_HOST with user:password, and a --falcon-url with user:password, whether given as an
option or an environment variable, whatever goes wrong, at --log-level debug.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List

import pytest

from container_netstat import cli

from receiver import Receiver

pytestmark = pytest.mark.docker

SECRET = "s3cret-Pa55"
ONLY_HOST = ("--include", "cnt-secrets-selects-no-container")


@pytest.fixture(autouse=True)
def docker_up(docker_client: object) -> None:
    """The pushing runs collect from the real daemon first."""



def run(args: List[str], env: Dict[str, str]) -> "subprocess.CompletedProcess[str]":
    full = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINER_HOST")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "container_netstat", *args, "--log-level", "debug"],
                          capture_output=True, text=True, timeout=60, env=full)


def assert_hidden(result: "subprocess.CompletedProcess[str]", *parts: str) -> None:
    for text in (result.stderr, result.stdout):
        for part in (SECRET, *parts):
            assert part not in text, text


# -- the runtime's address -------------------------------------------------------------------

DOCKER_URLS = [
    f"tcp://admin:{SECRET}@127.0.0.1:1",
    f"https://admin:{SECRET}@127.0.0.1:1/",
    f"tcp://admin:p@ss-{SECRET}@[::1]:1",  # an unencoded "@" in the password
]


@pytest.mark.parametrize("url", DOCKER_URLS)
@pytest.mark.parametrize("given", ["DOCKER_HOST", "--docker-host", "CONTAINER_NETSTAT_COLLECT_DOCKER_HOST"])
@pytest.mark.parametrize("command", ["collect --dry-run", "doctor"])
def test_docker_host_credentials_are_never_shown(url: str, given: str, command: str) -> None:
    args = command.split()
    env: Dict[str, str] = {}
    if given == "--docker-host":
        args += ["--docker-host", url]
    elif command == "doctor" and given.startswith("CONTAINER_NETSTAT_COLLECT"):
        env["CONTAINER_NETSTAT_DOCTOR_DOCKER_HOST"] = url
    else:
        env[given] = url
    result = run(args + ["--docker-timeout", "2"], env)
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert result.stdout == ""
    assert_hidden(result, "admin:", "p@ss")
    (line,) = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert "cannot reach Docker at " in line and "://***@" in line, line


def test_podman_container_host_credentials_are_never_shown() -> None:
    url = f"tcp://admin:{SECRET}@127.0.0.1:1"
    result = run(["collect", "--dry-run", "--runtime", "podman", "--docker-timeout", "2"], {"CONTAINER_HOST": url})
    assert result.returncode == cli.EXIT_DOCKER, result.stderr
    assert_hidden(result, "admin:")
    assert "cannot reach Podman at tcp://***@127.0.0.1:1" in result.stderr


# -- the receiver's URL --------------------------------------------------------------------------


@pytest.mark.parametrize("fault, code", [
    ("none", cli.EXIT_OK), ("down", cli.EXIT_SPOOLED), ("500", cli.EXIT_SPOOLED), ("400", cli.EXIT_REJECTED),
    ("cut", cli.EXIT_SPOOLED), ("slow", cli.EXIT_SPOOLED),
])
@pytest.mark.parametrize("given", ["--falcon-url", "CONTAINER_NETSTAT_COLLECT_FALCON_URL"])
def test_falcon_url_credentials_are_never_shown(receiver: Receiver, tmp_path: object, fault: str, code: int,
                                                given: str) -> None:
    if fault == "down":
        receiver.down()
    elif fault in ("500", "400"):
        receiver.fail(int(fault), "no")
    elif fault == "cut":
        receiver.cut()
    elif fault == "slow":
        receiver.slow(10)
    url = receiver.url().replace("http://", f"http://falcon:p@ss-{SECRET}@")
    args = ["collect", "--spool-dir", str(tmp_path), "--read-timeout", "1", *ONLY_HOST]
    env: Dict[str, str] = {}
    if given == "--falcon-url":
        args += ["--falcon-url", url]
    else:
        env[given] = url
    result = run(args, env)
    assert result.returncode == code, result.stderr
    assert_hidden(result, "falcon:", "p@ss")
    if fault in ("down", "500", "cut", "slow"):
        assert f"could not deliver to http://***@127.0.0.1:{receiver.port}/v1/push" in result.stderr
    if fault not in ("down", "slow"):  # a slow receiver records a request only after its delay
        assert receiver.pushes, "the run never reached the receiver"


@pytest.mark.parametrize("url", [
    f"http://falcon:{SECRET}@127.0.0.1:notaport/v1/push",
    f"falcon:{SECRET}@127.0.0.1:1988/v1/push",  # no scheme
    f"http://falcon:{SECRET}@[::1/v1/push",
])
def test_an_unusable_falcon_url_is_a_usage_error_that_hides_its_credentials(tmp_path: object, url: str) -> None:
    result = run(["collect", "--falcon-url", url, "--spool-dir", str(tmp_path), *ONLY_HOST], {})
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert "--falcon-url" in result.stderr and "***@" in result.stderr
    assert_hidden(result, "falcon:")
    assert os.listdir(str(tmp_path)) == []  # refused before the spool was touched

"""Shared fixtures: the recorded /proc fixtures and a real Docker daemon.

Under CI=true a missing Docker daemon fails the tests that need it instead of
skipping them: `scripts/test.sh` (and so `.ci/run`) starts one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
PROC_NET = FIXTURES / "proc-net"
IMAGE = os.environ.get("CONTAINER_NETSTAT_TEST_IMAGE", "container-netstat/busybox:latest")
TEST_LABEL = "container-netstat-test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI; fail under CI=true, where .ci/run must have provided it."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        client.images.get(IMAGE)
    except Exception as err:  # noqa: BLE001 - any failure means "no usable daemon"
        unavailable(f"no usable Docker daemon with image {IMAGE}: {err}")
    return client


@pytest.fixture
def run_container(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """Start a real container from the busybox image; removed after the test."""
    started: List[Any] = []
    run_id = uuid.uuid4().hex[:8]

    def run(command: str = "sleep 100000", name: str = "", **kwargs: Any) -> Any:
        labels = {TEST_LABEL: run_id, **kwargs.pop("labels", {})}
        container = docker_client.containers.run(
            IMAGE,
            ["sh", "-c", command],
            name=f"cnt-{run_id}-{name or len(started)}",
            detach=True,
            labels=labels,
            **kwargs,
        )
        started.append(container)
        container.reload()
        return container

    yield run
    for container in started:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def container_starter(docker_client: Any, run_id: str, started: List[Any]) -> Callable[..., Any]:
    """``run(name, **kwargs)``: a container of the test image running ``sleep``, labelled with
    ``run_id`` and named after it, appended to ``started`` (which the caller removes)."""

    def run(name: str, **kwargs: Any) -> Any:
        labels = {TEST_LABEL: run_id, **kwargs.pop("labels", {})}
        container = docker_client.containers.run(IMAGE, ["sh", "-c", "sleep 100000"], name=f"cnt-{run_id}-{name}",
                                                 detach=True, labels=labels, **kwargs)
        started.append(container)
        container.reload()
        return container

    return run


def remove_all(containers: List[Any]) -> None:
    """Remove the containers a test started; one already gone is fine."""
    for container in containers:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def pid_of(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def in_netns(pid: int, code: str, background: bool = False) -> Any:
    """Run Python code in a process's network namespace (only the netns changes)."""
    args = ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code]
    if background:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging if a fifo is ever opened for reading."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked on a file (a fifo?) it should never have opened")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


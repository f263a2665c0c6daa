"""End to end through a real cron daemon: the shipped cron.d file runs the tool every minute.

The test installs ``cron.d/container-netstat`` as it ships, adding only the receiver's URL,
a spool directory and the tool's own directory in front of its PATH (where a virtualenv put
the entry point; on a host it is /usr/local/bin, already in that PATH). Debian's ``cron`` is
started if none runs. Under CI=true a missing cron fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import unavailable
from receiver import AGENT, Receiver

REPO = Path(__file__).resolve().parents[2]
CRON_FILE = REPO / "cron.d" / "container-netstat"
CRON_D = Path("/etc/cron.d")
WAIT = 75.0  # a job starts at the next minute boundary


def parse(text: str) -> Tuple[Dict[str, str], List[str]]:
    """(environment lines, job lines) of a system crontab."""
    env: Dict[str, str] = {}
    jobs: List[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if match:
            env[match.group(1)] = match.group(2)
        else:
            jobs.append(line)
    return env, jobs


def test_the_cron_file_is_a_system_crontab_that_cron_will_read() -> None:
    # Debian's cron skips /etc/cron.d files whose names have other characters (e.g. a dot).
    assert re.fullmatch(r"[A-Za-z0-9_-]+", CRON_FILE.name)
    env, jobs = parse(CRON_FILE.read_text())
    assert env["SHELL"] == "/bin/sh"
    assert all(p.startswith("/") for p in env["PATH"].split(":")) and "/usr/local/bin" in env["PATH"]
    assert env["MAILTO"] == '""'
    assert len(jobs) == 1
    minute, hour, day, month, weekday, user, command = jobs[0].split(None, 6)
    assert (minute, hour, day, month, weekday, user) == ("*", "*", "*", "*", "*", "root")
    assert "container-netstat collect" in command and "--dry-run" not in command
    assert command.endswith("2>&1 | logger -t container-netstat -p daemon.notice")
    assert "%" not in command  # cron turns % into a newline


def test_the_job_line_reports_a_failing_exit_status(tmp_path: Path) -> None:
    """The job's shell wrapper, with a stand-in tool and logger, as cron's /bin/sh runs it."""
    _, jobs = parse(CRON_FILE.read_text())
    command = jobs[0].split(None, 6)[6]
    (tmp_path / "container-netstat").write_text("#!/bin/sh\necho 'container-netstat: WARNING: spooled' >&2\nexit 5\n")
    (tmp_path / "logger").write_text(f"#!/bin/sh\ncat > {tmp_path}/logged\n")
    for name in ("container-netstat", "logger"):
        (tmp_path / name).chmod(0o755)
    subprocess.run(["/bin/sh", "-c", command], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, timeout=30, check=True)
    assert (tmp_path / "logged").read_text().splitlines() == [
        "container-netstat: WARNING: spooled",
        "container-netstat: exit status 5",
    ]


def _cron_pid() -> Optional[int]:
    try:
        pid = int(Path("/run/crond.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.fixture
def cron_daemon(tmp_path: Path) -> Iterator[None]:
    binary = shutil.which("cron") or shutil.which("cron", path="/usr/sbin:/sbin")
    if binary is None:
        unavailable("Debian's cron is not installed (apt-get install cron)")
    if os.geteuid() != 0:
        unavailable("installing a file in /etc/cron.d needs root")
    started: Optional[subprocess.Popen[bytes]] = None
    if _cron_pid() is None:
        errors = open(tmp_path / "cron.err", "wb")
        started = subprocess.Popen([str(binary), "-f"], stdout=subprocess.DEVNULL, stderr=errors)
        time.sleep(1)
        if started.poll() is not None and _cron_pid() is None:
            unavailable(f"cron did not start: {(tmp_path / 'cron.err').read_text().strip()}")
    yield
    if started is not None and started.poll() is None:
        started.terminate()
        started.wait(10)


@pytest.fixture
def syslog() -> Iterator[Optional[List[str]]]:
    """What reaches /dev/log, when no syslog daemon owns it; None when one does."""
    path = "/dev/log"
    if os.path.exists(path) or os.geteuid() != 0:
        yield None
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.settimeout(0.2)
    lines: List[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                lines.append(sock.recv(65536).decode("utf-8", "replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    yield lines
    done.set()
    reader.join(2)
    sock.close()
    os.unlink(path)


def install(receiver: Receiver, spool_dir: Path) -> Path:
    bindir = Path(sys.executable).parent
    if not (bindir / "container-netstat").exists():
        pytest.fail(f"no container-netstat entry point beside {sys.executable}: pip install -e . first")
    lines = []
    for line in CRON_FILE.read_text().splitlines():
        if line.startswith("PATH="):
            lines.append(f"PATH={bindir}:{line[len('PATH='):]}")
            lines.append(f"CONTAINER_NETSTAT_COLLECT_FALCON_URL={receiver.url(AGENT)}")
            lines.append(f"CONTAINER_NETSTAT_COLLECT_SPOOL_DIR={spool_dir}")
            lines.append("CONTAINER_NETSTAT_COLLECT_LOG_LEVEL=info")
        else:
            lines.append(line)
    target = CRON_D / f"container-netstat-test-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name("." + target.name)  # cron ignores names with a dot
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)
    tmp.rename(target)
    return target


@pytest.mark.docker
def test_cron_runs_the_tool_every_minute_and_the_push_arrives(
    cron_daemon: None, syslog: Optional[List[str]], run_container: Any, tmp_path: Path
) -> None:
    container = run_container(name="cron", network_mode="none").name
    spool_dir = tmp_path / "spool"
    with Receiver() as receiver:
        installed = install(receiver, spool_dir)
        try:
            deadline = time.monotonic() + WAIT
            while not receiver.accepted() and time.monotonic() < deadline:
                time.sleep(0.5)
            # The run may still be sending batches, then logger writes: wait for it to finish.
            settle = time.monotonic() + 15
            while receiver.accepted() and time.monotonic() < settle and not _idle(spool_dir):
                time.sleep(0.3)
            while syslog is not None and not _logged(syslog, "delivered") and time.monotonic() < settle:
                time.sleep(0.3)
        finally:
            installed.unlink()
        pushes = receiver.accepted()
    assert pushes, f"no push within {WAIT:.0f} s of installing {installed.name}"
    items = [item for push in pushes for item in push.items]
    assert receiver.invalid() == [] and receiver.problems() == []
    assert any(f"container={container}" in item["tags"] for item in items)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    assert not any(p.name.endswith(".json.gz") for p in spool_dir.iterdir())
    if syslog is not None:
        assert _logged(syslog, "delivered"), syslog


def _logged(syslog: List[str], text: str) -> bool:
    return any("container-netstat" in line and text in line for line in syslog)


def _idle(spool_dir: Path) -> bool:
    """True when no process holds the spool's lock any more."""
    import fcntl

    with open(spool_dir / "lock", "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True

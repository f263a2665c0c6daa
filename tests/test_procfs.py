"""The thin readers: gone processes, zombies and unreadable files, on real and fake roots."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from container_netstat import procfs
from container_netstat.errors import ProcessGone, ProcReadError
from container_netstat.procfs import ProcFS


def test_reads_this_process(tmp_path: Path) -> None:
    proc = ProcFS()
    assert "TCP:" in proc.read_net(os.getpid(), "sockstat")
    assert proc.netns_key(os.getpid()) == os.stat("/proc/self/net/sockstat").st_ino
    assert proc.kernel_release() == os.uname().release


def test_exited_process_is_gone() -> None:
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    with pytest.raises(ProcessGone) as info:
        ProcFS().read_net(child.pid, "sockstat")
    assert info.value.pid == child.pid
    with pytest.raises(ProcessGone):
        ProcFS().netns_key(child.pid)


def test_zombie_is_gone() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    try:
        with pytest.raises(ProcessGone):
            ProcFS().read_net(child.pid, "sockstat")
    finally:
        child.wait()


def test_missing_file_of_a_live_pid_is_a_read_error(tmp_path: Path) -> None:
    (tmp_path / "42" / "net").mkdir(parents=True)
    (tmp_path / "42" / "stat").write_text("42 (sh) S 1 1 1\n")
    with pytest.raises(ProcReadError, match="no such file"):
        ProcFS(str(tmp_path)).read_net(42, "snmp")


def test_unreadable_file_is_a_read_error(tmp_path: Path) -> None:
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    (tmp_path / "42" / "stat").write_text("42 (sh) S 1 1 1\n")
    (net / "snmp").mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(ProcReadError, match="snmp"):
        ProcFS(str(tmp_path)).read_net(42, "snmp")


def test_missing_kernel_release_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(ProcReadError, match="osrelease"):
        ProcFS(str(tmp_path)).kernel_release()


@pytest.mark.parametrize("code", [errno.ESRCH, errno.EINVAL])
def test_the_namespace_key_of_a_process_that_died_under_a_stat_is_gone(
    code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """netns_key translates errors as the readers do: ESRCH and EINVAL from a pid that turns
    out to have exited mean "gone", as ENOENT does (it used to report them as unreadable)."""
    child = subprocess.Popen(["sleep", "0"])
    child.wait()

    def stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(ProcessGone):
        ProcFS().netns_key(child.pid)
    with pytest.raises(ProcReadError):
        ProcFS().netns_key(os.getpid())  # alive: the error is the file's, not a vanished pid


@pytest.mark.parametrize("root", ["/proc", "/proc/", "/host/proc", "relative", "", "/"])
@pytest.mark.parametrize("parts", [(42, "net", "sockstat"), ("42",), (7, "ns", "net"), ("sys", "kernel", "osrelease"),
                                   (), ("",), (1, ""), ("", 1), ("a/", "b"), ("a", "/b"), ("/abs",), ("a//b",),
                                   (1, "net/", "x"), ("..", "etc")])
def test_path_is_os_path_join(root: str, parts: tuple) -> None:
    assert ProcFS(root).path(*parts) == os.path.join(root, *(str(p) for p in parts))


def test_read_bytes_whole_or_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 200_000)
    assert procfs.read_bytes(str(big)) == b"x" * 200_000  # more than one read
    assert procfs.read_bytes(str(big), 65536) == b"x" * 65536
    assert procfs.read_bytes(str(big), 10) == b"x" * 10
    assert procfs.read_bytes("/proc/self/stat").startswith(str(os.getpid()).encode() + b" (")
    with pytest.raises(FileNotFoundError):
        procfs.read_bytes(str(tmp_path / "missing"))

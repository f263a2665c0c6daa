"""The one reader of host files: a regular file of at most the cap, never through a link it was
not told to follow, never blocking; one warning per refused file.

Each hostile file is real: a fifo with no writer, a link to /dev/zero, a unix socket, a file one
byte over the cap. The ``alarm`` fixture turns a read that would hang into a failure.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from container_netstat.hostfile import CAP, HostFiles
from container_netstat.safedir import SafeDir, SafeDirError


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def files() -> HostFiles:
    return HostFiles()


def test_a_regular_file_is_read_whole(tmp_path: Path, files: HostFiles) -> None:
    (tmp_path / "config.v2.json").write_bytes(b'{"Name": "/web"}')
    assert files.read(str(tmp_path / "config.v2.json")) == b'{"Name": "/web"}'
    assert files.text(str(tmp_path / "config.v2.json")) == '{"Name": "/web"}'


def test_a_missing_file_is_none_and_no_news(tmp_path: Path, files: HostFiles,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="container_netstat"):
        assert files.read(str(tmp_path / "missing")) is None
        assert files.read(str(tmp_path / "missing" / "below")) is None
        (tmp_path / "file").write_text("")
        assert files.read(str(tmp_path / "file" / "below")) is None  # ENOTDIR
    assert caplog.records == []


@pytest.mark.usefixtures("alarm")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, files: HostFiles,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(tmp_path / "state.json")
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        for follow in (False, True, False):
            assert files.read(str(tmp_path / "state.json"), follow=follow) is None
    assert warnings(caplog) == [f"{tmp_path}/state.json: not a regular file; not read"]  # once per file


@pytest.mark.usefixtures("alarm")
def test_a_fifo_with_a_writer_feeding_it_is_refused_too(tmp_path: Path, files: HostFiles) -> None:
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open
    writer = os.open(tmp_path / "fifo", os.O_WRONLY)
    try:
        os.write(writer, b"x" * 4096)
        assert files.read(str(tmp_path / "fifo")) is None
    finally:
        os.close(writer)
        os.close(reader)


@pytest.mark.usefixtures("alarm")
def test_a_link_to_dev_zero_is_refused_followed_or_not(tmp_path: Path, files: HostFiles,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.v2.json").symlink_to("/dev/zero")
    (tmp_path / "daemon.json").symlink_to("/dev/zero")
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        assert files.read(str(tmp_path / "config.v2.json")) is None
        assert files.read(str(tmp_path / "daemon.json"), follow=True) is None  # a device, not a file
        assert files.read("/dev/zero", follow=True) is None
    assert warnings(caplog) == [
        f"{tmp_path}/config.v2.json: a symbolic link: refusing to follow it; not read",
        f"{tmp_path}/daemon.json: not a regular file; not read",
        "/dev/zero: not a regular file; not read",
    ]


def test_a_link_to_a_file_outside_is_refused_unless_told_to_follow(tmp_path: Path, files: HostFiles) -> None:
    outside = tmp_path / "elsewhere" / "config.v2.json"
    outside.parent.mkdir()
    outside.write_text('{"Name": "/another-tenants"}')
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "config.v2.json").symlink_to(outside)
    assert files.read(str(tmp_path / "containers" / "config.v2.json")) is None
    assert files.read(str(tmp_path / "containers" / "config.v2.json"), follow=True) == outside.read_bytes()
    # only the last component: a link higher up is the host's own layout (a data-root moved elsewhere)
    (tmp_path / "moved").symlink_to(tmp_path / "elsewhere")
    assert files.read(str(tmp_path / "moved" / "config.v2.json")) == outside.read_bytes()


def test_a_file_over_the_cap_is_refused_not_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert CAP == 1 << 20
    files = HostFiles()
    (tmp_path / "at-cap").write_bytes(b"a" * CAP)
    with open(tmp_path / "over-cap", "wb") as f:
        f.truncate(CAP + 1)  # sparse: what matters is the size the reader meets
    with open(tmp_path / "huge", "wb") as f:
        f.truncate(1 << 40)  # a terabyte, as a container could make one, in no space
    with caplog.at_level(logging.WARNING, logger="container_netstat"):
        assert files.read(str(tmp_path / "at-cap")) == b"a" * CAP
        assert files.read(str(tmp_path / "over-cap")) is None
        assert files.read(str(tmp_path / "huge")) is None
        assert files.read(str(tmp_path / "huge")) is None
    assert warnings(caplog) == [f"{tmp_path}/over-cap: larger than {CAP} bytes; not read",
                                f"{tmp_path}/huge: larger than {CAP} bytes; not read"]
    assert HostFiles(cap=4).read(str(tmp_path / "at-cap")) is None
    assert files.read(str(tmp_path / "at-cap"), cap=8) is None
    assert files.read(str(tmp_path / "over-cap"), cap=CAP + 1) == b"\0" * (CAP + 1)


def test_proc_files_of_size_zero_are_read(files: HostFiles) -> None:
    """/proc files say size 0 and have content: the reader reads, it does not trust st_size."""
    assert os.stat("/proc/self/cmdline").st_size == 0
    assert files.read("/proc/self/cmdline")


@pytest.mark.usefixtures("alarm")
def test_a_directory_and_a_socket_are_refused(tmp_path: Path, files: HostFiles) -> None:
    (tmp_path / "dir").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(tmp_path / "sock"))
        server.listen(1)
        assert files.read(str(tmp_path / "dir")) is None
        assert files.read(str(tmp_path / "sock")) is None
    finally:
        server.close()


def test_the_spool_and_the_host_files_share_one_careful_read(tmp_path: Path) -> None:
    """SafeDir.read is the same piece: a fifo, a link, a device are refused there as here."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    with SafeDir.open(tmp_path) as directory:
        for name, reason in (("fifo", "not a regular file"), ("zero", "a symbolic link")):
            with pytest.raises(SafeDirError, match=reason):
                directory.read(name)

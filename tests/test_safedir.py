"""The safe-directory layer: descriptor-relative, no link followed, atomic writes, one error class."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, List

import pytest

from container_netstat.errors import ContainerNetstatError
from container_netstat.safedir import LINK_REFUSED, SafeDir, SafeDirError



def names(path: Path) -> List[str]:
    return sorted(os.listdir(path))


def test_a_link_in_place_of_the_directory_is_refused_unless_asked_to_follow(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SafeDirError, match=LINK_REFUSED) as caught:
        SafeDir.open(tmp_path / "link")
    assert isinstance(caught.value, ContainerNetstatError) and caught.value.op == "open"
    with SafeDir.open(tmp_path / "link", follow=True) as directory:
        directory.write("x", b"data", 0o644, ".x.tmp")
    assert (tmp_path / "real" / "x").read_bytes() == b"data"


def test_a_file_in_place_of_the_directory_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SafeDirError, match="not a directory"):
        SafeDir.open(tmp_path / "file")


def test_the_listing_describes_links_and_fifos_without_following_them(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    os.mkfifo(tmp_path / "fifo")
    with SafeDir.open(tmp_path) as directory:
        listed = {entry.name: entry for entry in directory.list()}
        assert directory.lstat("missing") is None
    assert sorted(listed) == ["fifo", "link", "target"]
    assert (listed["target"].regular, listed["target"].size) == (True, 5)
    assert (listed["link"].regular, listed["link"].kind) == (False, "a symbolic link")
    assert (listed["fifo"].regular, listed["fifo"].kind) == (False, "a fifo")


def test_reads_refuse_links_fifos_and_directories(tmp_path: Path, alarm: None) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    with SafeDir.open(tmp_path) as directory:
        assert directory.read("target") == b"secret"
        assert directory.read("target", 3) == b"sec"
        with pytest.raises(SafeDirError, match=LINK_REFUSED):
            directory.read("link")
        for name in ("fifo", "dir"):
            with pytest.raises(SafeDirError, match="not a regular file"):
                directory.read(name)


def test_a_write_survives_short_writes_and_has_its_mode_whatever_the_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    data = bytes(range(256)) * 40
    previous = os.umask(0o777)
    try:
        with SafeDir.open(tmp_path) as directory:
            directory.write("batch", data, 0o600, ".tmp-batch")
    finally:
        os.umask(previous)
    assert (tmp_path / "batch").read_bytes() == data
    assert stat.S_IMODE(os.lstat(tmp_path / "batch").st_mode) == 0o600
    assert names(tmp_path) == ["batch"]


@pytest.mark.parametrize("fails", ["second write", "file fsync", "directory fsync"])
def test_a_failed_write_leaves_nothing_of_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 fails: str) -> None:
    (tmp_path / "old").write_bytes(b"old")
    real_write, real_fsync = os.write, os.fsync
    written: List[int] = []

    def write(fd: int, data: Any) -> int:
        if fails == "second write" and written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(fd)
        return real_write(fd, bytes(data[:10]))

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if (fails == "file fsync" and not is_dir) or (fails == "directory fsync" and is_dir):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    with SafeDir.open(tmp_path) as directory:
        with pytest.raises(SafeDirError) as caught:
            directory.write("new", b"x" * 100, 0o600, ".tmp-new")
        with pytest.raises(SafeDirError) as replacing:
            directory.write("old", b"x" * 100, 0o600, ".tmp-old")
    assert caught.value.op == "write" and caught.value.errno in (errno.ENOSPC, errno.EIO)
    assert str(caught.value).startswith(f"{tmp_path / 'new'}: ")
    if fails == "directory fsync":  # renamed, but not durable: reported lost, not kept by chance
        assert names(tmp_path) == [] and replacing.value.op == "write"
    else:
        assert names(tmp_path) == ["old"] and (tmp_path / "old").read_bytes() == b"old"


def test_a_temporary_name_in_use_is_never_reused_or_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"precious")
    (tmp_path / ".tmp-x").symlink_to(tmp_path / "elsewhere")
    with SafeDir.open(tmp_path) as directory:
        with pytest.raises(SafeDirError) as caught:
            directory.write("x", b"data", 0o600, ".tmp-x")
    assert caught.value.op == "create" and caught.value.errno == errno.EEXIST
    assert (tmp_path / "elsewhere").read_bytes() == b"precious" and (tmp_path / ".tmp-x").is_symlink()
    assert not (tmp_path / "x").exists()


def test_rename_unlink_and_lock(tmp_path: Path) -> None:
    with SafeDir.open(tmp_path) as directory:
        directory.write("a", b"1", 0o600, ".a.tmp")
        directory.rename("a", "b")
        with pytest.raises(SafeDirError) as missing:
            directory.rename("a", "c")
        assert (missing.value.op, missing.value.errno) == ("rename", errno.ENOENT)
        directory.unlink("b")
        directory.unlink("b")  # already gone: fine
        first = directory.lock("lock", 0o600)
        try:
            with pytest.raises(SafeDirError) as busy:
                directory.lock("lock", 0o600)  # flock(2): another open file description conflicts
            assert (busy.value.op, busy.value.errno) == ("lock", errno.EWOULDBLOCK)
        finally:
            os.close(first)
        os.close(directory.lock("lock", 0o600))
    assert names(tmp_path) == ["lock"] and stat.S_IMODE(os.lstat(tmp_path / "lock").st_mode) == 0o600

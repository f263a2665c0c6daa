"""Thin readers under an injected proc root: they open files and translate OS errors.

Parsing lives in ``procnet``; this module only knows paths. A missing file means
"process gone" only once the pid itself is confirmed gone (psutil's rule): after
a container exits, /proc/<pid>/net/* gives ENOENT, and a zombie also gives ENOENT
for its files although /proc/<pid> still exists (docs/facts.rst, "Vanishing processes").
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from container_netstat.errors import ContainerNetstatError, ProcessGone, ProcReadError

DEFAULT_PROC_ROOT = "/proc"
READ_SIZE = 65536  # per read(); a /proc/<pid>/net file of a busy namespace takes a few


def read_bytes(path: str, limit: Optional[int] = None) -> bytes:
    """A /proc (or /sys, cgroup) file, whole or its first ``limit`` bytes. os.open and os.read,
    not open(): a buffered file object costs an fstat, an ioctl and an lseek more per file,
    and a run reads several files per namespace."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        left = READ_SIZE if limit is None else limit
        while left > 0:
            data = os.read(fd, min(READ_SIZE, left))
            if not data:
                break
            parts.append(data)
            if limit is not None:
                left -= len(data)
    finally:
        os.close(fd)
    return b"".join(parts)


class ProcFS:
    """Access to one proc mount (the host's /proc, possibly mounted elsewhere)."""

    def __init__(self, root: str = DEFAULT_PROC_ROOT) -> None:
        self.root = root
        self._base = os.path.join(root, "")  # the root with one trailing separator

    def path(self, *parts: object) -> str:
        """``os.path.join(root, *parts)``. A run builds a dozen of these per namespace, so plain
        names (no empty part, none absolute, no separator at either end) are joined directly;
        anything else goes through os.path.join."""
        tail = "/".join(map(str, parts))
        if tail and tail[0] != "/" and tail[-1] != "/" and "//" not in tail:
            return self._base + tail
        return os.path.join(self.root, *(str(p) for p in parts))

    def _pid_is_gone(self, pid: int) -> bool:
        try:
            stat = read_bytes(self.path(pid, "stat"))
        except OSError:
            return True
        # The state is the field after the parenthesised command name.
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        return state in (b"Z", b"X")

    def is_gone(self, pid: int) -> bool:
        """True once the pid has exited (no /proc/<pid>/stat) or is a zombie."""
        return self._pid_is_gone(pid)

    def translate(self, pid: int, path: str, err: OSError) -> ContainerNetstatError:
        """The error of a failed access to one of ``pid``'s files: ProcessGone once the pid is
        confirmed gone (ENOENT, ESRCH, EINVAL: an exited process or a zombie), else ProcReadError."""
        missing = isinstance(err, (FileNotFoundError, ProcessLookupError))
        if (missing or err.errno in (errno.ESRCH, errno.EINVAL)) and self._pid_is_gone(pid):
            return ProcessGone(pid, path)
        return ProcReadError(f"{path}: {'no such file' if missing else err.strerror or err}")

    def _read(self, pid: int, path: str) -> str:
        try:
            data = read_bytes(path)
        except OSError as err:
            raise self.translate(pid, path, err) from err
        return data.decode("ascii", errors="replace")

    def read_net(self, pid: int, name: str) -> str:
        """Read /proc/<pid>/net/<name> (sockstat, sockstat6, snmp, netstat)."""
        return self._read(pid, self.path(pid, "net", name))

    def has_net(self, pid: int, name: str) -> bool:
        """True if the file exists; sockstat6 is absent when IPv6 is disabled."""
        return os.path.exists(self.path(pid, "net", name))

    def netns_key(self, pid: int) -> int:
        """An id of the pid's network namespace that needs no ptrace rights.

        Every namespace has its own /proc/net tree, so the inode of its sockstat
        entry identifies it; readlink(/proc/<pid>/ns/net) can fail with EACCES.
        """
        path = self.path(pid, "net", "sockstat")
        try:
            return os.stat(path).st_ino
        except OSError as err:
            raise self.translate(pid, path, err) from err

    def parent_pid(self, pid: int) -> Optional[int]:
        """The pid's parent from /proc/<pid>/stat, or None if it is gone."""
        try:
            stat = read_bytes(self.path(pid, "stat"))
            return int(stat[stat.rfind(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def read_cgroup(self, pid: int) -> str:
        """Read /proc/<pid>/cgroup (used to check that a pid belongs to a container)."""
        return self._read(pid, self.path(pid, "cgroup"))

    def kernel_release(self) -> str:
        """The running kernel's release string, e.g. ``6.18.44``."""
        path = self.path("sys", "kernel", "osrelease")
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read().strip()
        except OSError as err:
            raise ProcReadError(f"{path}: {err.strerror or err}") from err

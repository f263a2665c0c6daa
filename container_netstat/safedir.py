"""A directory used through a descriptor of its own: no symbolic link is ever followed in it.

Every call is relative to the descriptor (``openat(2)`` and friends), so a path swapped after
the directory was opened changes nothing, and every file is opened with ``O_NOFOLLOW``: a link
as the last component fails with ``ELOOP`` (open(2)) instead of being followed. Reads refuse
anything but a regular file, and open with ``O_NONBLOCK`` so that a fifo in place of a file
never blocks. A write is atomic: a new temporary file (``O_EXCL``, never reused), every byte
written, fsync, ``rename(2)`` over the name, fsync of the directory; on any failure nothing of
it is left behind.

This module knows nothing of what the files mean: the spool (spool.py) and the textfile
(prometheus.py) decide that. Its careful read (``read_regular``) is also the one under
hostfile.py, which reads the host's runtime files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from container_netstat.errors import ContainerNetstatError

LINK_REFUSED = "a symbolic link: refusing to follow it"
# O_CLOEXEC: a descriptor, the lock's above all, is never inherited by a child process.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class SafeDirError(ContainerNetstatError):
    """One step on a directory or a file in it failed.

    ``op`` names the step ("open", "list", "stat", "read", "create", "write", "rename",
    "unlink", "lock"), ``reason`` says why in a few words, ``errno`` is the OS error if any.
    """

    def __init__(self, path: Path, op: str, reason: str, code: Optional[int] = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.op = op
        self.reason = reason
        self.errno = code


@dataclass(frozen=True)
class Listed:
    """One entry of the directory as ``lstat`` saw it: a link is a link, never its target."""

    name: str
    mode: int
    size: int
    mtime: float

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def kind(self) -> str:
        """What it is, for a message: "a symbolic link", "a directory", ..."""
        if stat.S_ISLNK(self.mode):
            return "a symbolic link"
        if stat.S_ISDIR(self.mode):
            return "a directory"
        if stat.S_ISFIFO(self.mode):
            return "a fifo"
        if stat.S_ISSOCK(self.mode):
            return "a socket"
        if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            return "a device"
        return "a regular file" if self.regular else "not a regular file"


class SafeDir:
    """An open directory; ``SafeDir.open`` makes one, ``close`` (or ``with``) releases it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path, follow: bool = False) -> "SafeDir":
        """Open ``path`` as a directory; a symbolic link in its place is refused unless
        ``follow`` (for a directory the operator names, such as the textfile's)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            return cls(path, os.open(path, flags))
        except OSError as err:
            # O_DIRECTORY is checked before O_NOFOLLOW: a link to a directory gives ENOTDIR.
            if not follow and err.errno in (errno.ENOTDIR, errno.ELOOP) and path.is_symlink():
                raise SafeDirError(path, "open", LINK_REFUSED, err.errno) from err
            raise _error(path, "open", err) from err

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "SafeDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the directory itself ------------------------------------------------------------

    def mode(self) -> int:
        """The directory's permission bits."""
        try:
            return stat.S_IMODE(os.fstat(self._fd).st_mode)
        except OSError as err:
            raise _error(self.path, "stat", err) from err

    def owner(self) -> int:
        """The directory's owner (uid)."""
        try:
            return os.fstat(self._fd).st_uid
        except OSError as err:
            raise _error(self.path, "stat", err) from err

    def chmod(self, mode: int) -> None:
        try:
            os.fchmod(self._fd, mode)
        except OSError as err:
            raise _error(self.path, "write", err) from err

    def list(self) -> List[Listed]:
        """Every entry, unsorted, with what ``lstat`` says of it; one that vanished meanwhile
        is left out."""
        try:
            names = os.listdir(self._fd)
        except OSError as err:
            raise _error(self.path, "list", err) from err
        found = (self.lstat(name) for name in names)
        return [entry for entry in found if entry is not None]

    def lstat(self, name: str) -> Optional[Listed]:
        """The entry ``name`` (a link as a link), or None if there is none."""
        try:
            info = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise _error(self.path / name, "stat", err) from err
        return Listed(name, info.st_mode, info.st_size, info.st_mtime)

    # -- files in it -----------------------------------------------------------------------

    def read(self, name: str, limit: Optional[int] = None) -> bytes:
        """The bytes of the regular file ``name`` (at most ``limit``); a link, fifo, device or
        directory in its place is refused without being read."""
        return read_regular(self.path / name, limit, dir_fd=self._fd, name=name)

    def write(self, name: str, data: bytes, mode: int, temp: str, durable: bool = True) -> None:
        """Replace ``name`` with ``data`` atomically, mode ``mode`` whatever the umask, through
        the new file ``temp``. ``durable``: fsync the file before the rename and the directory
        after it (a crash then keeps the new file or the old one, never an empty one). On any
        failure neither ``temp`` (once created) nor a non-durable ``name`` is left behind."""
        renamed = False
        op = "create"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode, dir_fd=self._fd)
            op = "write"
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    # A full disk can take part of a write and refuse only the next one.
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            renamed = True
            if durable:
                os.fsync(self._fd)
        except BaseException as err:
            if op != "create":  # a temp name in use is someone else's: left alone
                self._discard(temp)
            if renamed:
                self._discard(name)  # not durable: report it lost rather than keep it by chance
            if isinstance(err, OSError):
                raise _error(self.path / name, op, err) from err
            raise

    def rename(self, name: str, new: str) -> None:
        try:
            os.rename(name, new, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except OSError as err:
            raise _error(self.path / name, "rename", err) from err

    def unlink(self, name: str) -> None:
        """Remove ``name``; one that is already gone is fine."""
        try:
            os.unlink(name, dir_fd=self._fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise _error(self.path / name, "unlink", err) from err

    def lock(self, name: str, mode: int) -> int:
        """Create or open the regular file ``name`` (mode ``mode``) and take an exclusive
        ``flock`` on it without waiting; the descriptor returned holds it until closed. A lock
        another process holds fails with op "lock" and errno EAGAIN (flock(2))."""
        path = self.path / name
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | _NOFOLLOW, mode, dir_fd=self._fd)
        except OSError as err:
            raise _error(path, "open", err) from err
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SafeDirError(path, "open", "not a regular file")
            if stat.S_IMODE(info.st_mode) != mode:
                os.fchmod(fd, mode)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException as err:
            os.close(fd)
            if isinstance(err, OSError):
                raise _error(path, "lock", err) from err
            raise
        return fd

    def _discard(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._fd)
        except OSError:
            pass


def read_regular(path: Path, limit: Optional[int] = None, *, dir_fd: Optional[int] = None,
                 name: Optional[str] = None, follow: bool = False) -> bytes:
    """The bytes of the regular file at ``path`` (``name`` in ``dir_fd`` if given), at most
    ``limit``. Opened with ``O_NONBLOCK``, so a fifo in its place is opened without waiting
    for a writer (open(2), fifo(7)), and, unless ``follow``, with ``O_NOFOLLOW`` (a link as the
    last component fails with ``ELOOP``); then ``fstat`` of the descriptor must say a regular
    file, so a fifo, a device (``/dev/zero`` behind a followed link) or a directory is refused
    before a byte is read. The one careful read of the package: safedir's own and
    hostfile.py's."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(name if name is not None else path, flags, dir_fd=dir_fd)
    except OSError as err:
        raise _error(path, "open", err) from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SafeDirError(path, "open", "not a regular file")
        chunks = []
        left = limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left = None if left is None else left - len(chunk)
    except OSError as err:
        raise _error(path, "read", err) from err
    finally:
        os.close(fd)
    return b"".join(chunks)


def _error(path: Path, op: str, err: OSError) -> SafeDirError:
    if err.errno == errno.ELOOP:
        reason = LINK_REFUSED
    elif err.errno == errno.ENOTDIR:
        reason = "not a directory"
    else:
        reason = err.strerror or str(err)
    return SafeDirError(path, op, reason, err.errno)

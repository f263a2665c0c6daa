"""The one reader of small files on the host: runtimes' configuration and state files, the
kubelet's, and the ``/proc`` files of the runtime daemons.

Some of these files sit in directories a container can write to, or next to them: a
container's root file system, volumes and log directories are directories on the host, and a
container that could once name a directory for the tool would fill it with whatever blocks or
floods a reader. So every read here is bounded the same way, whatever the file:

- ``O_NONBLOCK``: opening a fifo for reading with it returns at once instead of waiting for a
  writer (open(2), "O_NONBLOCK or O_NDELAY"; fifo(7)), and the file is then refused;
- ``O_NOFOLLOW`` (unless the caller names a file the host's administrator keeps, such as
  ``/etc/docker/daemon.json``): a symbolic link as the last component fails with ``ELOOP``
  (open(2), "O_NOFOLLOW") instead of leading to ``/dev/zero`` or to another tenant's file;
- ``fstat`` of the open descriptor must say a regular file: a fifo, a socket, a device (a
  followed link to ``/dev/zero``) or a directory is refused before a byte is read;
- at most ``cap`` bytes (1 MiB; a Docker ``config.v2.json`` is a few KiB): ``cap + 1`` bytes
  are read, and a file that has them is refused rather than cut (a cut JSON document names
  nothing, and a truncated one could name the wrong thing).

A missing file is no news (the caller then tries the next source). A refused file is said
once per file and run, in one warning line naming the file and why; any other error (no
permission, I/O) is a debug line. The careful open itself is safedir.py's ``read_regular``,
shared with the spool.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from container_netstat.safedir import LINK_REFUSED, SafeDirError, read_regular

log = logging.getLogger(__name__)

CAP = 1 << 20  # bytes


class HostFiles:
    """The reads of one run: each refused file is warned about once."""

    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        self._said: set[str] = set()

    def read(self, path: str, follow: bool = False, cap: int | None = None) -> bytes | None:
        """The bytes of the regular file ``path``, or None: missing, refused (a link unless
        ``follow``, a fifo, a device, over ``cap`` bytes, else the reader's) or unreadable."""
        cap = self.cap if cap is None else cap
        try:
            data = read_regular(Path(path), cap + 1, follow=follow)
        except SafeDirError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if err.reason == LINK_REFUSED or err.errno is None:
                self._refuse(path, err.reason)
            else:
                log.debug("%s: cannot read: %s", path, err.reason)
            return None
        if len(data) > cap:
            self._refuse(path, f"larger than {cap} bytes")
            return None
        return data

    def text(self, path: str, follow: bool = False, cap: int | None = None) -> str | None:
        """``read`` as UTF-8 text (undecodable bytes replaced)."""
        data = self.read(path, follow, cap)
        return None if data is None else data.decode("utf-8", errors="replace")

    def _refuse(self, path: str, why: str) -> None:
        if path not in self._said:
            self._said.add(path)
            log.warning("%s: %s; not read", path, why)

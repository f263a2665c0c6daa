"""The spool: batches a run could not deliver, kept as files until a later run sends them.

Layout of the spool directory (mode 0700)::

    <timestamp>-<seq>-<token>.json.gz   one batch: a gzipped JSON array of open-falcon items,
                                        mode 0600, written to ``.tmp-*`` and renamed (atomic)
    <name>.corrupt, <name>.rejected     moved aside: unreadable, or refused by the receiver;
                                        kept for inspection until they are older than max_age
    lock                                held (flock) by the run that owns the spool

``timestamp`` is the collection time of the batch's items, so sorting the names sorts the
batches oldest first: open-falcon's graph drops a point that is not newer than the last one it
holds for the series (FACTS §5), so a later run must replay them in that order, before its own.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import logging
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from container_netstat.errors import ContainerNetstatError

log = logging.getLogger(__name__)

ROOT_DIR = Path("/var/spool/container-netstat")
LOCK_NAME = "lock"
TMP_PREFIX = ".tmp-"
SUFFIX = ".json.gz"
ASIDE = (".corrupt", ".rejected")
_BATCH = re.compile(r"^(\d{1,12})-(\d{1,6})-([0-9a-f]{1,16})\.json\.gz$")

Item = Dict[str, Any]


class SpoolError(ContainerNetstatError):
    """The spool directory cannot be used (permissions, full disk)."""


class SpoolBusy(SpoolError):
    """Another run holds the spool's lock."""


class CorruptBatch(SpoolError):
    """A spool file that does not hold a gzipped JSON array of objects."""


@dataclass(frozen=True)
class Bounds:
    """How much the spool keeps: batches older than max_age seconds or beyond max_bytes go."""

    max_age: int = 24 * 3600
    max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One file in the spool; ``timestamp`` is its items' collection time (mtime if unnamed)."""

    path: Path
    timestamp: int
    seq: int
    size: int
    pending: bool

    @property
    def order(self) -> Tuple[int, int, str]:
        return (self.timestamp, self.seq, self.path.name)


@dataclass(frozen=True)
class Dropped:
    """What enforcing the bounds removed."""

    by_age: int = 0
    by_size: int = 0
    bytes: int = 0
    oldest: Optional[int] = None
    newest: Optional[int] = None

    @property
    def batches(self) -> int:
        return self.by_age + self.by_size


def default_dir(uid: int, environ: Mapping[str, str]) -> Path:
    """/var/spool/container-netstat for root; the XDG state directory for anyone else."""
    if uid == 0:
        return ROOT_DIR
    state = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or "~").expanduser() / ".local" / "state")
    return Path(state) / "container-netstat"


def encode(items: Sequence[Item]) -> bytes:
    """A batch as stored: gzipped JSON with integer timestamps kept as they are; NaN refused."""
    text = json.dumps(list(items), allow_nan=False, separators=(",", ":"))
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode(data: bytes, source: str) -> List[Item]:
    """The items of a stored batch; CorruptBatch if it is not a gzipped JSON array of objects."""
    try:
        items = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise CorruptBatch(f"{source}: {err}") from err
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise CorruptBatch(f"{source}: not a JSON array of objects")
    return items


class Spool:
    """A directory of undelivered batches, bounded by age and size."""

    def __init__(self, directory: Path, bounds: Bounds = Bounds(), clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.bounds = bounds
        self._clock = clock
        self._lock_fd: Optional[int] = None

    # -- set-up -----------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory (0700) if needed, and tighten its mode if it is looser."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = self.directory.stat().st_mode & 0o777
            if mode != 0o700:
                log.warning("spool %s had mode %03o; setting 0700", self.directory, mode)
                os.chmod(self.directory, 0o700)
        except OSError as err:
            raise SpoolError(f"cannot use spool directory {self.directory}: {err.strerror or err}") from err

    def lock(self) -> None:
        """Take the spool's lock for the life of this process; SpoolBusy if another run holds it."""
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise SpoolError(f"cannot open lock {path}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolBusy(f"another run holds {path}") from err
            raise SpoolError(f"cannot lock {path}: {err.strerror or err}") from err
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- reading ----------------------------------------------------------------------

    def entries(self) -> List[Entry]:
        """Every batch and set-aside file, oldest first; stray files are set aside as corrupt."""
        found: List[Entry] = []
        for path in self._listdir():
            name = path.name
            if name == LOCK_NAME:
                continue
            if name.startswith(TMP_PREFIX):
                # Left by a run killed while writing; we hold the lock, so nobody is writing now.
                self._unlink(path)
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            match = _BATCH.match(name)
            if match:
                found.append(Entry(path, int(match.group(1)), int(match.group(2)), stat.st_size, True))
            elif name.endswith(ASIDE):
                aside = _BATCH.match(name.rsplit(".", 1)[0])
                stamp = int(aside.group(1)) if aside else int(stat.st_mtime)
                found.append(Entry(path, stamp, 0, stat.st_size, False))
            else:
                log.warning("spool: %s is not a batch file; moving it aside", path)
                moved = self._rename_aside(path, ".corrupt")
                if moved is not None:
                    found.append(Entry(moved, int(stat.st_mtime), 0, stat.st_size, False))
        return sorted(found, key=lambda e: e.order)

    def pending(self) -> List[Entry]:
        """Batches waiting for delivery, oldest first."""
        return [e for e in self.entries() if e.pending]

    def load(self, entry: Entry) -> List[Item]:
        """The items of one batch; CorruptBatch if the file is not one."""
        try:
            data = entry.path.read_bytes()
        except OSError as err:
            raise CorruptBatch(f"{entry.path}: {err.strerror or err}") from err
        return decode(data, str(entry.path))

    # -- writing ----------------------------------------------------------------------

    def write(self, items: Sequence[Item], timestamp: int, seq: int) -> Entry:
        """Store one batch atomically: temp file (0600), fsync, rename, fsync the directory."""
        data = encode(items)
        name = f"{timestamp:010d}-{seq:04d}-{secrets.token_hex(4)}{SUFFIX}"
        final = self.directory / name
        tmp = self.directory / f"{TMP_PREFIX}{name}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            self._fsync_dir()
        except OSError as err:
            self._unlink(tmp)
            raise SpoolError(f"cannot write {final}: {err.strerror or err}") from err
        return Entry(final, timestamp, seq, len(data), True)

    def remove(self, entry: Entry) -> None:
        """Forget a delivered batch."""
        self._unlink(entry.path)

    def set_aside(self, entry: Entry, reason: str) -> Optional[Path]:
        """Rename a batch to ``<name>.corrupt`` or ``<name>.rejected`` so it is never retried."""
        return self._rename_aside(entry.path, f".{reason}")

    # -- bounds -----------------------------------------------------------------------

    def enforce(self) -> Dropped:
        """Remove files older than max_age, then the oldest until the spool fits max_bytes."""
        entries = self.entries()
        now = int(self._clock())
        horizon = now - self.bounds.max_age
        old = [e for e in entries if e.timestamp < horizon]
        kept = [e for e in entries if e.timestamp >= horizon]
        total = sum(e.size for e in kept)
        big: List[Entry] = []
        while kept and total > self.bounds.max_bytes:
            victim = kept.pop(0)
            big.append(victim)
            total -= victim.size
        for entry in old + big:
            self._unlink(entry.path)
        batches = [e for e in old + big if e.pending]
        return Dropped(
            by_age=sum(1 for e in old if e.pending),
            by_size=sum(1 for e in big if e.pending),
            bytes=sum(e.size for e in old + big),
            oldest=min((e.timestamp for e in batches), default=None),
            newest=max((e.timestamp for e in batches), default=None),
        )

    def size(self) -> Tuple[int, int]:
        """(pending batches, bytes of every file) now in the spool."""
        entries = self.entries()
        return sum(1 for e in entries if e.pending), sum(e.size for e in entries)

    # -- helpers ----------------------------------------------------------------------

    def _listdir(self) -> Iterator[Path]:
        try:
            names = os.listdir(self.directory)
        except OSError as err:
            raise SpoolError(f"cannot read spool directory {self.directory}: {err.strerror or err}") from err
        return (self.directory / name for name in names)

    def _rename_aside(self, path: Path, suffix: str) -> Optional[Path]:
        target = path.with_name(path.name + suffix)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        except OSError as err:
            # Unlinking is the only other way to make sure it is not retried forever.
            log.warning("spool: cannot rename %s (%s); deleting it", path, err.strerror or err)
            self._unlink(path)
            return None
        return target

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise SpoolError(f"cannot remove {path}: {err.strerror or err}") from err

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

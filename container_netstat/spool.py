"""The spool: batches a run could not deliver, kept as files until a later run sends them.

Layout of the spool directory (mode 0700)::

    <timestamp>-<seq>-<token>.json.gz   one batch: a gzipped JSON array of open-falcon items,
                                        mode 0600, written to ``.tmp-*`` and renamed (atomic)
    <name>.corrupt, <name>.rejected     moved aside: unreadable, or refused by the receiver;
                                        kept for inspection until they are older than max_age
    lock                                held (flock) by the run that owns the spool
    agent-hostname                      the endpoint the falcon-agent gave last (agent.py), for
                                        a run that cannot ask it: its items are spooled there

``timestamp`` is the collection time of the batch's items, so sorting the names sorts the
batches oldest first: open-falcon's graph drops a point that is not newer than the last one it
holds for the series (docs/facts.rst, "The open-falcon push"), so a later run must replay them in that order, before its own.

Files are handled through a descriptor of the directory, opened without following a symbolic
link, and every file in it is opened with ``O_NOFOLLOW``: a link planted in place of the
directory, the lock or a batch is refused, never followed. Entries that are not regular files
(links, directories, fifos) are never read, renamed or removed: they are named in a warning.

The clock is trusted: a batch stamped after now (beyond ``max_ahead`` seconds) was collected
before the clock was set back. Replaying it would make graph ignore this host's newer points of
the same series until the clock catches up, so it is dropped (and counted) like an old one.
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
import stat
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from container_netstat.errors import ContainerNetstatError

log = logging.getLogger(__name__)

ROOT_DIR = Path("/var/spool/container-netstat")
LOCK_NAME = "lock"
NAME_FILE = "agent-hostname"
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
    """How much the spool keeps: batches older than max_age seconds, stamped more than
    max_ahead seconds in the future (the clock went back), or beyond max_bytes go."""

    max_age: int = 24 * 3600
    max_bytes: int = 64 * 1024 * 1024
    max_ahead: int = 0


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
    ahead: int = 0

    @property
    def batches(self) -> int:
        return self.by_age + self.by_size + self.ahead


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
        self._dir_fd: Optional[int] = None
        self._ignored: Set[str] = set()  # named in a warning once per run, not per listing

    # -- set-up -----------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory (0700) if needed, refuse a symbolic link, tighten a looser mode."""
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.directory, 0o700)
            except FileExistsError:
                pass  # a link in its place is refused when it is opened
            fd = self._dir()
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode != 0o700:
                os.fchmod(fd, 0o700)
                if mode & 0o077:
                    log.warning("spool %s had mode %03o; set it to 0700", self.directory, mode)
        except OSError as err:
            raise SpoolError(f"cannot use spool directory {self.directory}: {err.strerror or err}") from err

    def lock(self) -> None:
        """Take the spool's lock for the life of this process; SpoolBusy if another run holds it."""
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600, dir_fd=self._dir())
        except OSError as err:
            raise SpoolError(f"cannot open lock {path}: {_why(err)}") from err
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SpoolError(f"cannot open lock {path}: not a regular file")
            if stat.S_IMODE(info.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolBusy(f"another run holds {path}") from err
            raise SpoolError(f"cannot lock {path}: {err.strerror or err}") from err
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def close(self) -> None:
        """Release the lock and the directory."""
        self.unlock()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    # -- reading ----------------------------------------------------------------------

    def entries(self) -> List[Entry]:
        """Every batch and set-aside file, oldest first; stray files are set aside as corrupt."""
        found: List[Entry] = []
        for name in self._listdir():
            path = self.directory / name
            if name in (LOCK_NAME, NAME_FILE):
                continue
            try:
                info = os.stat(name, dir_fd=self._dir(), follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise SpoolError(f"cannot read {path}: {err.strerror or err}") from err
            if not stat.S_ISREG(info.st_mode):
                if name not in self._ignored and not (name == "lost+found" and stat.S_ISDIR(info.st_mode)):
                    self._ignored.add(name)
                    log.warning("spool: ignoring %s: %s, not a batch; it is never read, moved or removed",
                                path, _kind(info.st_mode))
                continue
            if name.startswith(TMP_PREFIX):
                # Left by a run killed while writing; we hold the lock, so nobody is writing now.
                self._unlink(name)
                continue
            match = _BATCH.match(name)
            if match:
                found.append(Entry(path, int(match.group(1)), int(match.group(2)), info.st_size, True))
            elif name.endswith(ASIDE):
                aside = _BATCH.match(name.rsplit(".", 1)[0])
                stamp = int(aside.group(1)) if aside else int(info.st_mtime)
                found.append(Entry(path, stamp, 0, info.st_size, False))
            else:
                log.warning("spool: %s is not a batch file; moving it aside", path)
                moved = self._rename_aside(path, ".corrupt")
                if moved is not None:
                    found.append(Entry(moved, int(info.st_mtime), 0, info.st_size, False))
        return sorted(found, key=lambda e: e.order)

    def pending(self) -> List[Entry]:
        """Batches waiting for delivery, oldest first."""
        return [e for e in self.entries() if e.pending]

    def load(self, entry: Entry) -> List[Item]:
        """The items of one batch; CorruptBatch if the file is not one (nor a regular file)."""
        try:
            fd = os.open(entry.path.name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=self._dir())
        except OSError as err:
            raise CorruptBatch(f"{entry.path}: {_why(err)}") from err
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptBatch(f"{entry.path}: not a regular file")
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as err:
            raise CorruptBatch(f"{entry.path}: {err.strerror or err}") from err
        finally:
            os.close(fd)
        return decode(b"".join(chunks), str(entry.path))

    # -- writing ----------------------------------------------------------------------

    def write(self, items: Sequence[Item], timestamp: int, seq: int) -> Entry:
        """Store one batch atomically: temp file (0600), fsync, rename, fsync the directory.

        On any failure (a full disk, a read-only one) nothing of the batch is left behind.
        """
        data = encode(items)
        name = f"{timestamp:010d}-{seq:04d}-{secrets.token_hex(4)}{SUFFIX}"
        final = self.directory / name
        tmp = f"{TMP_PREFIX}{name}"
        renamed = False
        try:
            directory = self._dir()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=directory)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    # A full disk can take part of a write and refuse only the next one.
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
            renamed = True
            os.fsync(directory)
        except (OSError, SpoolError) as err:
            self._discard(tmp)
            if renamed:
                self._discard(name)  # not durable: report it lost rather than keep it by chance
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise SpoolError(f"cannot write {final}: {why}") from err
        return Entry(final, timestamp, seq, len(data), True)

    def remove(self, entry: Entry) -> None:
        """Forget a delivered batch."""
        self._unlink(entry.path.name)

    def set_aside(self, entry: Entry, reason: str) -> Optional[Path]:
        """Rename a batch to ``<name>.corrupt`` or ``<name>.rejected`` so it is never retried."""
        return self._rename_aside(entry.path, f".{reason}")

    # -- the agent's name ---------------------------------------------------------------

    def remembered_name(self) -> Optional[str]:
        """The name ``remember_name`` kept, or None (none kept, or not readable)."""
        try:
            fd = os.open(NAME_FILE, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=self._dir())
        except (OSError, SpoolError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = os.read(fd, 1024).decode("utf-8", "replace").strip()
        except OSError:
            return None
        finally:
            os.close(fd)
        return text or None

    def remember_name(self, name: str) -> None:
        """Keep the falcon-agent's name for later runs; rewritten (temp file, rename) only when
        it changed. Not fsync-ed: a name lost in a crash is asked again by the next run."""
        if self.remembered_name() == name:
            return
        tmp = f"{TMP_PREFIX}{NAME_FILE}"
        try:
            directory = self._dir()
            self._discard(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=directory)
            try:
                os.write(fd, f"{name}\n".encode("utf-8"))
            finally:
                os.close(fd)
            os.rename(tmp, NAME_FILE, src_dir_fd=directory, dst_dir_fd=directory)
        except OSError as err:
            self._discard(tmp)
            raise SpoolError(f"cannot write {self.directory / NAME_FILE}: {_why(err)}") from err

    # -- bounds -----------------------------------------------------------------------

    def enforce(self) -> Dropped:
        """Remove files older than max_age or stamped beyond max_ahead, then the oldest until
        the spool fits max_bytes."""
        entries = self.entries()
        now = int(self._clock())
        horizon = now - self.bounds.max_age
        limit = now + self.bounds.max_ahead
        old = [e for e in entries if e.timestamp < horizon]
        ahead = [e for e in entries if e.timestamp > limit]
        kept = [e for e in entries if horizon <= e.timestamp <= limit]
        total = sum(e.size for e in kept)
        big: List[Entry] = []
        while kept and total > self.bounds.max_bytes:
            victim = kept.pop(0)
            big.append(victim)
            total -= victim.size
        gone = old + ahead + big
        for entry in gone:
            self._unlink(entry.path.name)
        batches = [e for e in gone if e.pending]
        return Dropped(
            by_age=sum(1 for e in old if e.pending),
            by_size=sum(1 for e in big if e.pending),
            bytes=sum(e.size for e in gone),
            oldest=min((e.timestamp for e in batches), default=None),
            newest=max((e.timestamp for e in batches), default=None),
            ahead=sum(1 for e in ahead if e.pending),
        )

    def size(self) -> Tuple[int, int]:
        """(pending batches, bytes of every file) now in the spool."""
        entries = self.entries()
        return sum(1 for e in entries if e.pending), sum(e.size for e in entries)

    # -- helpers ----------------------------------------------------------------------

    def _dir(self) -> int:
        """A descriptor of the directory itself, opened once, never through a symbolic link."""
        if self._dir_fd is None:
            try:
                self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
            except OSError as err:
                # O_DIRECTORY is checked before O_NOFOLLOW: a link gives ENOTDIR, not ELOOP.
                why = "a symbolic link: refusing to follow it" if self.directory.is_symlink() else _why(err)
                raise SpoolError(f"cannot use spool directory {self.directory}: {why}") from err
        return self._dir_fd

    def _listdir(self) -> List[str]:
        try:
            return os.listdir(self._dir())
        except OSError as err:
            raise SpoolError(f"cannot read spool directory {self.directory}: {err.strerror or err}") from err

    def _rename_aside(self, path: Path, suffix: str) -> Optional[Path]:
        target = path.with_name(path.name + suffix)
        directory = self._dir()
        try:
            os.rename(path.name, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as err:
            # Unlinking is the only other way to make sure it is not retried forever.
            log.warning("spool: cannot rename %s (%s); deleting it", path, err.strerror or err)
            self._unlink(path.name)
            return None
        return target

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir())
        except FileNotFoundError:
            pass
        except OSError as err:
            raise SpoolError(f"cannot remove {self.directory / name}: {err.strerror or err}") from err

    def _discard(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir())
        except (OSError, SpoolError):
            pass


# O_NOFOLLOW: a symbolic link as the last component fails with ELOOP instead of being followed.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _why(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symbolic link: refusing to follow it"
    if err.errno == errno.ENOTDIR:
        return "not a directory"
    return err.strerror or str(err)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"

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
holds for the series (docs/facts.rst, "The open-falcon push"), so a later run must replay them
in that order, before its own.

A batch stays until it is delivered (removed), refused as wrong by the receiver (set aside as
``.rejected``), found unreadable (``.corrupt``) or out of the bounds (removed). An outage keeps
it, and so does an answer that says the URL or its credentials are wrong (a redirect, 401, 403,
404, 405: push.WrongAddress): the batch was never looked at, and goes once the URL is fixed.

Only this user may have put anything in the directory: one owned by another uid is refused
before anything in it is read, since every batch found there is pushed under this host's
endpoint, and so is one that group or others may write (a shared ``/tmp``-like directory) unless
it is empty: then it is made 0700 first, as a Kubernetes emptyDir (created 0777 by the kubelet,
``pkg/volume/emptydir/empty_dir.go``) or a ``docker run --tmpfs`` mount (1777) must be.

This module is the policy; safedir.py does the file handling. The directory is opened without
following a symbolic link and every file in it with ``O_NOFOLLOW``: a link planted in place of
the directory, the lock or a batch is refused, never followed. Entries that are not regular
files (links, directories, fifos) are never read, renamed or removed: they are named in a
warning.

The clock is trusted: a batch stamped after now (beyond ``max_ahead`` seconds) was collected
before the clock was set back. Replaying it would make graph ignore this host's newer points of
the same series until the clock catches up, so it is dropped (and counted) like an old one.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import re
import stat
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from container_netstat.falcon import Item
from container_netstat import falcon
from container_netstat.errors import ContainerNetstatError
from container_netstat.safedir import Listed, SafeDir, SafeDirError

log = logging.getLogger(__name__)

ROOT_DIR = Path("/var/spool/container-netstat")
LOCK_NAME = "lock"
NAME_FILE = "agent-hostname"
TMP_PREFIX = ".tmp-"
SUFFIX = ".json.gz"
ASIDE = (".corrupt", ".rejected")
_BATCH = re.compile(r"^(\d{1,12})-(\d{1,6})-([0-9a-f]{1,16})\.json\.gz$")



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
    """What enforcing the bounds removed, and the entries it kept (oldest first)."""

    by_age: int = 0
    by_size: int = 0
    bytes: int = 0
    oldest: Optional[int] = None
    newest: Optional[int] = None
    ahead: int = 0
    kept: Tuple[Entry, ...] = ()

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
    """A batch as stored: gzipped, the JSON text a push sends (falcon.dumps: NaN refused)."""
    return gzip.compress(falcon.dumps(list(items)).encode("utf-8"), compresslevel=6, mtime=0)


def decode(data: bytes, path: str) -> List[Item]:
    """The items of a stored batch; CorruptBatch if it is not a gzipped JSON array of objects."""
    try:
        items = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise CorruptBatch(f"{path}: {err}") from err
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise CorruptBatch(f"{path}: not a JSON array of objects")
    return items


class Spool:
    """A directory of undelivered batches, bounded by age and size.

    ``entries`` and ``pending`` only read. A delivery changes the spool in explicit steps, each
    taking the entries the step before it returned, so that one listing serves the whole run:
    ``tidy`` (temporary and stray files), ``enforce`` (the bounds), then ``load`` and ``remove``
    or ``set_aside`` per batch, and ``write`` for what could not be delivered (push.py).
    """

    def __init__(self, directory: Path, bounds: Bounds = Bounds(), clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.bounds = bounds
        self._clock = clock
        self._lock_fd: Optional[int] = None
        self._safe: Optional[SafeDir] = None

    # -- set-up -----------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory (0700) if needed; refuse a symbolic link, a directory of another
        user's or one that group or others may write and that is not empty (a batch planted
        there would be pushed under this host's endpoint); tighten any other mode to 0700."""
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.directory, 0o700)
            except FileExistsError:
                pass  # a link in its place is refused when it is opened
        except OSError as err:
            raise SpoolError(f"cannot use spool directory {self.directory}: {err.strerror or err}") from err
        directory = self._dir()
        try:
            owner, me = directory.owner(), os.geteuid()
            if owner != me:
                raise SpoolError(f"cannot use spool directory {self.directory}: owned by uid {owner}, not by "
                                 f"this user (uid {me}), who alone may write batches there")
            mode = directory.mode()
            if mode & 0o022:
                self._take_shared(directory, mode)
            elif mode != 0o700:
                directory.chmod(0o700)
                if mode & 0o077:
                    log.warning("spool %s had mode %03o; set it to 0700", self.directory, mode)
        except SafeDirError as err:
            raise SpoolError(f"cannot use spool directory {self.directory}: {err.reason}") from err

    def _take_shared(self, directory: SafeDir, mode: int) -> None:
        """A directory group or others may write: refused if anything is in it (anyone may have
        put it there); an empty one (a new emptyDir is 0777, a ``docker run --tmpfs`` 1777) is
        made 0700, after which nobody else can add to it, and must still be empty then."""
        refused = SpoolError(f"cannot use spool directory {self.directory}: mode {mode:04o} lets group or others "
                             f"write batches there, and it is not empty; make it 0700 or use another")
        if _foreign_entries(directory):
            raise refused
        directory.chmod(0o700)
        if _foreign_entries(directory):  # put there before the chmod: the next run must refuse it too
            directory.chmod(mode)
            raise refused
        log.warning("spool %s had mode %03o and was empty; set it to 0700", self.directory, mode)

    def lock(self) -> None:
        """Take the spool's lock for the life of this process; SpoolBusy if another run holds it."""
        path = self.directory / LOCK_NAME
        try:
            self._lock_fd = self._dir().lock(LOCK_NAME, 0o600)
        except SafeDirError as err:
            if err.op == "open":
                raise SpoolError(f"cannot open lock {path}: {err.reason}") from err
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolBusy(f"another run holds {path}") from err
            raise SpoolError(f"cannot lock {path}: {err.reason}") from err

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def close(self) -> None:
        """Release the lock and the directory."""
        self.unlock()
        if self._safe is not None:
            self._safe.close()
            self._safe = None

    # -- reading ----------------------------------------------------------------------

    def entries(self) -> List[Entry]:
        """Every batch and set-aside file, oldest first. Only reads: see ``tidy``."""
        return _oldest_first(e for e in map(self._entry, self._list()) if e is not None)

    def pending(self) -> List[Entry]:
        """Batches waiting for delivery, oldest first. Only reads."""
        return [e for e in self.entries() if e.pending]

    def tidy(self) -> List[Entry]:
        """The entries, as ``entries`` gives them, after one pass that needs the lock: temporary
        files of a run killed while writing are removed, stray regular files are set aside as
        ``.corrupt``, anything else that is not ours is named in a warning and left alone."""
        found: List[Entry] = []
        for listed in self._list():
            entry = self._entry(listed)
            if entry is None:
                entry = self._tidy(listed)
            if entry is not None:
                found.append(entry)
        return _oldest_first(found)

    def load(self, entry: Entry) -> List[Item]:
        """The items of one batch; CorruptBatch if the file is not one (nor a regular file)."""
        directory = self._dir()
        try:
            data = directory.read(entry.path.name)
        except SafeDirError as err:
            raise CorruptBatch(f"{entry.path}: {err.reason}") from err
        return decode(data, str(entry.path))

    # -- writing ----------------------------------------------------------------------

    def write(self, items: Sequence[Item], timestamp: int, seq: int) -> Entry:
        """Store one batch atomically: temp file (0600), fsync, rename, fsync the directory.

        On any failure (a full disk, a read-only one) nothing of the batch is left behind.
        """
        data = encode(items)
        name = f"{timestamp:010d}-{seq:04d}-{os.urandom(4).hex()}{SUFFIX}"
        final = self.directory / name
        try:
            self._dir().write(name, data, 0o600, f"{TMP_PREFIX}{name}")
        except (SafeDirError, SpoolError) as err:
            why = err.reason if isinstance(err, SafeDirError) else str(err)
            raise SpoolError(f"cannot write {final}: {why}") from err
        return Entry(final, timestamp, seq, len(data), True)

    def remove(self, entry: Entry) -> None:
        """Forget a delivered batch."""
        self._unlink(entry.path.name)

    def set_aside(self, entry: Entry, reason: str) -> Optional[Entry]:
        """Rename a batch to ``<name>.corrupt`` or ``<name>.rejected`` so it is never retried;
        the file it now is, or None if it is gone (deleted when it could not be renamed)."""
        return self._rename_aside(entry, f".{reason}")

    # -- the agent's name ---------------------------------------------------------------

    def remembered_name(self) -> Optional[str]:
        """The name ``remember_name`` kept, or None (none kept, or not readable)."""
        try:
            text = self._dir().read(NAME_FILE, 1024).decode("utf-8", "replace").strip()
        except (SafeDirError, SpoolError):
            return None
        return text or None

    def remember_name(self, name: str) -> None:
        """Keep the falcon-agent's name for later runs; rewritten (temp file, rename) only when
        it changed. Not fsync-ed: a name lost in a crash is asked again by the next run."""
        if self.remembered_name() == name:
            return
        directory = self._dir()
        temp = f"{TMP_PREFIX}{NAME_FILE}-{os.urandom(4).hex()}"
        try:
            directory.write(NAME_FILE, f"{name}\n".encode("utf-8"), 0o600, temp, durable=False)
        except SafeDirError as err:
            raise SpoolError(f"cannot write {self.directory / NAME_FILE}: {err.reason}") from err

    # -- bounds -----------------------------------------------------------------------

    def enforce(self, entries: Optional[Sequence[Entry]] = None) -> Dropped:
        """Remove files older than max_age or stamped beyond max_ahead, then the oldest until
        the spool fits max_bytes. ``entries``: what ``tidy`` (or the steps after it) left, if
        not the directory's entries now."""
        entries = _oldest_first(self.entries() if entries is None else entries)
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
            kept=tuple(kept),
        )

    def size(self, entries: Optional[Sequence[Entry]] = None) -> Tuple[int, int]:
        """(pending batches, bytes of every file) now in the spool, or in ``entries``."""
        entries = self.entries() if entries is None else entries
        return sum(1 for e in entries if e.pending), sum(e.size for e in entries)

    # -- helpers ----------------------------------------------------------------------

    def _dir(self) -> SafeDir:
        """The directory itself, opened once, never through a symbolic link."""
        if self._safe is None:
            try:
                self._safe = SafeDir.open(self.directory)
            except SafeDirError as err:
                raise SpoolError(f"cannot use spool directory {self.directory}: {err.reason}") from err
        return self._safe

    def _list(self) -> List[Listed]:
        try:
            return self._dir().list()
        except SafeDirError as err:
            what = f"spool directory {self.directory}" if err.op == "list" else str(err.path)
            raise SpoolError(f"cannot read {what}: {err.reason}") from err

    def _entry(self, listed: Listed) -> Optional[Entry]:
        """The batch or set-aside file ``listed`` is; None for the lock, the agent's name, a
        temporary or stray file, and anything that is not a regular file."""
        name = listed.name
        if not listed.regular or name in (LOCK_NAME, NAME_FILE) or name.startswith(TMP_PREFIX):
            return None
        path = self.directory / name
        match = _BATCH.match(name)
        if match:
            return Entry(path, int(match.group(1)), int(match.group(2)), listed.size, True)
        if name.endswith(ASIDE):
            aside = _BATCH.match(name.rsplit(".", 1)[0])
            stamp = int(aside.group(1)) if aside else int(listed.mtime)
            return Entry(path, stamp, 0, listed.size, False)
        return None

    def _tidy(self, listed: Listed) -> Optional[Entry]:
        """What ``tidy`` does with an entry that is not a batch: the set-aside file it becomes,
        if any."""
        name = listed.name
        path = self.directory / name
        if name in (LOCK_NAME, NAME_FILE):
            return None
        if not listed.regular:
            if not (name == "lost+found" and stat.S_ISDIR(listed.mode)):
                log.warning("spool: ignoring %s: %s, not a batch; it is never read, moved or removed",
                            path, listed.kind)
            return None
        if name.startswith(TMP_PREFIX):
            # Left by a run killed while writing; we hold the lock, so nobody is writing now.
            self._unlink(name)
            return None
        log.warning("spool: %s is not a batch file; moving it aside", path)
        return self._rename_aside(Entry(path, int(listed.mtime), 0, listed.size, False), ".corrupt")

    def _rename_aside(self, entry: Entry, suffix: str) -> Optional[Entry]:
        target = entry.path.with_name(entry.path.name + suffix)
        directory = self._dir()
        try:
            directory.rename(entry.path.name, target.name)
        except SafeDirError as err:
            if err.errno == errno.ENOENT:
                return None
            # Unlinking is the only other way to make sure it is not retried forever.
            log.warning("spool: cannot rename %s (%s); deleting it", entry.path, err.reason)
            self._unlink(entry.path.name)
            return None
        return replace(entry, path=target, seq=0, pending=False)

    def _unlink(self, name: str) -> None:
        directory = self._dir()
        try:
            directory.unlink(name)
        except SafeDirError as err:
            raise SpoolError(f"cannot remove {self.directory / name}: {err.reason}") from err


def _foreign_entries(directory: SafeDir) -> bool:
    """True if the directory holds anything but the lost+found of a file system's root."""
    return any(not (e.name == "lost+found" and stat.S_ISDIR(e.mode)) for e in directory.list())


def _oldest_first(entries: Iterable[Entry]) -> List[Entry]:
    return sorted(entries, key=lambda e: e.order)

"""Spool faults in-process: symbolic links and foreign entries, modes under any umask, clock jumps.

The faults that need root (read-only and full filesystems) and the command itself are in
tests/integration/test_faults_spool.py.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from container_netstat import push
from container_netstat.push import Deadline, Reply, Unreachable
from container_netstat.spool import Bounds, CorruptBatch, Spool, SpoolError

NOW = 1_700_000_000


def items(timestamp: int, n: int = 3, metric: str = "m") -> List[Dict[str, Any]]:
    return [
        {"endpoint": "h", "metric": f"{metric}{i}", "timestamp": timestamp, "step": 60, "value": i,
         "counterType": "GAUGE", "tags": "container=a"}
        for i in range(n)
    ]


def batch_bytes(timestamp: int, metric: str = "m") -> bytes:
    return gzip.compress(json.dumps(items(timestamp, metric=metric)).encode())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class Recorder:
    """A sender that records each body's collection time; 'down' refuses everything."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.sent: List[int] = []

    def send(self, body: bytes, count: int, budget: float) -> Reply:
        if self.down:
            raise Unreachable("Connection refused")
        self.sent.append(json.loads(body)[0]["timestamp"])
        return Reply("agent", count, 0, "success")


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("container_netstat")
    propagate = logger.propagate
    logger.propagate = True  # the CLI, if it ran in this process, may have turned it off
    caplog.set_level(logging.INFO, logger="container_netstat")
    yield caplog
    logger.propagate = propagate


# -- symbolic links ---------------------------------------------------------------------------


def test_a_link_in_place_of_the_directory_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    target.chmod(0o755)
    (target / "keep").write_text("precious")
    link = tmp_path / "spool"
    link.symlink_to(target)
    with pytest.raises(SpoolError, match="spool: a symbolic link: refusing to follow it"):
        Spool(link).open()
    assert mode(target) == 0o755, "the link's target was chmod-ed"
    assert sorted(p.name for p in target.iterdir()) == ["keep"]
    with pytest.raises(SpoolError, match="symbolic link"):
        Spool(link).write(items(NOW), NOW, 0)
    assert sorted(p.name for p in target.iterdir()) == ["keep"]


def test_a_dangling_link_in_place_of_the_directory_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "spool"
    link.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(SpoolError, match="symbolic link"):
        Spool(link).open()
    assert not (tmp_path / "would-be-created").exists()


def test_a_link_in_place_of_the_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    precious.chmod(0o644)
    spool = Spool(tmp_path / "spool")
    spool.open()
    (tmp_path / "spool" / "lock").symlink_to(precious)
    with pytest.raises(SpoolError, match="lock: a symbolic link: refusing to follow it"):
        spool.lock()
    assert precious.read_text() == "keep me\n" and mode(precious) == 0o644
    (tmp_path / "spool" / "lock").unlink()
    (tmp_path / "spool" / "lock").symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(SpoolError, match="symbolic link"):
        spool.lock()
    assert not (tmp_path / "created-through-the-link").exists()


def test_a_fifo_or_directory_in_place_of_the_lock_is_refused(tmp_path: Path, alarm: None) -> None:
    spool = Spool(tmp_path)
    spool.open()
    os.mkfifo(tmp_path / "lock")
    with pytest.raises(SpoolError, match="not a regular file"):
        spool.lock()
    os.unlink(tmp_path / "lock")
    (tmp_path / "lock").mkdir()
    with pytest.raises(SpoolError, match="lock"):
        spool.lock()


def test_entries_that_are_not_regular_files_are_never_read_moved_or_removed(
        tmp_path: Path, warnings: pytest.LogCaptureFixture, alarm: None) -> None:
    outside = tmp_path / "outside.json.gz"
    outside.write_bytes(batch_bytes(NOW - 60, metric="secret"))
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, Bounds(max_age=3600, max_bytes=10**9), clock=lambda: float(NOW))
    spool.open()
    link = spool_dir / f"{NOW - 60:010d}-0000-0000000a.json.gz"
    link.symlink_to(outside)
    fifo = spool_dir / f"{NOW - 60:010d}-0001-0000000b.json.gz"
    os.mkfifo(fifo)
    directory = spool_dir / f"{NOW - 60:010d}-0002-0000000c.json.gz"
    directory.mkdir()
    (spool_dir / "lost+found").mkdir()
    (spool_dir / "old-stuff").mkdir()
    os.utime(spool_dir / "old-stuff", (0, 0))
    real = spool.write(items(NOW - 30), NOW - 30, 0)

    assert [e.path for e in spool.pending()] == [real.path]
    sender = Recorder()
    outcome = push.deliver(items(NOW), NOW, sender, spool, 1000, Deadline.after(10))
    assert sender.sent == [NOW - 30, NOW] and outcome.replayed_batches == 1
    # an age bound that covers everything removes only the spool's own files
    aged = Spool(spool_dir, Bounds(max_age=0, max_bytes=0), clock=lambda: float(NOW + 10**6))
    aged.enforce()
    left = sorted(p.name for p in spool_dir.iterdir())
    assert left == sorted([link.name, fifo.name, directory.name, "lost+found", "old-stuff"])
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert outside.read_bytes() == batch_bytes(NOW - 60, metric="secret")
    named = [r.getMessage() for r in warnings.records if "ignoring" in r.getMessage()]
    assert any("a symbolic link" in m and link.name in m for m in named)
    assert any("a fifo" in m and fifo.name in m for m in named)
    assert any("a directory" in m and directory.name in m for m in named)
    assert not any("lost+found" in m for m in named)


def test_a_batch_swapped_for_a_link_or_fifo_after_listing_is_not_read(tmp_path: Path, alarm: None) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(batch_bytes(NOW, metric="secret"))
    spool = Spool(tmp_path / "spool", clock=lambda: float(NOW))
    spool.open()
    entry = spool.write(items(NOW), NOW, 0)
    os.unlink(entry.path)
    entry.path.symlink_to(outside)
    with pytest.raises(CorruptBatch, match="symbolic link"):
        spool.load(entry)
    os.unlink(entry.path)
    os.mkfifo(entry.path)
    with pytest.raises(CorruptBatch, match="not a regular file"):
        spool.load(entry)


def test_a_foreign_regular_file_is_set_aside_and_a_foreign_directory_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path, Bounds(max_age=3600), clock=lambda: float(NOW))
    spool.open()
    (tmp_path / "README").write_text("mine")
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "x").write_text("x")
    spool.tidy()
    assert spool.pending() == []
    assert (tmp_path / "README.corrupt").read_text() == "mine"
    assert (tmp_path / "backup" / "x").read_text() == "x"
    os.utime(tmp_path / "README.corrupt", (NOW - 7200, NOW - 7200))
    spool.enforce()  # the set-aside file ages out; the directory stays, and nothing fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277, 0o777])
def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        spool = Spool(tmp_path / "missing" / "parents" / "spool")
        spool.open()
        spool.lock()
        entry = spool.write(items(NOW), NOW, 0)
    finally:
        os.umask(previous)
    assert mode(tmp_path / "missing" / "parents" / "spool") == 0o700
    assert mode(entry.path) == 0o600
    assert mode(entry.path.parent / "lock") == 0o600
    assert spool.load(entry) == items(NOW)
    spool.close()


def test_a_looser_lock_is_tightened(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    (tmp_path / "lock").write_text("")
    (tmp_path / "lock").chmod(0o666)
    spool.lock()
    assert mode(tmp_path / "lock") == 0o600
    spool.close()


# -- clock jumps --------------------------------------------------------------------------------


def clocked(path: Path, now: List[int], max_age: int = 86400) -> Spool:
    spool = Spool(path, Bounds(max_age=max_age, max_bytes=10**9), clock=lambda: float(now[0]))
    spool.open()
    spool.lock()
    return spool


def test_batches_stamped_after_a_backward_jump_are_dropped_and_the_rest_replayed_in_order(
        tmp_path: Path, warnings: pytest.LogCaptureFixture) -> None:
    now = [NOW]
    spool = clocked(tmp_path, now)
    for stamp in (NOW - 120, NOW - 60, NOW):  # an outage of three runs
        push.deliver(items(stamp), stamp, Recorder(down=True), spool, 1000, Deadline.after(10))
    now[0] = NOW - 90  # the clock is set back 90 s; the receiver is back
    sender = Recorder()
    outcome = push.deliver(items(NOW - 90), NOW - 90, sender, spool, 1000, Deadline.after(10))
    # the batch of NOW - 120 is older than now: it goes first; the two stamped later are dropped
    assert sender.sent == [NOW - 120, NOW - 90]
    assert (outcome.dropped_batches, outcome.replayed_batches, outcome.sent_batches) == (2, 1, 1)
    assert spool.pending() == []
    text = "\n".join(r.getMessage() for r in warnings.records)
    assert "dropped 2 undelivered batches (0 older than 86400 s, 0 beyond" in text
    assert "2 stamped later than now: the clock went back" in text


def test_a_backward_jump_drops_nothing_by_age(tmp_path: Path) -> None:
    now = [NOW]
    spool = clocked(tmp_path, now, max_age=3600)
    for stamp in (NOW - 3000, NOW - 2000):
        spool.write(items(stamp), stamp, 0)
    now[0] = NOW - 86400 * 365  # a year back: the horizon moves back too
    dropped = spool.enforce()
    assert (dropped.by_age, dropped.ahead) == (0, 2)
    now[0] = NOW - 2500  # back by 2500 s: only the batch stamped after now goes
    spool.write(items(NOW - 3000), NOW - 3000, 0)
    spool.write(items(NOW - 2000), NOW - 2000, 0)
    dropped = spool.enforce()
    assert (dropped.by_age, dropped.ahead, dropped.oldest) == (0, 1, NOW - 2000)
    assert [e.timestamp for e in spool.pending()] == [NOW - 3000]


def test_a_forward_jump_beyond_the_age_bound_drops_by_age_and_says_when(
        tmp_path: Path, warnings: pytest.LogCaptureFixture) -> None:
    now = [NOW]
    spool = clocked(tmp_path, now, max_age=86400)
    push.deliver(items(NOW), NOW, Recorder(down=True), spool, 1000, Deadline.after(10))
    now[0] = NOW + 2 * 86400  # e.g. a host that booted with its clock two days behind
    sender = Recorder()
    outcome = push.deliver(items(now[0]), now[0], sender, spool, 1000, Deadline.after(10))
    assert sender.sent == [NOW + 2 * 86400] and outcome.dropped_batches == 1
    assert "(1 older than 86400 s" in "\n".join(r.getMessage() for r in warnings.records)


def test_replay_follows_collection_time_not_the_order_of_writing(tmp_path: Path) -> None:
    now = [NOW]
    spool = clocked(tmp_path, now)
    for stamp, seq in ((NOW - 60, 1), (NOW - 600, 0), (NOW - 60, 0), (NOW - 300, 0), (NOW - 600, 1)):
        entry = spool.write(items(stamp), stamp, seq)
        os.utime(entry.path, (NOW + 999, NOW + 999))  # mtimes say nothing: names do
    sender = Recorder()
    push.deliver(items(NOW), NOW, sender, spool, 1000, Deadline.after(10))
    assert sender.sent == [NOW - 600, NOW - 600, NOW - 300, NOW - 60, NOW - 60, NOW]


def test_the_deadline_runs_on_the_monotonic_clock() -> None:
    assert Deadline.after(10).clock is __import__("time").monotonic

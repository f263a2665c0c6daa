"""The spool: atomic 0600 files in a 0700 directory, oldest first, bounded, corruption set aside."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from container_netstat import falcon, push
from container_netstat.safedir import SafeDir
from container_netstat.spool import (
    Bounds,
    CorruptBatch,
    Spool,
    SpoolBusy,
    SpoolError,
    decode,
    default_dir,
    encode,
)

NOW = 1_700_000_000


def items(timestamp: int, n: int = 3) -> List[Dict[str, Any]]:
    return [
        {"endpoint": "h", "metric": f"m{i}", "timestamp": timestamp, "step": 60, "value": i,
         "counterType": "GAUGE", "tags": "container=a"}
        for i in range(n)
    ]


def opened(path: Path, bounds: Optional[Bounds] = None, now: int = NOW) -> Spool:
    spool = Spool(path, bounds or Bounds(), clock=lambda: float(now))
    spool.open()
    return spool


def test_a_batch_is_written_atomically_0600_in_a_0700_directory(tmp_path: Path) -> None:
    spool = opened(tmp_path / "spool")
    entry = spool.write(items(NOW), NOW, 0)
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [entry.path.name]  # no temp file left
    assert spool.load(entry) == items(NOW)


def test_a_looser_existing_directory_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)
    os.chmod(tmp_path / "spool", 0o755)
    opened(tmp_path / "spool")
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700


def test_pending_batches_come_oldest_first_then_by_sequence(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.write(items(NOW + 120), NOW + 120, 0)
    spool.write(items(NOW), NOW, 1)
    spool.write(items(NOW), NOW, 0)
    spool.write(items(NOW + 60), NOW + 60, 0)
    order = [(e.timestamp, e.seq) for e in spool.pending()]
    assert order == [(NOW, 0), (NOW, 1), (NOW + 60, 0), (NOW + 120, 0)]


def test_timestamps_of_different_widths_still_sort_by_time(tmp_path: Path) -> None:
    spool = opened(tmp_path, now=10**10)
    spool.write(items(999_999_999), 999_999_999, 0)
    spool.write(items(10**10), 10**10, 0)
    assert [e.timestamp for e in spool.pending()] == [999_999_999, 10**10]


def test_a_corrupt_batch_raises_and_can_be_set_aside(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.write(items(NOW), NOW, 0)
    entry.path.write_bytes(b"not gzip at all")
    with pytest.raises(CorruptBatch, match=entry.path.name):
        spool.load(entry)
    spool.set_aside(entry, "corrupt")
    assert spool.pending() == []
    assert (tmp_path / (entry.path.name + ".corrupt")).exists()


@pytest.mark.parametrize("payload", [b"{\"an\": \"object\"}", b"[1, 2]", b"[{\"a\": 1}", b"\xff\xfe"])
def test_decode_accepts_only_a_json_array_of_objects(payload: bytes) -> None:
    with pytest.raises(CorruptBatch):
        decode(gzip.compress(payload), "x")


def test_encode_refuses_nan_and_round_trips_integers() -> None:
    assert decode(encode(items(NOW)), "x")[0]["timestamp"] == NOW
    assert isinstance(decode(encode(items(NOW)), "x")[0]["step"], int)
    with pytest.raises(ValueError):
        encode([{"value": float("nan")}])


def test_a_stray_file_is_moved_aside_and_a_stale_temp_file_removed(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".tmp-1700000000-0000-abcd.json.gz").write_bytes(b"half")
    good = spool.write(items(NOW), NOW, 0)
    spool.tidy()
    assert [e.path for e in spool.pending()] == [good.path]
    assert (tmp_path / "notes.txt.corrupt").exists()
    assert not (tmp_path / ".tmp-1700000000-0000-abcd.json.gz").exists()


def test_age_bound_drops_old_batches_and_counts_them(tmp_path: Path) -> None:
    spool = opened(tmp_path, Bounds(max_age=3600, max_bytes=10**9))
    spool.write(items(NOW - 7200), NOW - 7200, 0)
    spool.write(items(NOW - 3700), NOW - 3700, 0)
    keep = spool.write(items(NOW - 60), NOW - 60, 0)
    dropped = spool.enforce()
    assert (dropped.by_age, dropped.by_size) == (2, 0)
    assert (dropped.oldest, dropped.newest) == (NOW - 7200, NOW - 3700)
    assert [e.path for e in spool.pending()] == [keep.path]


def test_size_bound_drops_the_oldest_until_it_fits(tmp_path: Path) -> None:
    spool = Spool(tmp_path, Bounds(max_age=10**9, max_bytes=10**9), clock=lambda: float(NOW))
    spool.open()
    written = [spool.write(items(NOW - 300 + i * 60, 50), NOW - 300 + i * 60, 0) for i in range(5)]
    size = written[0].size
    bounded = Spool(tmp_path, Bounds(max_age=10**9, max_bytes=2 * size + size // 2), clock=lambda: float(NOW))
    dropped = bounded.enforce()
    assert dropped.by_size == 3 and dropped.by_age == 0
    assert [e.path for e in bounded.pending()] == [w.path for w in written[3:]]
    assert bounded.size()[1] <= 2 * size + size // 2


def test_set_aside_files_are_bounded_too_but_not_counted_as_batches(tmp_path: Path) -> None:
    spool = opened(tmp_path, Bounds(max_age=3600, max_bytes=10**9))
    entry = spool.write(items(NOW - 7200), NOW - 7200, 0)
    spool.set_aside(entry, "rejected")
    dropped = spool.enforce()
    assert dropped.batches == 0 and dropped.bytes > 0
    assert list(tmp_path.iterdir()) == []


def test_a_second_lock_on_the_same_spool_is_refused_until_released(tmp_path: Path) -> None:
    first = opened(tmp_path)
    first.lock()
    second = opened(tmp_path)
    with pytest.raises(SpoolBusy):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.lock()
    code = textwrap.dedent(f"""
        from container_netstat.spool import Spool, SpoolBusy
        s = Spool({str(tmp_path)!r}); s.open()
        try:
            s.lock()
        except SpoolBusy:
            raise SystemExit(7)
    """)
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7
    spool.unlock()
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_an_unwritable_spool_raises_a_spool_error(tmp_path: Path) -> None:
    spool = opened(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(SpoolError, match="cannot write"):
        spool.write(items(NOW), NOW, 0)
    with pytest.raises(SpoolError):
        Spool(Path("/proc/1/nonexistent/spool")).open()


def test_default_directory_is_var_spool_for_root_and_xdg_state_otherwise() -> None:
    assert default_dir(0, {}) == Path("/var/spool/container-netstat")
    assert default_dir(1000, {"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path("/s/container-netstat")
    assert default_dir(1000, {"HOME": "/h"}) == Path("/h/.local/state/container-netstat")


def test_entries_and_pending_only_read_and_tidy_does_the_changes(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    good = spool.write(items(NOW), NOW, 0)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".tmp-1700000000-0001-abcd.json.gz").write_bytes(b"half")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert [e.path for e in spool.entries()] == [good.path]
    assert [e.path for e in spool.pending()] == [good.path]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    tidied = spool.tidy()
    assert sorted((e.path.name, e.pending) for e in tidied) == sorted([(good.path.name, True),
                                                                       ("notes.txt.corrupt", False)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.path.name, "notes.txt.corrupt"])
    assert sorted(e.path for e in tidied) == sorted(e.path for e in spool.entries())


class _Sender:
    def __init__(self, down: bool) -> None:
        self.down = down

    def send(self, body: bytes, count: int, budget: float) -> push.Reply:
        if self.down:
            raise push.Unreachable("Connection refused")
        return push.Reply("agent", count, 0, "success")


def test_one_delivery_lists_the_spool_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to be four times (bounds, replay, bounds again after spooling, the count left)."""
    spool = opened(tmp_path, Bounds(max_age=3600, max_bytes=10**9))
    spool.lock()
    spool.write(items(NOW - 7200), NOW - 7200, 0)  # out of the age bound
    spool.write(items(NOW - 120), NOW - 120, 0)
    listings: List[object] = []

    def counting(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            listings.append(args)
            return real(*args)
        return wrapper

    monkeypatch.setattr(os, "listdir", counting(os.listdir))
    monkeypatch.setattr(os, "scandir", counting(os.scandir))
    down = push.deliver(items(NOW - 60), NOW - 60, _Sender(down=True), spool, 2, push.Deadline.after(10))
    assert (down.dropped_batches, down.spooled_batches, down.waiting_batches) == (1, 2, 3)
    assert len(listings) == 1
    up = push.deliver(items(NOW), NOW, _Sender(down=False), spool, 1000, push.Deadline.after(10))
    assert (up.replayed_batches, up.sent_batches, up.waiting_batches) == (3, 1, 0)
    assert len(listings) == 2
    monkeypatch.undo()
    assert spool.pending() == []
    spool.close()


def test_a_batch_is_stored_as_the_json_text_a_push_sends() -> None:
    batch = items(NOW)
    assert gzip.decompress(encode(batch)) == falcon.dumps(batch).encode("utf-8")


# -- a spool nobody else can fill ------------------------------------------------------------

def planted(directory: Path) -> Path:
    """A batch someone else put in the spool, as a run would have written it."""
    directory.mkdir(exist_ok=True)
    batch = directory / f"{NOW}-0-abc.json.gz"
    batch.write_bytes(encode([{**items(NOW, 1)[0], "metric": "planted.metric"}]))
    return batch


def test_a_spool_owned_by_another_user_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    batch = planted(tmp_path / "spool")
    os.chmod(tmp_path / "spool", 0o700)
    os.chown(tmp_path / "spool", 65534, 65534)
    with pytest.raises(SpoolError, match=r"owned by uid 65534, not by this user \(uid 0\)"):
        opened(tmp_path / "spool")
    assert batch.exists() and stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700
    os.chown(tmp_path / "spool", 0, 0)  # given back: the same directory is taken
    assert [e.path for e in opened(tmp_path / "spool").pending()] == [batch]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o730, 0o702])
def test_a_spool_group_or_others_may_write_is_refused_not_tightened(tmp_path: Path, mode: int) -> None:
    batch = planted(tmp_path / "spool")
    os.chmod(tmp_path / "spool", mode)
    with pytest.raises(SpoolError, match=f"mode {mode:04o} lets group or others write"):
        opened(tmp_path / "spool")
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == mode and batch.exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_an_empty_shared_spool_is_made_0700_before_use(tmp_path: Path, mode: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A new emptyDir (0777) or tmpfs mount (1777): nothing in it, and nobody else can add to it once 0700."""
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "lost+found").mkdir()  # a file system's own, not a batch
    os.chmod(tmp_path / "spool", mode)
    with caplog.at_level("WARNING", logger="container_netstat"):
        spool = opened(tmp_path / "spool")
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700
    assert [r.getMessage() for r in caplog.records] == [
        f"spool {tmp_path / 'spool'} had mode {mode:03o} and was empty; set it to 0700"]
    spool.write(items(NOW), NOW, 0)
    assert len(spool.pending()) == 1


def test_a_batch_planted_while_the_shared_spool_is_tightened_is_refused_then_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "spool").mkdir()
    os.chmod(tmp_path / "spool", 0o777)
    chmod = SafeDir.chmod

    def planted_meanwhile(self: SafeDir, mode: int) -> None:
        if mode == 0o700:
            planted(tmp_path / "spool")  # by another user, just before the mode changes
        chmod(self, mode)

    monkeypatch.setattr(SafeDir, "chmod", planted_meanwhile)
    with pytest.raises(SpoolError, match="mode 0777 lets group or others write batches there, and it is not empty"):
        opened(tmp_path / "spool")
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o777  # as found: the next run refuses it too
    with pytest.raises(SpoolError, match="not empty"):
        opened(tmp_path / "spool")


def test_a_spool_others_may_only_read_is_tightened(tmp_path: Path) -> None:
    planted(tmp_path / "spool")
    os.chmod(tmp_path / "spool", 0o755)
    assert len(opened(tmp_path / "spool").pending()) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700


@pytest.mark.parametrize("owner, mode, why", [
    (65534, 0o700, "owned by uid 65534"),
    (0, 0o777, "mode 0777 lets group or others write"),
    (0, 0o770, "mode 0770 lets group or others write"),
])
def test_the_cli_refuses_such_a_spool_with_exit_2_and_pushes_nothing(tmp_path: Path, owner: int, mode: int,
                                                                     why: str) -> None:
    from receiver import Receiver

    spool_dir = tmp_path / "spool"
    planted(spool_dir)
    os.chmod(spool_dir, mode)
    os.chown(spool_dir, owner, owner)
    with Receiver() as server:
        result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--falcon-url", server.url(),
                                 "--spool-dir", str(spool_dir), "--runtime", "proc"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert server.pushes == []
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert f"cannot use spool directory {spool_dir}: {why}" in line and line.endswith("(see --spool-dir)"), line

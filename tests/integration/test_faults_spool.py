"""Faults of the spool and the textfile, through the command against real Docker and the real
receiver: a missing, read-only, full, foreign-filled or link-planted spool; a wrong URL that
keeps batches for three runs; ten runs at once; spooled batches stamped across a clock jump.

Read-only and full filesystems are real mounts (a read-only tmpfs or bind mount: root ignores
mode bits; a 64 KiB tmpfs), each undone when its test ends.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from container_netstat import cli, push
from container_netstat.push import Deadline, Reply, Unreachable
from container_netstat.spool import NAME_FILE, Spool, SpoolError

from conftest import unavailable
from receiver import Receiver

pytestmark = pytest.mark.docker

PREFIX = "container-netstat: "
# The runs here are about the spool, not containers: they read the host's counters only, so
# other containers on the daemon do not change how many items (and requests) a run makes.
ONLY_HOST = ("--include", "cnt-spool-faults-selects-no-container")


@pytest.fixture(autouse=True)
def docker_up(docker_client: Any) -> None:
    """Every run here collects from the real daemon."""



Mount = Callable[..., Callable[[], None]]


@pytest.fixture
def mount() -> Iterator[Mount]:
    """mount(target, *options) -> unmount; whatever is still mounted goes at teardown."""
    mounted: List[Path] = []

    def unmount(target: Path) -> None:
        if target in mounted:
            mounted.remove(target)
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)

    def do_mount(target: Path, *options: str) -> Callable[[], None]:
        if os.geteuid() != 0:
            unavailable("mounting a filesystem needs root")
        result = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
        if result.returncode:
            unavailable(f"cannot mount {' '.join(options)}: {result.stderr.strip()}")
        mounted.append(target)
        return lambda: unmount(target)

    try:
        yield do_mount
    finally:
        for target in list(reversed(mounted)):
            unmount(target)


def collect(spool_dir: Path, url: str, *args: str, umask: Optional[int] = None,
            timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", "container_netstat", "collect", "--falcon-url", url,
               "--spool-dir", str(spool_dir), *ONLY_HOST, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, umask=-1 if umask is None else umask)


def lines(result: "subprocess.CompletedProcess[str]") -> List[str]:
    out = result.stderr.splitlines()
    assert all(line.startswith(PREFIX) for line in out), out
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def snapshot(directory: Path) -> Dict[str, str]:
    """Every entry by name: a digest of a file's bytes, or what else it is."""
    found = {}
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            found[entry.name] = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            found[entry.name] = "-> " + os.readlink(entry.path)
        else:
            found[entry.name] = oct(stat.S_IFMT(st.st_mode))
    return found


def batches(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json.gz"))


def stamps(receiver: Receiver) -> List[int]:
    """The collection time of every accepted request, in the order they arrived."""
    return [p.items[0]["timestamp"] for p in receiver.accepted() if p.items]


def filler(stamp: int, n: int, metric: str = "test.filler") -> List[Dict[str, Any]]:
    """Valid items that do not compress (random tag values)."""
    return [{"endpoint": "filler-host", "metric": metric, "timestamp": stamp, "step": 60, "value": i,
             "counterType": "GAUGE", "tags": f"r={secrets.token_hex(28)}"} for i in range(n)]


def batch_name(stamp: int, seq: int = 0) -> str:
    return f"{stamp:010d}-{seq:04d}-{secrets.token_hex(4)}.json.gz"


def fill(directory: Path, first_stamp: int) -> List[Path]:
    """Valid pending batches, large then single-page, until the filesystem has no block left."""
    written: List[Path] = []
    stamp = first_stamp
    for per_file in (200, 20, 1):
        while True:
            path = directory / batch_name(stamp)
            try:
                with open(path, "xb") as out:
                    out.write(gzip.compress(json.dumps(filler(stamp, per_file)).encode()))
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                path.unlink()
                break
            path.chmod(0o600)
            written.append(path)
            stamp += 1
    assert os.statvfs(directory).f_bavail == 0
    return written


# -- missing ------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_a_missing_spool_directory_is_created_0700_with_0600_files(receiver: Receiver, tmp_path: Path,
                                                                   umask: int) -> None:
    spool_dir = tmp_path / "a" / "b" / "spool"
    receiver.down()
    result = collect(spool_dir, receiver.url(), umask=umask)
    assert result.returncode == cli.EXIT_SPOOLED, result.stderr
    assert mode(spool_dir) == 0o700
    assert mode(spool_dir / "lock") == 0o600
    spooled = batches(spool_dir)
    assert spooled and all(mode(p) == 0o600 for p in spooled)
    receiver.up()
    result = collect(spool_dir, receiver.url(), umask=umask)
    assert result.returncode == cli.EXIT_OK, result.stderr
    assert len(receiver.accepted()) == 2 and batches(spool_dir) == []  # the spooled run's, then its own


# -- read-only ----------------------------------------------------------------------------


@pytest.mark.parametrize("tmpfs_mode, message", [
    ("0700", "cannot open lock"),  # the directory is fine; the lock cannot be created
    ("1777", "cannot use spool directory"),  # its mode cannot even be tightened
])
def test_a_read_only_spool_stops_the_run_before_it_collects(receiver: Receiver, tmp_path: Path, mount: Mount,
                                                            tmpfs_mode: str, message: str) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    mount(spool_dir, "-t", "tmpfs", "-o", f"ro,size=64k,mode={tmpfs_mode}", "tmpfs")
    assert os.statvfs(spool_dir).f_flag & os.ST_RDONLY
    result = collect(spool_dir, receiver.url(), "--log-level", "info")
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    (line,) = lines(result)
    assert message in line and "Read-only file system (see --spool-dir)" in line, line
    assert receiver.pushes == []  # it neither collected nor sent


def test_a_spool_remounted_read_only_keeps_its_batches_for_later(receiver: Receiver, tmp_path: Path,
                                                                 mount: Mount) -> None:
    spool_dir = tmp_path / "spool"
    now = int(time.time())
    holder = Spool(spool_dir)
    holder.open()
    holder.lock()
    holder.write(filler(now - 600, 5), now - 600, 0)
    holder.write(filler(now - 300, 5), now - 300, 0)
    holder.close()
    before = snapshot(spool_dir)
    unmount = mount(spool_dir, "--bind", "-o", "ro", str(spool_dir))
    assert os.statvfs(spool_dir).f_flag & os.ST_RDONLY
    result = collect(spool_dir, receiver.url())
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    (line,) = lines(result)
    assert "cannot open lock" in line and "Read-only file system" in line
    assert snapshot(spool_dir) == before and receiver.pushes == []
    unmount()
    result = collect(spool_dir, receiver.url())
    assert result.returncode == cli.EXIT_OK, result.stderr
    assert stamps(receiver)[:2] == [now - 600, now - 300] and len(stamps(receiver)) == 3
    assert batches(spool_dir) == []


# -- full ---------------------------------------------------------------------------------


def test_a_full_spool_loses_the_batch_loudly_and_keeps_the_rest_whole(receiver: Receiver, tmp_path: Path,
                                                                      mount: Mount) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    mount(spool_dir, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs")
    now = int(time.time())
    kept = fill(spool_dir, now - 3600)
    before = snapshot(spool_dir)
    receiver.down()
    result = collect(spool_dir, receiver.url())
    assert result.returncode == cli.EXIT_LOST, result.stderr
    lost = [line for line in lines(result) if "lost" in line]
    assert len(lost) == 1 and "not delivered and cannot write" in lost[0], result.stderr
    assert "No space left on device" in lost[0]
    after = snapshot(spool_dir)
    assert not [n for n in after if n.startswith(".tmp-")], after
    after.pop("lock")
    assert after == before, "a spooled batch changed, or half a batch was left behind"
    # once the receiver is back, every kept batch goes, oldest first, then the new run's
    receiver.up()
    result = collect(spool_dir, receiver.url())
    assert result.returncode == cli.EXIT_OK, result.stderr
    sent = stamps(receiver)
    assert sent[:-1] == [int(p.name.split("-")[0]) for p in kept] and sent[-1] > now - 5
    assert receiver.invalid() == [] and batches(spool_dir) == []


def test_a_short_write_on_a_full_disk_leaves_no_truncated_batch(tmp_path: Path, mount: Mount) -> None:
    """A full disk can take the first pages of a write and refuse only the next call."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    mount(spool_dir, "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs")
    now = int(time.time())
    spool = Spool(spool_dir)
    spool.open()
    spool.lock()
    fill(spool_dir, now - 3600)[-1].unlink()
    while os.statvfs(spool_dir).f_bavail > 1:  # one page free
        (spool_dir / batch_name(now - 1)).write_bytes(gzip.compress(json.dumps(filler(now - 1, 1)).encode()))
    assert os.statvfs(spool_dir).f_bavail == 1
    before = snapshot(spool_dir)
    big = filler(now, 300)  # well over a page once gzipped
    with pytest.raises(SpoolError, match="No space left on device"):
        spool.write(big, now, 0)
    assert snapshot(spool_dir) == before

    class Down:
        def send(self, body: bytes, count: int, budget: float) -> Reply:
            raise Unreachable("Connection refused")

    outcome = push.deliver(big, now, Down(), spool, 1000, Deadline.after(10))
    assert (outcome.lost_items, outcome.spooled_batches) == (300, 0)
    assert snapshot(spool_dir) == before
    spool.close()


# -- foreign files and links ------------------------------------------------------------------


def test_foreign_entries_are_set_aside_or_left_alone_and_never_read(receiver: Receiver, tmp_path: Path) -> None:
    now = int(time.time())
    outside = tmp_path / "outside.json.gz"
    outside.write_bytes(gzip.compress(json.dumps(filler(now - 120, 3, metric="secret.metric")).encode()))
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    spool.open()
    spool.write(filler(now - 300, 3), now - 300, 0)
    spool.close()
    (spool_dir / "notes.txt").write_text("someone's notes")
    (spool_dir / "lost+found").mkdir()
    (spool_dir / "archive").mkdir()
    (spool_dir / batch_name(now - 240)).symlink_to(outside)
    os.mkfifo(spool_dir / batch_name(now - 180))
    # everything that is not a regular file: the link, the fifo and both directories
    left_alone = {n: v for n, v in snapshot(spool_dir).items() if v.startswith(("-> ", "0o"))}
    assert len(left_alone) == 4
    started = time.monotonic()
    result = collect(spool_dir, receiver.url())
    assert time.monotonic() - started < 30  # the fifo was never opened
    assert result.returncode == cli.EXIT_OK, result.stderr
    warned = lines(result)
    assert len([w for w in warned if "ignoring" in w]) == 3, warned  # link, fifo, directory; not lost+found
    assert any("notes.txt is not a batch file; moving it aside" in w for w in warned)
    assert (spool_dir / "notes.txt.corrupt").read_text() == "someone's notes"
    after = snapshot(spool_dir)
    assert {n: after.get(n) for n in left_alone} == left_alone
    assert stamps(receiver)[0] == now - 300 and len(stamps(receiver)) == 2
    assert not [i for i in receiver.items() if i["metric"] == "secret.metric"]


@pytest.mark.parametrize("planted", ["directory", "dangling directory", "lock", "dangling lock"])
def test_a_planted_link_is_refused_and_nothing_is_written_through_it(receiver: Receiver, tmp_path: Path,
                                                                     planted: str) -> None:
    target = tmp_path / "target"
    spool_dir = tmp_path / "spool"
    if planted == "directory":
        target.mkdir()
        target.chmod(0o755)
        (target / "file").write_text("precious")
        spool_dir.symlink_to(target)
    elif planted == "dangling directory":
        spool_dir.symlink_to(target)
    else:
        spool_dir.mkdir(mode=0o700)
        if planted == "lock":
            target.write_text("precious")
            target.chmod(0o644)
        (spool_dir / "lock").symlink_to(target)
    before = snapshot(tmp_path / "target") if target.is_dir() else (target.exists() and target.read_text())
    target_mode = target.exists() and mode(target)
    result = collect(spool_dir, receiver.url())
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    (line,) = lines(result)
    assert "a symbolic link: refusing to follow it (see --spool-dir)" in line, line
    after = snapshot(tmp_path / "target") if target.is_dir() else (target.exists() and target.read_text())
    assert after == before and (target.exists() and mode(target)) == target_mode
    assert receiver.pushes == []


# -- a wrong URL -------------------------------------------------------------------------------


def test_a_wrong_path_for_three_runs_loses_nothing_once_it_is_fixed(receiver: Receiver, tmp_path: Path) -> None:
    """Changed: a 404 used to be a rejection, reported and not kept (README: Changes)."""
    wrong = receiver.url("/v1/psuh")
    for run in range(3):
        result = collect(tmp_path, wrong)
        assert result.returncode == cli.EXIT_REJECTED, result.stderr
        (line,) = lines(result)
        assert "HTTP 404" in line and "fix --falcon-url or its credentials" in line, line
        assert "the data is kept: " in line and f"{run + 1} batches wait in {tmp_path}" in line, line
        assert len(batches(tmp_path)) == run + 1
        time.sleep(1.1)  # each run in a second of its own
    # one request a run: the oldest batch was refused, so nothing newer was sent
    assert [p.status for p in receiver.pushes] == [404] * 3 and receiver.accepted() == []
    reader = Spool(tmp_path)
    kept = [reader.load(entry) for entry in reader.pending()]
    reader.close()
    result = collect(tmp_path, receiver.url())
    assert result.returncode == cli.EXIT_OK, result.stderr
    sent = stamps(receiver)
    assert sent == sorted(sent) and len(sent) == 4, sent  # oldest first, then this run's
    assert sent[:3] == [batch[0]["timestamp"] for batch in kept]
    received = receiver.items()
    keys = [(i["timestamp"], i["metric"], i["tags"]) for i in received]
    assert len(keys) == len(set(keys)), "an item was delivered twice"
    assert received[: sum(map(len, kept))] == [item for batch in kept for item in batch]  # each exactly once
    assert receiver.invalid() == [] and batches(tmp_path) == []


# -- ten runs at once -------------------------------------------------------------------------


def ten_runs(spool_dir: Path, url: str, *args: str) -> List[Dict[str, Any]]:
    command = [sys.executable, "-m", "container_netstat", "collect", "--falcon-url", url,
               "--spool-dir", str(spool_dir), "--log-level", "info", *ONLY_HOST, *args]
    started = time.monotonic()
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
    runs: List[Dict[str, Any]] = [{} for _ in procs]
    pending = set(range(10))
    try:
        while pending and time.monotonic() - started < 60:
            for i in list(pending):
                if procs[i].poll() is not None:
                    runs[i] = {"code": procs[i].returncode, "ended": time.monotonic() - started}
                    pending.discard(i)
            time.sleep(0.02)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for run, proc in zip(runs, procs):
        out, err = proc.communicate(timeout=10)
        run.update(stdout=out, stderr=err)
    assert not pending, "a run did not end within 60 s"
    return runs


def test_ten_runs_at_once_one_delivers_nine_exit_7_at_once(receiver: Receiver, tmp_path: Path) -> None:
    receiver.slow(6)  # the run that wins holds the lock for at least this long
    runs = ten_runs(tmp_path, receiver.url())
    winners = [r for r in runs if r["code"] == cli.EXIT_OK]
    losers = [r for r in runs if r["code"] == cli.EXIT_LOCKED]
    assert len(winners) == 1 and len(losers) == 9, [(r["code"], r["stderr"]) for r in runs]
    for loser in losers:
        assert loser["ended"] < winners[0]["ended"] and loser["ended"] < 15, loser
        assert loser["stdout"] == ""
        (line,) = loser["stderr"].splitlines()
        assert "another run is in progress, this one did nothing" in line
    assert len(set(stamps(receiver))) == 1 and len(receiver.accepted()) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lock", NAME_FILE])  # the agent's name, once


def test_ten_runs_at_once_while_the_receiver_hangs_spool_one_whole_run(receiver: Receiver, tmp_path: Path) -> None:
    receiver.slow(30)  # the winner gives up after its read timeout and spools
    runs = ten_runs(tmp_path, receiver.url(), "--read-timeout", "4", "--batch-size", "20")
    codes = sorted(r["code"] for r in runs)
    assert codes == [cli.EXIT_SPOOLED] + [cli.EXIT_LOCKED] * 9, [(r["code"], r["stderr"]) for r in runs]
    winner = next(r for r in runs if r["code"] == cli.EXIT_SPOOLED)
    spooled = int(winner["stderr"].split(" items of this run spooled")[0].rsplit("(", 1)[1].split(": ")[-1])
    files = batches(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lock", NAME_FILE] + [p.name for p in files])
    reader = Spool(tmp_path)
    loaded = [item for entry in reader.pending() for item in reader.load(entry)]
    reader.close()
    assert len(loaded) == spooled and all(mode(p) == 0o600 for p in files)
    assert len({i["timestamp"] for i in loaded}) == 1  # one run's items, nobody else's


# -- a clock jump -------------------------------------------------------------------------------


def test_batches_from_across_a_clock_jump(receiver: Receiver, tmp_path: Path) -> None:
    """Spooled batches stamped days ago (the clock jumped forward since) and hours or days
    ahead (it was set back): the first go by age, the second because they would make graph
    ignore every newer point; what is left goes oldest first, then this run's."""
    now = int(time.time())
    spool = Spool(tmp_path)
    spool.open()
    for stamp in (now - 900, now + 7200, now - 3 * 86400, now - 600, now + 30 * 86400):
        spool.write(filler(stamp, 4), stamp, 0)
    spool.close()
    result = collect(tmp_path, receiver.url(), "--spool-max-age", "1d")
    assert result.returncode == cli.EXIT_LOST, result.stderr
    (line,) = [w for w in lines(result) if "dropped" in w]
    assert "dropped 3 undelivered batches (1 older than 86400 s, 0 beyond 67108864 bytes, " \
           "2 stamped later than now: the clock went back)" in line, line
    sent = stamps(receiver)
    assert sent[:2] == [now - 900, now - 600] and len(sent) == 3 and now <= sent[2] < now + 60
    assert batches(tmp_path) == []


# -- the textfile on a read-only or full filesystem ----------------------------------------------


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_textfile_that_cannot_be_written_keeps_the_old_one_and_exits_8(tmp_path: Path, mount: Mount,
                                                                        fault: str) -> None:
    directory = tmp_path / "textfiles"
    directory.mkdir()
    textfile = directory / "container_netstat.prom"
    if fault == "read-only":
        textfile.write_text("# old values\n")
        mount(directory, "--bind", "-o", "ro", str(directory))
    else:
        mount(directory, "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs")
        textfile.write_text("# old values\n")
        fd = os.open(directory / "ballast", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
    before = snapshot(directory)
    result = subprocess.run([sys.executable, "-m", "container_netstat", "collect", "--textfile", str(textfile),
                             *ONLY_HOST], capture_output=True, text=True, timeout=60)
    assert result.returncode == cli.EXIT_LOST, result.stderr
    (line,) = lines(result)
    assert "(see --textfile)" in line, line
    assert ("Read-only file system" if fault == "read-only" else "No space left on device") in line
    assert snapshot(directory) == before  # the old file, and no temporary left behind

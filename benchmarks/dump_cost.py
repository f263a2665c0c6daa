"""What one namespace's TCP states cost, step by step, inside one process; and why.

    python benchmarks/dump_cost.py [--rounds 3]      # on a running fleet (fleet.py up N)

For every network namespace of the benchmark fleet that holds a TCP socket (the ones
``collect`` dumps), each step is timed over all of them, in this order, for ``--rounds``
passes; the median pass is printed per namespace (wall, user, system time of this
process, from ``getrusage``):

1. open ``/proc/<pid>/ns/net``, ``setns`` into it and back, close;
2. the same, and create the NETLINK_SOCK_DIAG socket inside;
3. the same, and read ``ip_local_port_range`` inside (what ``tcp_reader.TcpReader`` does);
4. the same, and send the legacy TCPDIAG_GETSOCK request and read the replies, undecoded;
5. ``TcpReader.read``: all of it, decoded and summarized;
6. read ``/proc/<pid>/net/tcp`` and ``tcp6``, unparsed;
7. ``TcpReader`` on the /proc path: read, parsed and summarized.

Then the cause: both dumps walk every bucket of the TCP established hash table that the
namespace uses (``tcp_diag_dump`` in net/ipv4/tcp_diag.c, ``established_get_first`` in
net/ipv4/tcp_ipv4.c), and a container's namespace shares the host's, sized from the
host's memory (``tcp_ehash_entries``), with every other namespace's sockets in it.
Throw-away namespaces with one listener each are made in child processes, and the dump
and the /proc read are timed in each:

- one sharing the host's table, as every container's does by default;
- the same while another throw-away namespace holds ``--sockets`` more connected TCP
  sockets (on its own loopback): the cost of the other namespaces' sockets;
- one with a table of its own of ``--child-ehash`` buckets
  (``net.ipv4.tcp_child_ehash_entries``, kernel 6.1 and later, set inside a first
  namespace of the child's own, so that the host's setting is not touched).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fleet  # noqa: E402
from container_netstat import tcp_reader, tcp_summary, sockdiag  # noqa: E402
from container_netstat.procfs import ProcFS  # noqa: E402

CLONE_NEWNET = tcp_reader.CLONE_NEWNET
EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"
CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"

Cost = Tuple[float, float, float]  # wall, user, system: seconds


def measure(step: Callable[[int], object], pids: Sequence[int]) -> Cost:
    """(wall, user, system) per pid of one pass of ``step`` over ``pids``."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for pid in pids:
        step(pid)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    n = len(pids)
    return wall / n, (after.ru_utime - before.ru_utime) / n, (after.ru_stime - before.ru_stime) / n


def fleet_pids() -> List[int]:
    """One pid per network namespace of the running fleet (not the host's), if it holds a TCP socket."""
    api = fleet.client().api
    host = os.stat("/proc/self/ns/net").st_ino  # this process runs in the host's
    by_ns: Dict[int, int] = {}
    for c in fleet.bench_containers(api, stopped=False):
        pid = api.inspect_container(c["Id"])["State"]["Pid"]
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino != host:
            by_ns.setdefault(ino, pid)
    return [pid for pid in by_ns.values() if _tcp_sockets(pid)]


def _tcp_sockets(pid: int) -> int:
    total = 0
    for name, proto in (("sockstat", "TCP:"), ("sockstat6", "TCP6:")):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                for line in f:
                    if line.startswith(proto):
                        fields = line.split()
                        values = dict(zip(fields[1::2], fields[2::2]))
                        total += int(values.get("inuse", 0)) + int(values.get("tw", 0))
        except FileNotFoundError:
            pass
    return total


def _done(data: bytes) -> bool:
    """Whether a reply datagram holds NLMSG_DONE (or NLMSG_ERROR)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = int.from_bytes(data[offset:offset + 4], sys.byteorder), \
            int.from_bytes(data[offset + 4:offset + 6], sys.byteorder)
        if kind in (sockdiag.NLMSG_DONE, sockdiag.NLMSG_ERROR) or length < 16:
            return True
        offset += (length + 3) & ~3
    return False


def raw_dump(sock: socket.socket) -> int:
    sock.send(sockdiag.legacy_request())
    received = 0
    while True:
        data = sock.recv(tcp_reader.RECV_BUFFER)
        received += len(data)
        if not data or _done(data):
            return received


def steps(reader: tcp_reader.TcpReader) -> Dict[str, Callable[[int], object]]:
    setns, home = reader._setns, reader._home_fd  # the reader's own, as collect uses them
    assert home is not None

    def enter(pid: int, inside: Callable[[], object]) -> object:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWNET)
            try:
                return inside()
            finally:
                setns(home, CLONE_NEWNET)
        finally:
            os.close(fd)

    def with_socket(pid: int) -> None:
        enter(pid, tcp_reader._netlink_socket).close()  # type: ignore[attr-defined]

    def with_range(pid: int) -> None:
        sock = enter(pid, lambda: (tcp_reader._netlink_socket(), tcp_reader._read_inside(tcp_reader.PORT_RANGE))[0])
        sock.close()  # type: ignore[attr-defined]

    def with_dump(pid: int) -> None:
        sock = enter(pid, lambda: (tcp_reader._netlink_socket(), tcp_reader._read_inside(tcp_reader.PORT_RANGE))[0])
        try:
            raw_dump(sock)  # type: ignore[arg-type]
        finally:
            sock.close()  # type: ignore[attr-defined]

    def proc_raw(pid: int) -> None:
        for name in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{name}", "rb") as f:
                f.read()

    return {
        "open ns, setns in and back": lambda pid: enter(pid, lambda: None),
        "  + NETLINK_SOCK_DIAG socket": with_socket,
        "  + ip_local_port_range": with_range,
        "  + legacy dump, undecoded": with_dump,
        "sock_diag: TcpReader.read": reader.read,
        "/proc/<pid>/net/tcp{,6}, unparsed": proc_raw,
        "/proc: TcpReader, parsed": lambda pid: tcp_summary.summarize(
            reader._by_proc(pid, tcp_reader.TCP, tcp_reader.EVERY)),
    }


def per_namespace(rounds: int) -> Dict[str, object]:
    pids = fleet_pids()
    if not pids:
        raise SystemExit("dump_cost.py: no fleet namespace with a TCP socket (python benchmarks/fleet.py up N)")
    reader = tcp_reader.TcpReader(ProcFS("/proc"))
    why = reader.probe()
    if why is not None:
        raise SystemExit(f"dump_cost.py: sock_diag unavailable: {why}")
    timed = steps(reader)
    passes: Dict[str, List[Cost]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, step in timed.items():
            passes[name].append(measure(step, pids))
    reader.close()
    out: Dict[str, object] = {"namespaces": len(pids), "steps": {}}
    print(f"{len(pids)} fleet namespaces with TCP sockets, median of {rounds} passes, per namespace:")
    for name, costs in passes.items():
        wall, user, system = (statistics.median(c[i] for c in costs) for i in range(3))
        out["steps"][name] = {"wall_ms": wall * 1e3, "user_ms": user * 1e3, "sys_ms": system * 1e3}  # type: ignore[index]
        print(f"  {name:36s} wall {wall * 1e3:6.3f} ms  user {user * 1e3:6.3f} ms  sys {system * 1e3:6.3f} ms")
    return out


def _unshare() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _in_child(work: Callable[[int], Dict[str, float]], hold: bool = False) -> Tuple[int, int, Dict[str, float]]:
    """Run ``work(fd)`` in a forked child; (pid, fd, its result). With ``hold`` the child then
    waits until ``fd`` (the write end of a pipe it reads) is closed, keeping its namespace."""
    read_fd, write_fd = os.pipe()
    hold_read, hold_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_fd)
            os.close(hold_write)
            result = work(0)
            os.write(write_fd, json.dumps(result).encode())
            os.close(write_fd)
            if hold:
                os.read(hold_read, 1)
        except BaseException as err:  # reported by the parent
            os.write(write_fd, json.dumps({"error": str(err)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    os.close(hold_read)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    result = json.loads(data)
    if not hold:
        os.close(hold_write)
        os.waitpid(pid, 0)
    if "error" in result:
        raise SystemExit(f"dump_cost.py: {result['error']}")
    return pid, hold_write, result


def _timed_here(reps: int, child_ehash: int = 0) -> Callable[[int], Dict[str, float]]:
    """A new namespace (with a table of its own if ``child_ehash``), one listener, timed reads."""

    def work(_: int) -> Dict[str, float]:
        _unshare()
        if child_ehash:
            with open(CHILD_EHASH, "w") as f:  # in the child's first namespace only
                f.write(str(child_ehash))
            _unshare()  # a namespace made from there gets a table of its own
        with open(EHASH) as f:
            entries = int(f.read())  # negative: the host's table, shared
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        sock = tcp_reader._netlink_socket()
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(reps):
            raw_dump(sock)
        dump_wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        dump_sys = after.ru_stime - before.ru_stime
        start, before = time.perf_counter(), after
        for _ in range(reps):
            for name in ("tcp", "tcp6"):
                with open(f"/proc/self/net/{name}", "rb") as f:
                    f.read()
        proc_wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        return {"tcp_ehash_entries": entries,
                "dump_wall_ms": dump_wall / reps * 1e3, "dump_sys_ms": dump_sys / reps * 1e3,
                "proc_wall_ms": proc_wall / reps * 1e3,
                "proc_sys_ms": (after.ru_stime - before.ru_stime) / reps * 1e3}

    return work


def _holder(sockets: int) -> Callable[[int], Dict[str, float]]:
    """A new namespace holding ``sockets`` connected TCP sockets on its own loopback."""

    def work(_: int) -> Dict[str, float]:
        _unshare()
        resource.setrlimit(resource.RLIMIT_NOFILE, (sockets + 256, sockets + 256))
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sh", fcntl.ioctl(probe, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(probe, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        held = []
        for _ in range(sockets // 2):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.connect(listener.getsockname())
            held += [client, listener.accept()[0]]
        with open("/proc/self/net/sockstat") as f:
            inuse = int(f.read().split("TCP: inuse ")[1].split()[0])
        globals()["_held"] = held  # kept open until the parent closes the pipe
        return {"inuse": inuse}

    return work


def hash_table(child_ehash: int, reps: int, sockets: int) -> Dict[str, object]:
    out: Dict[str, object] = {}
    print(f"one listener in a new namespace, {reps} times each:")

    def show(label: str, r: Dict[str, float]) -> None:
        out[label] = r
        print(f"  {label:44s} tcp_ehash_entries {r['tcp_ehash_entries']:7.0f}  dump: wall {r['dump_wall_ms']:6.3f} "
              f"sys {r['dump_sys_ms']:6.3f} ms   /proc tcp{{,6}}: wall {r['proc_wall_ms']:6.3f} "
              f"sys {r['proc_sys_ms']:6.3f} ms")

    show("the host's table", _in_child(_timed_here(reps))[2])
    pid, hold, held = _in_child(_holder(sockets), hold=True)
    try:
        show(f"the host's table, {held['inuse']:.0f} more sockets elsewhere", _in_child(_timed_here(reps))[2])
    finally:
        os.close(hold)
        os.waitpid(pid, 0)
    out["more_sockets"] = held["inuse"]
    show(f"a table of its own ({child_ehash} buckets)", _in_child(_timed_here(reps, child_ehash))[2])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the fleet per step (default 3)")
    parser.add_argument("--reps", type=int, default=200, help="dumps per throw-away namespace (default 200)")
    parser.add_argument("--child-ehash", type=int, default=1024, help="buckets of the private table (default 1024)")
    parser.add_argument("--sockets", type=int, default=4000,
                        help="sockets held in another namespace for the second figure (default 4000)")
    parser.add_argument("--no-fleet", dest="fleet", action="store_false", help="only the hash-table figures")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    args = parser.parse_args()
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    sys.path.insert(0, str(HERE))
    import run

    table = run.tcp_table()
    print(f"the host's TCP table: {table['buckets']} buckets, {table['inuse']} + {table['timewait']} TIME_WAIT "
          f"sockets in {table['namespaces']} namespaces")
    result = {"kernel": os.uname().release, "loadavg_1min": load, "tcp_table": table,
              "fleet": per_namespace(args.rounds) if args.fleet else None,
              "hash_table": hash_table(args.child_ehash, args.reps, args.sockets)}
    with open("/proc/loadavg") as f:
        result["loadavg_1min"] = round((load + float(f.read().split()[0])) / 2, 2)
    print(f"load average {result['loadavg_1min']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

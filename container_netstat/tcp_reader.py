"""A namespace's TCP sockets: from the kernel by sock_diag inside it, else from /proc.

The sock_diag path (decoding in ``sockdiag``): open ``/proc/<pid>/ns/net``, ``setns`` into
it, create the NETLINK_SOCK_DIAG socket and open ``ip_local_port_range`` there, and go
back to our own namespace at once, before the dump: a netlink socket answers for the
namespace it was created in (``sock_net``), and a /proc/sys/net file for the namespace
it was opened in (fs/proc/proc_sysctl.c, net/sysctl_net.c ``net_ctl_header_lookup``).
setns changes only the calling thread, and ``_Home`` always brings it back, even on error.

Only worker threads enter namespaces, never the main thread: Python runs signal handlers
in the main thread only, so a SIGINT or SIGTERM cannot run code (the push, the spool) in
a container's namespace. On the way out the worker compares its
``/proc/thread-self/ns/net`` inode with the one the run started in; a worker that did not
get back (``HomeLost``) refuses any further namespace. The dump itself (``sockdiag``)
believes only the kernel: the socket is connected to port id 0, each request has a
fresh sequence number, and a dump is bounded in messages and in time (the run's
``Deadline``, at most ``DUMP_SECONDS``). A dump that ends badly raises ``DumpFailed``:
that namespace's TCP states are left out, its other figures stay.

- setns needs CAP_SYS_ADMIN (kernel/nsproxy.c, net/core/net_namespace.c ``netns_install``).
- Opening another process's ns file needs ptrace read access to it (fs/proc/namespaces.c):
  a process with capabilities the caller lacks needs CAP_SYS_PTRACE.
- An open ns file keeps a dying namespace alive, so after the dump the pid's namespace is
  checked again: a different inode (or no process) means the container went away.

Where setns or the ns file is refused (a docker-group user, a DaemonSet without those
capabilities) the sockets come from ``/proc/<pid>/net/tcp{,6}``: the same states, orphans,
listeners, accept queues and remotes, but no backlog (its tx_queue is not it) and no port
range (readable only from inside), so fill and pressure percentages are left out there.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import AbstractSet, Callable, Iterator, List, Optional, Set, Tuple, TypeVar

from container_netstat import tcp_summary, procnet, sockdiag
from container_netstat.deadline import Deadline, OutOfTime
from container_netstat.tcp_summary import TcpSocket
from container_netstat.errors import ContainerNetstatError, ParseError, ProcessGone, ProcReadError
from container_netstat.procfs import ProcFS, read_bytes
from container_netstat.records import TcpReading

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
SELF_NS = "/proc/thread-self/ns/net"  # our own thread's namespace, whatever --proc-root is
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
SYSCTL_BYTES = 256  # a /proc/sys number or pair is a few bytes; the read is bounded all the same
SOCK_DIAG, PROC = "sock_diag", "proc"
TCP, UDP = "tcp", "udp"  # the protocols ``TcpReader.sockets`` reads; also the /proc/net file names
RECV_BUFFER = 65536  # the kernel fills dump datagrams up to 32 KiB (net/netlink/af_netlink.c)
# One dump's time cap: a namespace's dump walks the host's shared TCP table in 4 to 7 ms
# of kernel time here (docs/development.rst, "TCP states cost"); seconds mean a stalled
# host or a runaway dump, and the run has other namespaces to read.
DUMP_SECONDS = 5.0
# Sequence numbers: one per request, from a random start, so that no reply of an earlier
# request (or a guess) matches a later one. next() of itertools.count is atomic in CPython.
# os.urandom is what secrets.randbits reads (random.SystemRandom), without importing
# secrets, hmac, hashlib and random at every start.
_SEQUENCE = itertools.count((int.from_bytes(os.urandom(4), "little") >> 1) + 1)
T = TypeVar("T")


class NotPermitted(ContainerNetstatError):
    """setns or the namespace file was refused: this namespace is read from /proc."""


class NamespaceGone(ProcessGone):
    """The pid left the namespace that was dumped (it exited, or its pid was reused)."""


class SockDiagUnsupported(ContainerNetstatError):
    """The kernel refused both dump requests (no inet_diag): read from /proc."""


class DumpFailed(ContainerNetstatError):
    """A dump ended badly (cut short, a bad or foreign message, refused mid-way, over its
    caps in messages or time): this namespace's TCP states are left out of the run."""


class HomeLost(ContainerNetstatError):
    """A thread could not return to the run's own namespace: it must do nothing more."""


def _next_seq() -> int:
    return next(_SEQUENCE) & 0xFFFFFFFF or 1


def _libc_setns() -> Callable[[int, int], None]:
    if hasattr(os, "setns"):  # Python 3.12+
        return os.setns  # type: ignore[no-any-return]
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return setns


class _Home:
    """Enter a namespace for a few calls; the thread is back in its own on leaving, checked
    by the inode of its ns file. A thread that is not back is marked lost in ``local``."""

    def __init__(self, setns: Callable[[int, int], None], home_fd: int, target_fd: int, home_ino: int,
                 local: threading.local, self_ns: str = SELF_NS) -> None:
        self.setns, self.home_fd, self.target_fd = setns, home_fd, target_fd
        self.home_ino, self.local, self.self_ns = home_ino, local, self_ns

    def __enter__(self) -> "_Home":
        lost = getattr(self.local, "lost", None)
        if lost:
            raise HomeLost(lost)
        try:
            self.setns(self.target_fd, CLONE_NEWNET)
        except OSError as err:
            raise NotPermitted(f"setns refused ({err.strerror}): needs CAP_SYS_ADMIN") from err
        return self

    def __exit__(self, *exc: object) -> None:
        # Staying in a container's namespace would put every later read and the push there:
        # not returning is not an error to carry on from, so this thread stops here.
        try:
            self.setns(self.home_fd, CLONE_NEWNET)
            back = os.stat(self.self_ns).st_ino == self.home_ino
            why = "" if back else "still in another namespace after setns"
        except OSError as err:
            back, why = False, f"setns home refused ({err.strerror or err})"
        if not back:
            self.local.lost = f"thread {threading.current_thread().name} could not return to its namespace: {why}"
            raise HomeLost(self.local.lost)


def off_main(call: Callable[[], T]) -> T:
    """``call()`` in a worker thread when the caller is the main thread (which never leaves
    its namespace, see the module docstring); as is in any other thread."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    box: List[object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as err:  # handed to the caller, raised there
            box.append(_Raised(err))

    worker = threading.Thread(target=run, name="netns-enter", daemon=True)
    worker.start()
    worker.join()
    result = box[0]
    if isinstance(result, _Raised):
        raise result.err
    return result  # type: ignore[return-value]


class _Raised:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def parse_port_range(text: str, path: str = PORT_RANGE) -> int:
    """``ip_local_port_range`` (``lo<TAB>hi``) -> how many ephemeral ports: hi - lo + 1."""
    from container_netstat.errors import ParseError

    parts = text.split()
    try:
        low, high = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ParseError(path, f"expected two port numbers, got {text.strip()[:40]!r}") from None
    if not 0 < low <= high <= 65535:
        raise ParseError(path, f"not a port range: {low} {high}")
    return high - low + 1


class TcpReader:
    """Reads each namespace's sockets by the cheapest path this process is allowed.

    ``probe()`` once per run says whether sock_diag can be used at all (setns into our own
    namespace needs the same capability as into any other), and ``confirm(pid)`` whether a
    container's ns file opens (ptrace access). Without either every namespace is read from
    /proc. ``optional``: the states were not asked for, so the caller may leave them out
    rather than pay for /proc. A single namespace whose ns file is refused later is read
    from /proc too.
    """

    def __init__(self, proc: ProcFS, self_ns: str = SELF_NS, optional: bool = False) -> None:
        self.proc = proc
        self.optional = optional
        self.self_ns = self_ns
        self._setns = _libc_setns()
        self._home_fd: Optional[int] = None
        self._home_ino = 0
        self._local = threading.local()  # per thread: why it could not return, if it could not
        self.unavailable: Optional[str] = None  # why sock_diag is not used, once probed
        self.request = "legacy"  # TCPDIAG_GETSOCK (one walk); "v2" once the kernel refused it
        self.fallbacks: List[str] = []  # why some namespaces were read from /proc
        self._refused: Set[str] = set()  # protocols the kernel's sock_diag does not answer

    def probe(self) -> Optional[str]:
        """None if sock_diag can be used, else the reason (for the info line and doctor)."""
        try:
            self._home_fd = os.open(self.self_ns, os.O_RDONLY | os.O_CLOEXEC)
            self._home_ino = os.fstat(self._home_fd).st_ino
            self._setns(self._home_fd, CLONE_NEWNET)  # our own namespace: nothing changes
        except OSError as err:
            self.close()
            self.unavailable = f"setns refused ({err.strerror}): needs CAP_SYS_ADMIN"
            return self.unavailable
        try:
            _netlink_socket().close()
        except SockDiagUnsupported as err:
            self.close()
            self.unavailable = str(err)
        return self.unavailable

    def confirm(self, pid: int) -> Optional[str]:
        """After a good probe, whether ``pid``'s ns file opens: None if it does (or the pid
        is gone), else the reason, and sock_diag is then off for the run. Without ptrace
        access to one container's processes (CAP_SYS_PTRACE) there is usually none to any,
        and every namespace would be read from /proc at several times the cost."""
        if self.path != SOCK_DIAG:
            return self.unavailable
        try:
            os.close(self._open_ns(pid))
        except NotPermitted as err:
            self.close()
            self.unavailable = str(err)
        except ContainerNetstatError:
            pass
        return self.unavailable

    @property
    def path(self) -> str:
        """SOCK_DIAG once probed and usable, else PROC."""
        return SOCK_DIAG if self._home_fd is not None and self.unavailable is None else PROC

    def close(self) -> None:
        if self._home_fd is not None:
            os.close(self._home_fd)
            self._home_fd = None

    def read(self, pid: int, deadline: Optional[Deadline] = None, name: str = "",
             still_ours: Optional[Callable[[int], bool]] = None) -> TcpReading:
        """The summary of one pid's namespace, counted while the dump is decoded.

        ProcessGone if the pid went away meanwhile, or ``still_ours(pid)`` said, with the
        namespace held open, that it is not the container's any more; DumpFailed if the
        dump ended badly (the caller leaves this namespace's states out); HomeLost if this
        thread could not return to its namespace. ``deadline`` bounds the dump (at most
        DUMP_SECONDS); ``name`` names the container in messages.
        """
        if self._home_fd is not None and self.unavailable is None and TCP not in self._refused:
            tally = tcp_summary.Tally()
            try:
                port_range = self._by_sock_diag(pid, TCP, EVERY, tally.add, deadline, name, still_ours)
                return TcpReading(tally.summary(), port_range, SOCK_DIAG)
            except (NotPermitted, SockDiagUnsupported) as err:
                self._note_fallback(pid, str(err))
        return TcpReading(tcp_summary.summarize(self._by_proc(pid, TCP, EVERY)), None, PROC)

    def sockets(self, pid: int, protocol: str = TCP, here: bool = False,
                select: Optional[Selection] = None) -> Tuple[List[TcpSocket], str]:
        """The decoded TCP (or UDP) sockets of one pid's namespace, and the path that read them.

        For attributing sockets to processes by inode (``hostnet``): the records are kept,
        not summarized, and ``select`` may keep only some (by state, asked of the kernel,
        and by inode). UDP records carry the inode and the state (TCP_CLOSE for an
        unconnected socket, TCP_ESTABLISHED for a connected one); their queues mean nothing.

        ``here``: the caller knows the pid shares this thread's namespace, so the dump is
        made where we are, without the ns file or setns. That needs no capability (a
        netlink socket answers for its own namespace, net/ipv4/inet_diag.c checks none
        for a dump), so it works for a docker-group user too; /proc/<pid>/net/* stays
        the fallback.
        """
        select = select or EVERY
        if here and protocol not in self._refused:
            try:
                return self._dump_here(protocol, select), SOCK_DIAG
            except SockDiagUnsupported as err:
                if protocol == UDP:
                    self._refused.add(protocol)
                self._note_fallback(pid, str(err), protocol)
            return self._by_proc(pid, protocol, select), PROC
        sockets, _range, path = self._sockets(pid, protocol, select)
        return sockets, path

    def _sockets(self, pid: int, protocol: str, select: Selection) -> Tuple[List[TcpSocket], Optional[int], str]:
        if self._home_fd is not None and self.unavailable is None and protocol not in self._refused:
            found: List[TcpSocket] = []
            try:
                port_range = self._by_sock_diag(pid, protocol, select, found.append)
                return found, port_range, SOCK_DIAG
            except (NotPermitted, SockDiagUnsupported) as err:
                if isinstance(err, SockDiagUnsupported) and protocol == UDP:
                    self._refused.add(protocol)  # no udp_diag in this kernel: not asked again
                self._note_fallback(pid, str(err), protocol)
        return self._by_proc(pid, protocol, select), None, PROC

    def _dump_here(self, protocol: str, select: Selection) -> List[TcpSocket]:
        sock = _netlink_socket()
        found: List[TcpSocket] = []
        try:
            self._dump(sock, "sock_diag of this namespace", protocol, select, found.append,
                       Deadline.after(DUMP_SECONDS))
            return found
        finally:
            sock.close()

    def _note_fallback(self, pid: int, why: str, protocol: str = TCP) -> None:
        if protocol == UDP:
            log.info("UDP sockets: pid %d read from /proc/<pid>/net/udp{,6}: %s", pid, why)
            return
        if not self.fallbacks:
            log.info("TCP states: pid %d read from /proc/<pid>/net/tcp{,6}: %s", pid, why)
        self.fallbacks.append(why)

    def _by_proc(self, pid: int, protocol: str, select: Selection) -> List[TcpSocket]:
        # /proc/net/udp{,6} have the columns of tcp{,6} up to the inode (net/ipv4/udp.c
        # ``udp4_format_sock``), so one parser reads both.
        sockets: List[TcpSocket] = []
        for name in (protocol, f"{protocol}6"):
            if name == protocol or self.proc.has_net(pid, name):
                text = self.proc.read_net(pid, name)
                sockets += procnet.parse_tcp_sockets(text, self.proc.path(pid, "net", name))
        return select.keep(sockets)

    def _open_ns(self, pid: int) -> int:
        path = self.proc.path(pid, "ns", "net")
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(pid, path) from err
        except PermissionError as err:
            raise NotPermitted(f"{path}: {err.strerror}: needs ptrace access (CAP_SYS_PTRACE)") from err
        except OSError as err:
            raise ProcReadError(f"{path}: {err.strerror or err}") from err

    def _by_sock_diag(self, pid: int, protocol: str, select: Selection, sink: Callable[[TcpSocket], None],
                      deadline: Optional[Deadline] = None, name: str = "",
                      still_ours: Optional[Callable[[int], bool]] = None) -> Optional[int]:
        """Dump one pid's namespace into ``sink``; its ephemeral port count, if readable."""
        path = self.proc.path(pid, "ns", "net")
        label = f"sock_diag of {name or path}"
        # The budget first: a run out of time does not even enter the namespace.
        try:
            seconds = deadline.budget(DUMP_SECONDS, f"the sock_diag dump of {name or path}") \
                if deadline is not None else DUMP_SECONDS
        except OutOfTime as err:
            raise DumpFailed(str(err)) from err
        until = Deadline.after(seconds)
        ns_fd = self._open_ns(pid)
        try:
            dumped = os.fstat(ns_fd).st_ino
            # The ns file is held: the namespace cannot go away under us, but the pid could
            # have been reused before it was opened; the caller knows whose it must be.
            if still_ours is not None and not still_ours(pid):
                raise NamespaceGone(pid, path)
            sock, range_text = off_main(lambda: self._enter_and_open(ns_fd))
        finally:
            os.close(ns_fd)
        try:
            self._dump(sock, label, protocol, select, sink, until)
        finally:
            sock.close()
        try:
            now = os.stat(path).st_ino
        except (FileNotFoundError, ProcessLookupError) as err:
            raise ProcessGone(pid, path) from err
        except OSError as err:
            raise ProcReadError(f"{path}: {err.strerror or err}") from err
        if now != dumped:
            raise NamespaceGone(pid, path)
        return parse_port_range(range_text) if range_text is not None else None

    def read_sysctl(self, pid: int, path: str, still_ours: Optional[Callable[[int], bool]] = None) -> Optional[str]:
        """A /proc/sys/net file as ``pid``'s network namespace sees it (doctor reads
        ``tcp_ehash_entries`` so), None where the kernel has no such file.

        The same entry as a dump's: the ns file held, ``still_ours`` asked, setns in a
        worker thread, the file read and the thread back at once. The file is the kernel's
        (procfs of this process's mount namespace, answered for the namespace entered:
        net/sysctl_net.c ``net_ctl_header_lookup``); nothing in the container is opened.
        NotPermitted where sock_diag's setns is not usable (``path`` is then PROC).
        """
        if self._home_fd is None or self.unavailable is not None:
            raise NotPermitted(self.unavailable or "namespaces not entered: probe() first")
        ns_fd = self._open_ns(pid)
        try:
            if still_ours is not None and not still_ours(pid):
                raise NamespaceGone(pid, self.proc.path(pid, "ns", "net"))
            return off_main(lambda: self._enter_and_read(ns_fd, path))
        finally:
            os.close(ns_fd)

    def _enter_and_read(self, ns_fd: int, path: str) -> Optional[str]:
        """In a worker thread: enter, read one /proc/sys file, return."""
        assert self._home_fd is not None
        with _Home(self._setns, self._home_fd, ns_fd, self._home_ino, self._local, self.self_ns):
            return _read_inside(path)

    def _enter_and_open(self, ns_fd: int) -> Tuple[socket.socket, Optional[str]]:
        """In a worker thread: enter, make the netlink socket and read the port range, return."""
        assert self._home_fd is not None
        sock: Optional[socket.socket] = None
        try:
            with _Home(self._setns, self._home_fd, ns_fd, self._home_ino, self._local, self.self_ns):
                sock = _netlink_socket()
                range_text = _read_inside(PORT_RANGE)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return sock, range_text

    def _dump(self, sock: socket.socket, path: str, protocol: str, select: Selection,
              sink: Callable[[TcpSocket], None], until: Deadline) -> None:
        """For TCP the legacy request's one walk, the v2 pair where the kernel refuses it;
        for UDP the v2 pair (the legacy request knows TCP only, inet_diag_dump_compat).
        A refusal is told apart before anything reaches ``sink``: it is the first message."""
        if protocol == TCP and self.request == "legacy":
            try:
                self._one(sock, path, sockdiag.legacy_request, select, sink, until)
                return
            except sockdiag.DumpRefused as err:
                log.info("sock_diag: the legacy TCPDIAG_GETSOCK request was refused (%s); using "
                         "SOCK_DIAG_BY_FAMILY per family", err)
                self.request = "v2"
        number = sockdiag.IPPROTO_TCP if protocol == TCP else sockdiag.IPPROTO_UDP
        for family in (sockdiag.AF_INET, sockdiag.AF_INET6):
            def request(seq: int, states: int, family: int = family) -> bytes:
                return sockdiag.v2_request(family, seq, states, number)
            try:
                self._one(sock, path, request, select, sink, until)
            except sockdiag.DumpRefused as err:
                if family == sockdiag.AF_INET6 and err.code in (errno.ENOENT, errno.EAFNOSUPPORT):
                    continue  # no IPv6 in this kernel: no IPv6 sockets
                raise SockDiagUnsupported(str(err) if protocol == TCP else f"UDP: {err}") from err

    def _one(self, sock: socket.socket, path: str, request: Callable[[int, int], bytes], select: Selection,
             sink: Callable[[TcpSocket], None], until: Deadline) -> None:
        """One request and its dump into ``sink``. DumpRefused only for a refusal before any
        record; every other bad ending is DumpFailed."""
        seq = _next_seq()
        dump = sockdiag.Dump(seq, sock.getsockname()[0], path, select.inodes)
        try:
            sock.send(request(seq, select.states))
            for found in dump.received(_replies(sock, path, until)):
                sink(found)
        except sockdiag.DumpRefused as err:
            if dump.records:
                raise DumpFailed(f"refused after {dump.records} records: {err}") from err
            raise
        except (ParseError, ProcReadError) as err:
            raise DumpFailed(str(err)) from err
        except OSError as err:  # send refused
            raise DumpFailed(f"{path}: {err.strerror or err}") from err
        finally:
            if dump.dropped:
                log.info("%s: %d replies not from the kernel or not to this request were dropped",
                         path, dump.dropped)


@dataclass(frozen=True)
class Selection:
    """Which sockets of a namespace to keep: the states asked of the kernel (a bit per
    state, as sock_diag takes them) and, optionally, only the given inodes."""

    states: int = sockdiag.STATE_MASK
    inodes: Optional[AbstractSet[int]] = None

    def keep(self, sockets: List[TcpSocket]) -> List[TcpSocket]:
        """The same choice made afterwards, for sockets read from /proc."""
        if self.states == sockdiag.STATE_MASK and self.inodes is None:
            return sockets
        return [s for s in sockets if self.states & (1 << s.state)
                and (self.inodes is None or s.inode in self.inodes)]


EVERY = Selection()


def _netlink_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket connected to the kernel: net/netlink/af_netlink.c
    (``netlink_getsockbyportid``) refuses a connected socket unicasts from any port id but
    the one it is connected to, so no process can put messages in its queue."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, sockdiag.NETLINK_SOCK_DIAG)
    except OSError as err:  # a seccomp filter or RestrictAddressFamilies= without AF_NETLINK
        raise SockDiagUnsupported(f"no NETLINK_SOCK_DIAG socket ({err.strerror or err})") from err
    try:
        sock.connect((sockdiag.KERNEL_PORT, 0))
    except OSError as err:
        sock.close()
        raise SockDiagUnsupported(f"NETLINK_SOCK_DIAG socket not connected ({err.strerror or err})") from err
    return sock


def _replies(sock: socket.socket, path: str, until: Deadline) -> Iterator[Tuple[bytes, int]]:
    """(datagram, sender port id) until the caller stops; each wait, and all of them, within ``until``."""
    while True:
        left = until.remaining()
        if left <= 0:
            raise DumpFailed(f"{path}: no end of the dump within its time")
        sock.settimeout(left)
        try:
            data, (sender, _groups) = sock.recvfrom(RECV_BUFFER)
        except socket.timeout as err:
            raise DumpFailed(f"{path}: no end of the dump within its time") from err
        except OSError as err:  # ENOBUFS: the receive queue overflowed, the dump is not whole
            raise DumpFailed(f"{path}: {err.strerror or err}") from err
        if not data:
            raise DumpFailed(f"{path}: replies ended before NLMSG_DONE")
        yield data, sender


def _read_inside(path: str) -> Optional[str]:
    """A /proc/sys file as the current namespace sees it; None where the kernel has none."""
    try:
        return read_bytes(path, SYSCTL_BYTES).decode("ascii")
    except (OSError, ValueError):  # ValueError: not ASCII, so not the kernel's number
        return None

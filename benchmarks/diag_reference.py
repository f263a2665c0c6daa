"""The yardstick's TCP states: one legacy sock_diag dump inside a namespace. Standard library only.

Written apart from the package (no import of container_netstat), serially, in the main
thread: enter the namespace with ``setns``, make the NETLINK_SOCK_DIAG socket and read
``ip_local_port_range`` there, come back, send one ``TCPDIAG_GETSOCK`` request (family 0:
IPv4 and IPv6 in one walk of the table, net/ipv4/inet_diag.c ``inet_diag_dump_compat``) and
decode the replies for what the package's states group reports: the count per state, the
orphans, the listeners' accept queues and fill, and the busiest remote (address, port).

Kernel layouts: include/uapi/linux/netlink.h (``nlmsghdr``), include/uapi/linux/inet_diag.h
(``inet_diag_req``, ``inet_diag_msg``); a LISTEN socket's wqueue is its backlog
(net/ipv4/tcp_diag.c ``tcp_diag_get_info``).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import Dict, Optional, Tuple

CLONE_NEWNET = 0x40000000
NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
STATES = ("established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
          "close_wait", "last_ack", "listen", "closing")  # 1..11, include/net/tcp_states.h
LISTEN = 10
ORPHANS = {4, 5, 7, 9, 11}
NEAR_FULL = 80
HEADER = struct.Struct("=IHHII")
MESSAGE = struct.Struct("=BBBB2s2s16s16s12xIIIII")  # inet_diag_msg: 72 bytes
MAPPED = b"\0" * 10 + b"\xff\xff"
ALL_STATES = sum(1 << s for s in range(1, 12))
REQUEST_BODY = struct.pack("=BBBB48sII", 0, 0, 0, 0, bytes(48), ALL_STATES, 0)

_libc = ctypes.CDLL(None, use_errno=True)
_home: Optional[int] = None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _enter(pid: int, proc: str) -> Tuple[socket.socket, Optional[int]]:
    global _home
    if _home is None:
        _home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fd = os.open(os.path.join(proc, str(pid), "ns/net"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
            try:
                with open(PORT_RANGE) as f:
                    low, high = (int(v) for v in f.read().split())
                ports: Optional[int] = high - low + 1
            except OSError:
                ports = None
        finally:
            _setns(_home)
    finally:
        os.close(fd)
    return sock, ports


def states(pid: int, proc: str = "/proc", seq: int = 1) -> Dict[str, Optional[int]]:
    """The states group's figures for ``pid``'s namespace, by name (``None``: not reported)."""
    sock, ports = _enter(pid, proc)
    by_state = [0] * 12
    orphans = listeners = queue_max = near_full = 0
    fill_max = -1
    peers: Dict[Tuple[bytes, int], int] = {}
    with sock:
        sock.connect((0, 0))
        request = HEADER.pack(HEADER.size + len(REQUEST_BODY), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        sock.send(request + REQUEST_BODY)
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                raise OSError("sock_diag: replies ended early")
            offset = 0
            while offset + HEADER.size <= len(data):
                length, kind, _flags, _seq, _port = HEADER.unpack_from(data, offset)
                if length < HEADER.size:
                    raise OSError("sock_diag: bad message length")
                if kind == NLMSG_DONE:
                    done = True
                    break
                if kind == NLMSG_ERROR:
                    raise OSError(f"sock_diag: error {-struct.unpack_from('=i', data, offset + 16)[0]}")
                (family, state, _t, _r, _sport, dport, _src, dst, _exp, rqueue, wqueue, _uid,
                 inode) = MESSAGE.unpack_from(data, offset + HEADER.size)
                by_state[state] += 1
                if state == LISTEN:
                    listeners += 1
                    queue_max = max(queue_max, rqueue)
                    fill = rqueue * 100 // max(wqueue, 1)
                    fill_max = max(fill_max, fill)
                    near_full += fill >= NEAR_FULL
                else:
                    if inode == 0 and state in ORPHANS:
                        orphans += 1
                    port = int.from_bytes(dport, "big")
                    if port:
                        address = dst[:4] if family == socket.AF_INET else dst[12:] if dst[:12] == MAPPED else dst
                        key = (address, port)
                        peers[key] = peers.get(key, 0) + 1
                offset += (length + 3) & ~3
    return figures(by_state, orphans, listeners, queue_max, fill_max, near_full,
                   max(peers.values(), default=0), ports)


def figures(by_state: list, orphans: int, listeners: int, queue_max: int, fill_max: int, near_full: int,
            peer_max: int, ports: Optional[int]) -> Dict[str, Optional[int]]:
    out: Dict[str, Optional[int]] = {f"tcp.state.{name}": by_state[i + 1] for i, name in enumerate(STATES)}
    out["tcp.orphan"] = orphans
    out["tcp.listen.queue_max"] = queue_max if listeners else None
    out["tcp.listen.fill_max_pct"] = fill_max if listeners else None
    out["tcp.listen.near_full"] = near_full if listeners else None
    out["tcp.ports.peer_max"] = peer_max
    out["tcp.ports.pressure_pct"] = peer_max * 100 // ports if ports else (0 if peer_max == 0 else None)
    return out


def empty() -> Dict[str, Optional[int]]:
    """A namespace whose sockstat shows no TCP socket: not dumped (as the package does)."""
    return figures([0] * 12, 0, 0, 0, -1, 0, 0, None)

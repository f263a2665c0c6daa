"""Pure codec for NETLINK_SOCK_DIAG TCP (and UDP) dumps: requests out, ``TcpSocket`` records in.

No socket, no file and no logging here: the reader in ``tcp_reader`` sends the bytes and
hands the replies in. Layouts are the kernel's UAPI (include/uapi/linux/netlink.h,
inet_diag.h, sock_diag.h):

- ``struct nlmsghdr``: u32 len, u16 type, u16 flags, u32 seq, u32 pid (16 bytes); every
  message starts on a 4-byte boundary (NLMSG_ALIGN).
- The legacy request ``TCPDIAG_GETSOCK`` (18) carries ``struct inet_diag_req``: family,
  src_len, dst_len, ext (u8 each), a 48-byte ``inet_diag_sockid``, u32 states, u32 dbs.
  The kernel answers it in ``inet_diag_dump_compat`` (net/ipv4/inet_diag.c), which sets
  ``sdiag_family = AF_UNSPEC``: one walk of the TCP tables returns IPv4 and IPv6 sockets.
- ``SOCK_DIAG_BY_FAMILY`` (20) carries ``struct inet_diag_req_v2``: family, protocol, ext,
  pad (u8 each), u32 states, then the sockid: one family per request, so two requests.
- Each reply is ``struct inet_diag_msg``: family, state, timer, retrans (u8 each), the
  sockid (sport, dport big-endian; src, dst 16 bytes each; interface; cookie), then u32
  expires, rqueue, wqueue, uid, inode. For a LISTEN socket rqueue is the accept queue and
  wqueue the backlog (net/ipv4/tcp_diag.c ``tcp_diag_get_info``), as ``ss -ltn`` shows.
- The dump ends with NLMSG_DONE; NLMSG_ERROR carries a negative errno.

Nothing in a reply is believed without a check: the reader connects its socket to the
kernel (port id 0), so net/netlink/af_netlink.c ``netlink_getsockbyportid`` refuses
unicasts from any other sender. Here, too, a datagram must come from port id 0 (the
kernel's ``sockaddr_nl``), and each message must carry the request's own sequence number
and our socket's port id (the kernel addresses a dump's replies to the requester:
net/ipv4/inet_diag.c ``NETLINK_CB(cb->skb).portid``), or it is dropped and counted. An
errno is used only inside 1..MAX_ERRNO; a dump is cut at ``MAX_RECORDS`` messages.

Request sockets are reported in state SYN_RECV and TIME_WAIT mini-sockets in their
substate (TIME_WAIT, or FIN_WAIT2 for a closed FIN_WAIT2), as /proc/net/tcp shows them.
"""

from __future__ import annotations

import os
import struct
from typing import AbstractSet, Iterable, Iterator, List, Optional, Tuple

from container_netstat.tcp_summary import STATE_NAMES, TcpSocket
from container_netstat.errors import ContainerNetstatError, ParseError

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10  # the dump was interrupted and may be inconsistent
NLMSG_MIN_TYPE = 0x10  # below it, control messages (include/uapi/linux/netlink.h)
KERNEL_PORT = 0  # the kernel's port id: the only sender of real replies
# include/linux/err.h: errnos run from 1 to 4095; anything else in an NLMSG_ERROR is not one
# (INT_MIN would overflow os.strerror's C int).
MAX_ERRNO = 4095
# Messages in one dump, before it is given up as not the kernel's: far above any real
# namespace, whose TCP sockets are bounded by its processes' fds (fs.nr_open, 1,048,576 by
# default, per process) plus its TIME_WAIT mini-sockets (net.ipv4.tcp_max_tw_buckets,
# 262,144 on big hosts); a host with a million sockets in one namespace still fits twice.
# At 72 + 16 bytes a message that is 176 MB of replies: the time cap ends it first anyway.
MAX_RECORDS = 2_000_000
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17  # answered by udp_diag (net/ipv4/udp_diag.c); ENOENT where it is not built
# The states /proc/net/tcp prints (tcp_summary.STATE_NAMES, bits 1-11); TCP_NEW_SYN_RECV (12)
# and TCP_BOUND_INACTIVE (13, commit 91051f003948) are kernel-internal and outside the mask.
STATE_MASK = sum(1 << state for state in STATE_NAMES)

_HEADER = struct.Struct("=IHHII")
_SOCKID_LEN = 48
_MSG = struct.Struct("=BBBB2s2s16s16s12xIIIII")  # inet_diag_msg, 72 bytes
_INODE = struct.Struct("=I")  # idiag_inode, at byte 68 of inet_diag_msg
_INODE_AT = 68
_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d


class DumpRefused(ContainerNetstatError):
    """The kernel answered the request with NLMSG_ERROR (errno, e.g. ENOENT: no inet_diag)."""

    def __init__(self, path: str, code: int) -> None:
        reason = os.strerror(code) if 0 < code <= MAX_ERRNO else "error"
        super().__init__(f"{path}: refused: {reason} (errno {code})")
        self.code = code


class TooManyRecords(ParseError):
    """A dump went on past MAX_RECORDS messages: not a real namespace's table."""


def _errno(path: str, code: int, what: str) -> ContainerNetstatError:
    """The exception for a negative errno carried by NLMSG_ERROR or NLMSG_DONE."""
    if -MAX_ERRNO <= code < 0:
        return DumpRefused(path, -code)
    return ParseError(path, f"{what} with errno {code}, not one the kernel sends")


def _request(kind: int, body: bytes, seq: int) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def legacy_request(seq: int = 1, states: int = STATE_MASK) -> bytes:
    """TCPDIAG_GETSOCK with ``struct inet_diag_req``, family 0: both families in one walk."""
    body = struct.pack("=BBBB48sII", 0, 0, 0, 0, bytes(_SOCKID_LEN), states, 0)
    return _request(TCPDIAG_GETSOCK, body, seq)


def v2_request(family: int, seq: int = 1, states: int = STATE_MASK, protocol: int = IPPROTO_TCP) -> bytes:
    """SOCK_DIAG_BY_FAMILY with ``struct inet_diag_req_v2`` for one family and protocol.

    For UDP the states filter applies too (net/ipv4/udp_diag.c ``udp_dump``): an unconnected
    socket is in TCP_CLOSE (7), a connected one in TCP_ESTABLISHED (1), both in the mask.
    The replies have the TCP layout; their queues are the socket's memory, not a backlog.
    """
    body = struct.pack("=BBBBI48s", family, protocol, 0, 0, states, bytes(_SOCKID_LEN))
    return _request(SOCK_DIAG_BY_FAMILY, body, seq)


def _peer(family: int, address: bytes, port: bytes) -> Tuple[bytes, int]:
    if family == AF_INET:
        address = address[:4]
    elif address[:12] == _MAPPED:
        address = address[12:]  # an IPv4 peer of a dual-stack socket: the same remote
    return address, int.from_bytes(port, "big")


class Dump:
    """The decoding of one dump: the request's sequence number, what was dropped, how much
    came. ``records`` counts inet_diag_msg records read (before the inode filter): 0 when
    DumpRefused is raised means the request itself was refused, nothing was counted."""

    def __init__(self, seq: int, port: int, path: str = "sock_diag", inodes: Optional[AbstractSet[int]] = None,
                 cap: int = MAX_RECORDS) -> None:
        self.seq, self.port, self.path, self.inodes, self.cap = seq, port, path, inodes, cap
        self.records = 0
        self.dropped = 0  # datagrams not from the kernel, messages of another request

    def received(self, datagrams: Iterable[Tuple[bytes, int]]) -> Iterator[TcpSocket]:
        """``sockets`` of (datagram, sender port id) pairs as recvfrom gives them: only the
        kernel's (port id 0) are read, the others dropped and counted."""
        return self.sockets(self._from_kernel(datagrams))

    def _from_kernel(self, datagrams: Iterable[Tuple[bytes, int]]) -> Iterator[bytes]:
        for data, sender in datagrams:
            if sender == KERNEL_PORT:
                yield data
                continue
            self.dropped += 1
            if self.records + self.dropped >= self.cap:
                raise TooManyRecords(self.path, f"more than {self.cap} messages in one dump")

    def sockets(self, replies: Iterable[bytes]) -> Iterator[TcpSocket]:
        """The sockets of the dump, from its reply datagrams in order, up to NLMSG_DONE.

        Sockets in a state outside 1-11 are skipped, and with ``inodes`` every socket whose
        inode is not in it (read before the rest of the message: a host's dump is long and
        only a few of its sockets may be wanted). Raises ParseError for a message cut
        short, an interrupted dump, replies that end before NLMSG_DONE or go on past the
        cap, and DumpRefused for NLMSG_ERROR: a dump is whole or it is an error, never a
        partial count.
        """
        path = self.path
        for data in replies:
            offset = 0
            while offset < len(data):
                if len(data) - offset < _HEADER.size:
                    raise ParseError(path, f"message header cut short at byte {offset}")
                length, kind, flags, seq, port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise ParseError(path, f"message of {length} bytes at byte {offset} cut short")
                if self.records + self.dropped >= self.cap:
                    raise TooManyRecords(path, f"more than {self.cap} messages in one dump")
                step = (length + 3) & ~3
                if seq != self.seq or port != self.port:
                    self.dropped += 1
                    offset += step
                    continue
                if flags & NLM_F_DUMP_INTR:
                    raise ParseError(path, "dump interrupted: the socket tables changed under it")
                body = offset + _HEADER.size
                if kind == NLMSG_DONE:
                    code = struct.unpack_from("=i", data, body)[0] if length >= _HEADER.size + 4 else 0
                    if code:
                        raise _errno(path, code, "NLMSG_DONE")
                    return
                if kind == NLMSG_ERROR:
                    if length < _HEADER.size + 4:
                        raise ParseError(path, "NLMSG_ERROR without its errno")
                    raise _errno(path, struct.unpack_from("=i", data, body)[0], "NLMSG_ERROR")
                if kind < NLMSG_MIN_TYPE:
                    raise ParseError(path, f"unexpected control message of type {kind}")
                if length - _HEADER.size < _MSG.size:
                    raise ParseError(path, f"inet_diag_msg of {length - _HEADER.size} bytes, expected {_MSG.size}")
                self.records += 1
                offset += step
                if self.inodes is not None and _INODE.unpack_from(data, body + _INODE_AT)[0] not in self.inodes:
                    continue
                family, state, _t, _r, _sport, dport, _src, dst, _exp, rqueue, wqueue, _uid, inode = \
                    _MSG.unpack_from(data, body)
                if state in STATE_NAMES:
                    yield TcpSocket(state, _peer(family, dst, dport), rqueue, wqueue, inode)
        raise ParseError(path, "replies ended before NLMSG_DONE")


def decode(
    replies: Iterable[bytes], path: str = "sock_diag", inodes: Optional[AbstractSet[int]] = None,
    seq: int = 1, port: int = 0, cap: int = MAX_RECORDS,
) -> Iterator[TcpSocket]:
    """The sockets of one dump (``Dump.sockets``) asked with ``seq`` by the socket ``port``."""
    return Dump(seq, port, path, inodes, cap).sockets(replies)


def decode_all(
    replies: Iterable[bytes], path: str = "sock_diag", inodes: Optional[AbstractSet[int]] = None,
    seq: int = 1, port: int = 0,
) -> List[TcpSocket]:
    """``decode`` into a list."""
    return list(decode(replies, path, inodes, seq, port))

"""Pure summaries of a namespace's TCP sockets: per-state counts, listeners, port pressure.

Both ways of listing sockets give ``TcpSocket`` records: a sock_diag dump (``sockdiag``)
and ``/proc/<pid>/net/tcp{,6}`` (``procnet.parse_tcp_sockets``). What is summarized:

- the count in each state /proc/net/tcp shows (include/net/tcp_states.h, 1-11), and the
  namespace's orphans: inode 0 in FIN_WAIT1, FIN_WAIT2, CLOSE, LAST_ACK or CLOSING (a socket
  no process holds; TIME_WAIT mini-sockets and request sockets have inode 0 too, but are
  not orphans). sockstat's own ``orphan`` is host-wide on every kernel (net/ipv4/proc.c).
- listeners: for a LISTEN socket the receive queue is its accept queue and, from
  sock_diag, the send queue is its backlog (net/ipv4/tcp_diag.c ``tcp_diag_get_info``).
  The kernel calls a queue full only when it holds more than the backlog
  (include/net/sock.h ``sk_acceptq_is_full``), so it queues backlog + 1 connections and
  ``ss -ltn`` can show Recv-Q 3 over Send-Q 2. Fill is queue / backlog in percent, with
  a backlog of 0 counted as 1: at 100 % the next connection is the last one queued, above
  it SYNs are dropped (TcpExt ListenOverflows). /proc/net/tcp has no backlog: no fill.
- port pressure: the most sockets that share one remote (address, port), LISTEN left out,
  TIME_WAIT in (it still holds its 4-tuple). A client has at most one connection per local
  port to one remote, so this count against the ephemeral port range tells how close it is
  to ``connect()`` failing with EADDRNOTAVAIL. Unconnected sockets (remote port 0) are left
  out; IPv4-mapped IPv6 remotes count as their IPv4 address.

``Tally`` counts while a dump is decoded, so no list of sockets is kept: its memory is
the per-remote map, bounded by ``PEER_CAP`` distinct remotes. Past the cap, sockets to a
remote not seen yet are not counted (those already in the map still are) and the summary
says so (``peers_capped``): ``peer_max`` is then a lower bound. A namespace with that many
remotes is a server talking to a crowd, not a client running out of ports to one remote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

STATE_NAMES = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
}
LISTEN = 10
ORPHAN_STATES = frozenset({4, 5, 7, 9, 11})
NEAR_FULL_PERCENT = 80
UNKNOWN_BACKLOG = -1
# Distinct remotes counted per namespace: about 10 MiB of map at most (a key and a count,
# ~150 bytes each), where 108,000 sockets as TcpSocket records took 29 MiB.
PEER_CAP = 65536


class TcpSocket(NamedTuple):
    """One TCP socket, as far as the summaries need it. A tuple rather than a dataclass:
    a host namespace can hold a hundred thousand of them."""

    state: int
    peer: Tuple[bytes, int]  # remote address and port; IPv4 and IPv4-mapped IPv6 as 4 bytes
    rqueue: int
    wqueue: int  # for a LISTEN socket its backlog; UNKNOWN_BACKLOG where not known
    inode: int


@dataclass(frozen=True)
class TcpSummary:
    """What the state, listener and port-pressure metrics need from one set of sockets."""

    states: Mapping[str, int]  # every name of STATE_NAMES, and "orphan"
    listeners: int
    queue_max: int  # the largest accept queue (0 without listeners)
    fill_max_percent: Optional[int]  # None without listeners or without backlogs
    near_full: Optional[int]  # listeners at or above NEAR_FULL_PERCENT; None as fill
    peer_max: int  # the most sockets sharing one remote (address, port)
    peers_capped: bool = False  # more than PEER_CAP remotes: peer_max is a lower bound


def fill_percent(queue: int, backlog: int) -> int:
    """An accept queue as a percent of its backlog, a backlog of 0 counted as 1 (see above)."""
    return queue * 100 // max(backlog, 1)


def empty() -> TcpSummary:
    """The summary of a namespace without a TCP socket."""
    return TcpSummary(dict.fromkeys([*STATE_NAMES.values(), "orphan"], 0), 0, 0, None, None, 0)


class Tally:
    """Counts states, listeners and remotes one socket at a time; keeps no socket."""

    def __init__(self, peer_cap: int = PEER_CAP) -> None:
        self.by_state = dict.fromkeys(STATE_NAMES, 0)
        self.orphans = self.listeners = self.queue_max = self.near_full = 0
        self.fill_max = -1
        self.backlog_known = True
        self.peers: Dict[Tuple[bytes, int], int] = {}
        self.peer_cap = peer_cap
        self.peers_capped = False

    def add(self, sock: TcpSocket) -> None:
        self.by_state[sock.state] += 1
        if sock.state == LISTEN:
            self.listeners += 1
            self.queue_max = max(self.queue_max, sock.rqueue)
            if sock.wqueue == UNKNOWN_BACKLOG:
                self.backlog_known = False
                return
            fill = fill_percent(sock.rqueue, sock.wqueue)
            self.fill_max = max(self.fill_max, fill)
            self.near_full += fill >= NEAR_FULL_PERCENT
            return
        if sock.inode == 0 and sock.state in ORPHAN_STATES:
            self.orphans += 1
        if sock.peer[1]:
            count = self.peers.get(sock.peer)
            if count is not None:
                self.peers[sock.peer] = count + 1
            elif len(self.peers) < self.peer_cap:
                self.peers[sock.peer] = 1
            else:
                self.peers_capped = True

    def summary(self) -> TcpSummary:
        states: Dict[str, int] = {STATE_NAMES[s]: n for s, n in self.by_state.items()}
        states["orphan"] = self.orphans
        has_fill = self.listeners > 0 and self.backlog_known
        return TcpSummary(
            states=states,
            listeners=self.listeners,
            queue_max=self.queue_max,
            fill_max_percent=self.fill_max if has_fill else None,
            near_full=self.near_full if has_fill else None,
            peer_max=max(self.peers.values(), default=0),
            peers_capped=self.peers_capped,
        )


def summarize(sockets: Iterable[TcpSocket], peer_cap: int = PEER_CAP) -> TcpSummary:
    """Count states, listeners and remotes in one pass; the sockets are not kept."""
    tally = Tally(peer_cap)
    for sock in sockets:
        tally.add(sock)
    return tally.summary()

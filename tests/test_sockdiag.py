"""The pure sock_diag codec and the socket summaries: recorded dumps and hand-made bytes."""

from __future__ import annotations

import errno
import struct
from collections import Counter
from typing import List

import pytest

from container_netstat import tcp_summary, procnet, sockdiag
from container_netstat.tcp_summary import TcpSocket
from container_netstat.errors import ParseError
from container_netstat.tcp_reader import parse_port_range

from conftest import FIXTURES

RECORDED = FIXTURES / "sock-diag" / "linux-6.18-states"
RECORDED_PORT = 29709  # the recording socket's port id: the kernel addressed its replies to it
SS_STATES = {
    "ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv", "FIN-WAIT-1": "fin_wait1",
    "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait", "UNCONN": "close", "CLOSE-WAIT": "close_wait",
    "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing",
}


def parts(prefix: str) -> List[bytes]:
    files = sorted(RECORDED.glob(f"{prefix}.*.bin"), key=lambda p: int(p.name.split(".")[1]))
    return [p.read_bytes() for p in files]


def ss_states() -> Counter:
    lines = (RECORDED / "ss-tan.txt").read_text().splitlines()[1:]
    return Counter(SS_STATES[line.split()[0]] for line in lines if line.strip())


def ss_listeners() -> List[tuple]:
    lines = (RECORDED / "ss-ltn.txt").read_text().splitlines()[1:]
    return sorted((int(f[1]), int(f[2])) for f in (line.split() for line in lines if line.strip()))


# -- recorded dumps -----------------------------------------------------------------------

def test_recorded_dump_is_several_datagrams() -> None:
    assert len(parts("legacy")) > 1
    assert (RECORDED / "kernel.txt").read_text().startswith("6.18")


def test_legacy_dump_counts_equal_ss() -> None:
    summary = tcp_summary.summarize(sockdiag.decode(parts("legacy"), port=RECORDED_PORT))
    expected = ss_states()
    for name in tcp_summary.STATE_NAMES.values():
        assert summary.states[name] == expected.get(name, 0), name
    assert summary.states["close_wait"] == 4


def test_legacy_dump_listeners_equal_ss_ltn() -> None:
    sockets = sockdiag.decode_all(parts("legacy"), port=RECORDED_PORT)
    listeners = sorted((s.rqueue, s.wqueue) for s in sockets if s.state == tcp_summary.LISTEN)
    assert listeners == ss_listeners()
    summary = tcp_summary.summarize(sockets)
    assert summary.listeners == 5
    assert summary.queue_max == 3
    assert summary.fill_max_percent == 150  # Recv-Q 3 over Send-Q 2
    assert summary.near_full == 2


def test_one_legacy_walk_equals_the_v2_pair() -> None:
    legacy = sorted(sockdiag.decode_all(parts("legacy"), port=RECORDED_PORT))
    pair = sorted(sockdiag.decode_all(parts("v2-inet"), port=RECORDED_PORT)
                  + sockdiag.decode_all(parts("v2-inet6"), port=RECORDED_PORT))
    assert legacy == pair


def test_dump_and_proc_files_agree_except_the_backlog() -> None:
    dumped = tcp_summary.summarize(sockdiag.decode(parts("legacy"), port=RECORDED_PORT))
    proc = tcp_summary.summarize(
        procnet.parse_tcp_sockets((RECORDED / "tcp").read_text(), "tcp")
        + procnet.parse_tcp_sockets((RECORDED / "tcp6").read_text(), "tcp6")
    )
    assert proc.states == dumped.states
    assert (proc.listeners, proc.queue_max, proc.peer_max) == (dumped.listeners, dumped.queue_max, dumped.peer_max)
    assert proc.fill_max_percent is None and proc.near_full is None


def test_ipv4_mapped_peers_merge_with_ipv4() -> None:
    sockets = sockdiag.decode_all(parts("legacy"), port=RECORDED_PORT)
    # 200 clients on 127.0.0.1 to the dual-stack listener on 9200: the client sides have
    # the IPv4 peer 127.0.0.1:9200; the accepted sides each have their own client port.
    assert Counter(s.peer for s in sockets)[(bytes([127, 0, 0, 1]), 9200)] == 200
    assert tcp_summary.summarize(sockets).peer_max == 200
    assert all(len(s.peer[0]) == 4 for s in sockets if s.peer[1])


# -- hand-made bytes ----------------------------------------------------------------------

def message(state: int, dport: int = 80, rqueue: int = 0, wqueue: int = 0, inode: int = 1,
            family: int = sockdiag.AF_INET, dst: bytes = bytes([10, 0, 0, 1]) + bytes(12), flags: int = 2) -> bytes:
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", 1234, dport)
    body += bytes(16) + dst.ljust(16, b"\0") + bytes(12) + struct.pack("=IIIII", 0, rqueue, wqueue, 0, inode)
    return struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body


def done(code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, 2, 1, 0, code)


def error(code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, sockdiag.NLMSG_ERROR, 0, 1, 0, code) + bytes(16)


def test_multi_part_reply_is_read_to_done() -> None:
    replies = [message(1) + message(8), message(10, 0, 3, 2), message(6, inode=0) + done()]
    sockets = sockdiag.decode_all(replies)
    assert [s.state for s in sockets] == [1, 8, 10, 6]
    assert sockets[2].rqueue == 3 and sockets[2].wqueue == 2


def test_nothing_after_done_is_read() -> None:
    def replies():
        yield message(1) + done()
        raise AssertionError("read past NLMSG_DONE")

    assert len(sockdiag.decode_all(replies())) == 1


def test_empty_dump() -> None:
    assert sockdiag.decode_all([done()]) == []


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EINVAL, errno.EPERM])
def test_nlmsg_error_is_a_refusal_with_its_errno(code: int) -> None:
    with pytest.raises(sockdiag.DumpRefused) as err:
        sockdiag.decode_all([message(1) + error(-code)])
    assert err.value.code == code
    assert f"errno {code}" in str(err.value)


def test_done_with_a_negative_code_is_a_refusal() -> None:
    with pytest.raises(sockdiag.DumpRefused):
        sockdiag.decode_all([message(1) + done(-errno.EINTR)])


@pytest.mark.parametrize("cut", [3, 17, 50, 87])
def test_message_cut_short_is_an_error_not_a_partial_count(cut: int) -> None:
    data = message(1) + message(8)
    with pytest.raises(ParseError, match="cut short"):
        sockdiag.decode_all([data[: len(message(1)) + cut]])


def test_replies_ending_before_done_are_an_error() -> None:
    with pytest.raises(ParseError, match="before NLMSG_DONE"):
        sockdiag.decode_all([message(1), message(2)])


def test_interrupted_dump_is_an_error() -> None:
    with pytest.raises(ParseError, match="interrupted"):
        sockdiag.decode_all([message(1, flags=2 | sockdiag.NLM_F_DUMP_INTR) + done()])


def test_short_inet_diag_msg_is_an_error() -> None:
    short = struct.pack("=IHHII", 16 + 8, sockdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + bytes(8)
    with pytest.raises(ParseError, match="inet_diag_msg"):
        sockdiag.decode_all([short + done()])


@pytest.mark.parametrize("state", [0, 12, 13, 255])
def test_state_outside_the_mask_is_not_counted(state: int) -> None:
    sockets = sockdiag.decode_all([message(1) + message(state) + done()])
    assert [s.state for s in sockets] == [1]


def test_requests_have_the_kernel_layouts() -> None:
    legacy = sockdiag.legacy_request()
    assert len(legacy) == 16 + 60  # nlmsghdr + struct inet_diag_req
    length, kind, flags = struct.unpack_from("=IHH", legacy)
    assert (length, kind, flags) == (76, sockdiag.TCPDIAG_GETSOCK, 0x301)
    assert legacy[16] == 0  # family 0: AF_UNSPEC, both families
    assert struct.unpack_from("=I", legacy, 16 + 4 + 48)[0] == sockdiag.STATE_MASK == 0xFFE
    v2 = sockdiag.v2_request(sockdiag.AF_INET6)
    assert len(v2) == 16 + 56
    assert struct.unpack_from("=BBBBI", v2, 16) == (10, 6, 0, 0, 0xFFE)


def test_v4_mapped_v6_peer_is_its_ipv4_address() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    v6 = message(1, family=sockdiag.AF_INET6, dst=mapped)
    v4 = message(1, dst=bytes([192, 0, 2, 7]))
    a, b = sockdiag.decode_all([v6 + v4 + done()])
    assert a.peer == b.peer == (bytes([192, 0, 2, 7]), 80)


# -- summaries ----------------------------------------------------------------------------

def sock(state: int, peer: tuple = (b"\x0a\0\0\x01", 443), rq: int = 0, wq: int = 0, inode: int = 1) -> TcpSocket:
    return TcpSocket(state, peer, rq, wq, inode)


def test_backlog_zero_counts_as_one() -> None:
    assert tcp_summary.fill_percent(1, 0) == 100
    assert tcp_summary.fill_percent(0, 0) == 0
    assert tcp_summary.fill_percent(3, 2) == 150
    assert tcp_summary.fill_percent(4, 5) == 80


def test_listener_figures() -> None:
    s = tcp_summary.summarize([sock(10, rq=4, wq=5), sock(10, rq=1, wq=128), sock(10, rq=0, wq=0)])
    assert (s.listeners, s.queue_max, s.fill_max_percent, s.near_full) == (3, 4, 80, 1)


def test_no_listener_has_no_fill() -> None:
    s = tcp_summary.summarize([sock(1)])
    assert (s.listeners, s.queue_max, s.fill_max_percent, s.near_full) == (0, 0, None, None)


def test_port_pressure_counts_time_wait_but_not_listeners_or_unconnected() -> None:
    peer = (b"\x0a\0\0\x01", 5432)
    s = tcp_summary.summarize([sock(1, peer), sock(6, peer, inode=0), sock(2, peer), sock(10, peer),
                               sock(7, (bytes(4), 0)), sock(7, (bytes(4), 0)), sock(1, (b"\x0a\0\0\x02", 5432))])
    assert s.peer_max == 3


def test_orphans_are_inode_zero_in_closing_states() -> None:
    s = tcp_summary.summarize([sock(4, inode=0), sock(9, inode=0), sock(4, inode=7), sock(6, inode=0), sock(3, inode=0)])
    assert s.states["orphan"] == 2
    assert s.states["fin_wait1"] == 2 and s.states["time_wait"] == 1 and s.states["syn_recv"] == 1


def test_empty_summary_has_every_state() -> None:
    e = tcp_summary.empty()
    assert set(e.states) == {*tcp_summary.STATE_NAMES.values(), "orphan"}
    assert not any(e.states.values()) and e.fill_max_percent is None


@pytest.mark.parametrize("text, expected", [("32768\t60999\n", 28232), ("1024 65535", 64512), ("5000 5000", 1)])
def test_port_range(text: str, expected: int) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["", "32768", "a b", "60999 32768", "0 100"])
def test_bad_port_range_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_port_range(text)


def test_proc_fallback_reads_mapped_peers_like_ipv4() -> None:
    v6 = procnet.parse_tcp_sockets((RECORDED / "tcp6").read_text(), "tcp6")
    v4 = procnet.parse_tcp_sockets((RECORDED / "tcp").read_text(), "tcp")
    assert all(s.wqueue == tcp_summary.UNKNOWN_BACKLOG for s in v4 + v6)
    # Every remote of this namespace is 127.0.0.1: in tcp6 as ::ffff:127.0.0.1, kept as in tcp.
    addresses = {s.peer[0] for s in v4 + v6 if s.peer[1]}
    assert len(addresses) == 1 and len(addresses.pop()) == 4


# -- UDP ----------------------------------------------------------------------------------

def test_v2_udp_request_has_the_protocol() -> None:
    udp = sockdiag.v2_request(sockdiag.AF_INET, protocol=sockdiag.IPPROTO_UDP)
    assert len(udp) == 16 + 56
    assert struct.unpack_from("=BBBBI", udp, 16) == (2, 17, 0, 0, 0xFFE)
    assert sockdiag.v2_request(sockdiag.AF_INET)[17] == sockdiag.IPPROTO_TCP  # the default stays TCP


def test_udp_replies_decode_like_tcp_ones() -> None:
    # udp_diag answers with inet_diag_msg too: TCP_CLOSE (7) unconnected, TCP_ESTABLISHED (1) connected
    a, b = sockdiag.decode_all([message(7, dport=0, inode=41) + message(1, dport=53, inode=42) + done()])
    assert (a.state, a.inode, a.peer[1]) == (7, 41, 0)
    assert (b.state, b.inode, b.peer[1]) == (1, 42, 53)


def test_decode_keeps_only_the_given_inodes() -> None:
    replies = [message(1, inode=5) + message(8, inode=6), message(10, inode=7) + message(12, inode=6) + done()]
    assert [s.inode for s in sockdiag.decode_all(replies, inodes={6, 7})] == [6, 7]
    assert sockdiag.decode_all(replies, inodes=set()) == []
    with pytest.raises(ParseError, match="before NLMSG_DONE"):  # a dump cut short is still an error
        sockdiag.decode_all([message(1, inode=5)], inodes={6})


def test_requests_carry_the_states_asked() -> None:
    mask = sockdiag.STATE_MASK & ~(1 << 6)
    assert struct.unpack_from("=I", sockdiag.legacy_request(states=mask), 16 + 4 + 48)[0] == mask
    assert struct.unpack_from("=I", sockdiag.v2_request(2, states=mask, protocol=17), 20)[0] == mask


# -- believing only the kernel --------------------------------------------------------------

def addressed(data: bytes, seq: int, port: int) -> bytes:
    """Every message of ``data`` re-addressed to (seq, port)."""
    out, offset = bytearray(data), 0
    while offset < len(out):
        length = struct.unpack_from("=I", out, offset)[0]
        struct.pack_into("=II", out, offset + 8, seq, port)
        offset += (length + 3) & ~3
    return bytes(out)


def test_messages_of_another_request_or_socket_are_dropped_and_counted() -> None:
    mine = addressed(message(1) + message(10, 0, 1, 5), 7, 300)
    stale = addressed(message(8) * 3 + done(), 6, 300)  # an earlier request's, DONE included
    other = addressed(message(8) * 2 + done(), 7, 301)  # another socket's
    dump = sockdiag.Dump(7, 300)
    sockets = list(dump.sockets([stale, mine, other, addressed(done(), 7, 300)]))
    assert [s.state for s in sockets] == [1, 10]
    assert dump.dropped == 4 + 3 and dump.records == 2


def test_datagrams_not_from_the_kernel_are_dropped_whole() -> None:
    forged = addressed(message(8) * 4 + done(), 7, 300)
    garbage = struct.pack("=IHHII", 0xFFFFFFFF, 20, 2, 7, 300)  # never parsed
    dump = sockdiag.Dump(7, 300)
    real = addressed(message(1) + done(), 7, 300)
    sockets = list(dump.received([(forged, 4242), (garbage, 4242), (real, sockdiag.KERNEL_PORT)]))
    assert [s.state for s in sockets] == [1] and dump.dropped == 2


@pytest.mark.parametrize("code", [-2**31, -4096, 2**31 - 1, 5, 0])
def test_an_errno_out_of_range_is_a_parse_error_not_an_overflow(code: int) -> None:
    with pytest.raises(ParseError, match="NLMSG_ERROR"):
        sockdiag.decode_all([error(code)])
    if code:
        with pytest.raises(ParseError, match="NLMSG_DONE"):
            sockdiag.decode_all([message(1) + done(code)])


def test_the_largest_errno_is_still_a_refusal() -> None:
    with pytest.raises(sockdiag.DumpRefused) as raised:
        sockdiag.decode_all([error(-sockdiag.MAX_ERRNO)])
    assert raised.value.code == sockdiag.MAX_ERRNO
    assert "errno 2147483648" in str(sockdiag.DumpRefused("x", 2**31))  # no OverflowError


def test_an_error_without_its_errno_and_control_messages_are_errors() -> None:
    with pytest.raises(ParseError, match="without its errno"):
        sockdiag.decode_all([struct.pack("=IHHII", 16, sockdiag.NLMSG_ERROR, 0, 1, 0)])
    with pytest.raises(ParseError, match="control message of type 1"):
        sockdiag.decode_all([struct.pack("=IHHII", 16, 1, 0, 1, 0) + done()])


def test_a_dump_past_its_cap_is_an_error() -> None:
    assert len(list(sockdiag.Dump(1, 0, cap=4).sockets([message(1) * 3 + done()]))) == 3
    with pytest.raises(sockdiag.TooManyRecords):
        list(sockdiag.Dump(1, 0, cap=4).sockets([message(1) * 4 + done()]))
    # a flood of foreign datagrams counts too: the cap ends it without the kernel's DONE
    flood = ((message(8), 4242) for _ in range(10**9))
    dump = sockdiag.Dump(1, 0, cap=1000)
    with pytest.raises(sockdiag.TooManyRecords):
        list(dump.received(flood))
    assert dump.dropped == 1000
    assert sockdiag.MAX_RECORDS == 2_000_000


# -- counting without keeping ---------------------------------------------------------------

def test_the_tally_equals_the_summary_of_the_list() -> None:
    sockets = sockdiag.decode_all(parts("legacy"), port=RECORDED_PORT)
    tally = tcp_summary.Tally()
    for s in sockdiag.decode(parts("legacy"), port=RECORDED_PORT):
        tally.add(s)
    assert tally.summary() == tcp_summary.summarize(sockets) and not tally.summary().peers_capped


def test_remotes_past_the_cap_are_not_counted_and_the_summary_says_so() -> None:
    a, b, c = (bytes([10, 0, 0, 1]), 443), (bytes([10, 0, 0, 2]), 443), (bytes([10, 0, 0, 3]), 443)
    sockets = [sock(1, a), sock(1, b), sock(1, c), sock(1, c), sock(1, a), sock(1, a)]
    capped = tcp_summary.summarize(sockets, peer_cap=2)
    assert capped.peer_max == 3 and capped.peers_capped  # a: 3; c came after the cap
    assert capped.states["established"] == 6  # states are all counted
    whole = tcp_summary.summarize(sockets)
    assert whole.peer_max == 3 and not whole.peers_capped
    late = tcp_summary.summarize([sock(1, a), sock(1, b)] + [sock(1, c)] * 5, peer_cap=2)
    assert late.peer_max == 1 and late.peers_capped  # a lower bound, and marked as one

"""The pure /proc/net parsers, on files recorded from real kernels (see fixtures/proc-net)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from container_netstat import procnet, tcp_summary
from container_netstat.errors import ParseError

from conftest import PROC_NET

SOCKSTAT = sorted(p for p in PROC_NET.glob("*/sockstat*"))
SNMP = sorted(p for p in PROC_NET.glob("*/snmp")) + sorted(PROC_NET.glob("*/netstat"))


@pytest.mark.parametrize("path", SOCKSTAT, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recorded_sockstat_parses(path: Path) -> None:
    sections = procnet.parse_sockstat(path.read_text(), str(path))
    proto = "TCP6" if path.name == "sockstat6" else "TCP"
    assert isinstance(sections[proto]["inuse"], int)


@pytest.mark.parametrize("path", SNMP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recorded_snmp_and_netstat_parses(path: Path) -> None:
    sections = procnet.parse_snmp(path.read_text(), str(path))
    text_lines = [line for line in path.read_text().splitlines() if line]
    assert len(sections) == len(text_lines) // 2
    if path.name == "snmp":
        assert "CurrEstab" in sections["Tcp"]
    else:
        assert "ListenOverflows" in sections["TcpExt"]


def test_sockstat_values_by_name_this_kernel() -> None:
    text = (PROC_NET / "linux-6.18-server" / "sockstat").read_text()
    sections = procnet.parse_sockstat(text)
    assert set(sections) == {"sockets", "TCP", "UDP", "UDPLITE", "RAW", "FRAG"}
    assert set(sections["TCP"]) == {"inuse", "orphan", "tw", "alloc", "mem"}
    assert sections["FRAG"] == {"inuse": 0, "memory": 0}


def test_seed_sockstat_values() -> None:
    sections = procnet.parse_sockstat((PROC_NET / "seed" / "sockstat").read_text())
    assert sections["sockets"]["used"] == 141118
    assert sections["TCP"] == {"inuse": 89, "orphan": 96, "tw": 7181, "alloc": 21341, "mem": 13896}
    assert sections["UDP"] == {"inuse": 3, "mem": 116}


def test_rhel4_sockstat_without_udp_mem() -> None:
    sections = procnet.parse_sockstat((PROC_NET / "node_exporter" / "sockstat_rhe4").read_text())
    assert sections["UDP"] == {"inuse": 0}
    assert "UDPLITE" not in sections


def test_snmp_is_signed_and_by_name() -> None:
    sections = procnet.parse_snmp((PROC_NET / "pcp-rhel6-bigsys" / "snmp").read_text())
    assert sections["Tcp"]["MaxConn"] == -1
    assert "InCsumErrors" not in sections["Tcp"]  # before 3.10


def test_backport_field_order_does_not_matter() -> None:
    # RHEL 6 appends 3.x counters after its own order: look-up by name still finds them.
    sections = procnet.parse_snmp((PROC_NET / "pcp-rhel6-bigsys" / "netstat").read_text())
    header = (PROC_NET / "pcp-rhel6-bigsys" / "netstat").read_text().splitlines()[0].split()
    assert header.index("TCPChallengeACK") > header.index("TCPBacklogDrop")
    assert isinstance(sections["TcpExt"]["TCPChallengeACK"], int)


def test_newest_fields_are_kept() -> None:
    sections = procnet.parse_snmp((PROC_NET / "oshi" / "snmp").read_text())
    assert "OutTransmits" in sections["Ip"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("sockets: used\n", "name/value pairs"),
        ("TCP: inuse x orphan 0\n", "not an integer: 'x'"),
        ("TCP inuse 1\n", "no 'Section:' prefix"),
        ("TCP: inuse 1\nTCP: inuse 2\n", "appears twice"),
    ],
)
def test_malformed_sockstat_names_the_file(text: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        procnet.parse_sockstat(text, "/proc/42/net/sockstat")
    assert "/proc/42/net/sockstat" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text, message, line",
    [
        ("", "empty file", None),
        ("Tcp: A B\n", "header line without a value line", 1),
        ("Tcp: A B\nTcp: 1\n", "2 names but 1 values", 2),
        ("Tcp: A B\nUdp: 1 2\n", "header Tcp: followed by Udp:", 2),
        ("Tcp: A B\nTcp: 1 z\n", "not an integer: 'z'", 2),
        ("Tcp: A\nTcp: 1\nTcp: A\nTcp: 2\n", "appears twice", 3),
    ],
)
def test_malformed_snmp_names_file_and_line(text: str, message: str, line: int | None) -> None:
    with pytest.raises(ParseError) as info:
        procnet.parse_snmp(text, "/proc/42/net/snmp")
    assert message in str(info.value)
    assert info.value.line == line
    assert str(info.value).startswith("/proc/42/net/snmp")


def test_truncated_recorded_snmp_is_an_error() -> None:
    lines = (PROC_NET / "linux-6.18-container" / "snmp").read_text().splitlines()
    with pytest.raises(ParseError):
        procnet.parse_snmp("\n".join(lines[:-1]) + "\n", "snmp")
    cut = "\n".join(lines[:5]) + "\n" + lines[5].rsplit(" ", 3)[0] + "\n"
    with pytest.raises(ParseError, match="names but"):
        procnet.parse_snmp(cut, "snmp")


def test_missing_field_is_a_parse_error_not_zero() -> None:
    sections = procnet.parse_sockstat("TCP: inuse 3\n")
    assert procnet.field(sections, "TCP", "inuse", "s") == 3
    with pytest.raises(ParseError, match="missing field TCP: tw"):
        procnet.field(sections, "TCP", "tw", "/proc/1/net/sockstat")


def tcp_states(text: str, path: str) -> Dict[str, int]:
    """Lines of /proc/net/tcp or tcp6 per state name, plus ``orphan``: what the /proc path counts."""
    return dict(tcp_summary.summarize(procnet.parse_tcp_sockets(text, path)).states)


def test_tcp_states_recorded() -> None:
    # a recorded namespace: 3 held connections, 2 CLOSE_WAIT leaks, 2 TIME_WAIT
    d = PROC_NET / "linux-6.18-states"
    v4 = tcp_states((d / "tcp").read_text(), "tcp")
    v6 = tcp_states((d / "tcp6").read_text(), "tcp6")
    assert (v4["established"], v4["fin_wait2"], v4["time_wait"], v4["orphan"]) == (3, 2, 2, 2)
    assert (v6["established"], v6["close_wait"], v6["listen"], v6["orphan"]) == (3, 2, 1, 0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "header"),
        ("garbage\n", "header"),
        ("  sl  local_address\n   0: 0100007F:80AC 0100007F:1F90 01\n", "4 fields"),
        ("  sl  local\n 0: a b 0C c d e f g 1\n", "unknown TCP state '0C'"),
    ],
)
def test_malformed_tcp_table(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        procnet.parse_tcp_sockets(text, "/proc/9/net/tcp")


def _slow_snmp(text: str) -> dict[str, dict[str, int]]:
    """The format by its definition, one token at a time: what the parser must agree with."""
    lines = [line for line in text.splitlines() if line.strip()]
    out: dict[str, dict[str, int]] = {}
    for header, values in zip(lines[0::2], lines[1::2]):
        prefix = header.partition(":")[0]
        out[prefix] = {n: int(v) for n, v in zip(header.partition(":")[2].split(), values.partition(":")[2].split())}
    return out


@pytest.mark.parametrize("path", SNMP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kept_sections_equal_the_full_parse(path: Path) -> None:
    text = path.read_text()
    full = procnet.parse_snmp(text, str(path))
    assert full == _slow_snmp(text)
    keep = ("Tcp", "Udp", "TcpExt", "NoSuchSection")
    kept = procnet.parse_snmp(text, str(path), keep=keep)
    assert kept == {name: fields for name, fields in full.items() if name in keep}
    assert kept, "every recorded file has Tcp, Udp or TcpExt"


@pytest.mark.parametrize(
    "text, message, line",
    [
        ("Ip: A B\nIp: 1 z\nTcp: C\nTcp: 3\n", "not an integer: 'z'", 2),
        ("Ip: A\nIp: 1\nTcp: C\nTcp: 3\nIp: A\nIp: 2\n", "section Ip appears twice", 5),
        ("Ip: A B\nIp: 1\nTcp: C\nTcp: 3\n", "Ip: 2 names but 1 values", 2),
    ],
)
def test_sections_not_kept_are_checked_all_the_same(text: str, message: str, line: int) -> None:
    with pytest.raises(ParseError) as info:
        procnet.parse_snmp(text, "/proc/42/net/snmp", keep=("Tcp",))
    assert message in str(info.value)
    assert info.value.line == line


@pytest.mark.parametrize("token", ["x", "1.5", "", "0x10", "--1"])
def test_the_first_bad_token_is_named(token: str) -> None:
    text = f"TCP: inuse 1 orphan {token or '?'} tw y\n"
    with pytest.raises(ParseError, match=f"not an integer: '{token or '?'}'"):
        procnet.parse_sockstat(text, "sockstat")

"""Pure parsers for /proc/<pid>/net files: text in, ``{section: {field: int}}`` out.

No file access and no logging here; the readers in ``procfs`` hand the text in.
Fields are looked up by name, never by position: kernels add, drop and reorder
them (distribution backports reorder TcpExt, 6.x added ``Ip: OutTransmits``).
"""

from __future__ import annotations

import sys
from typing import Collection, Dict, List, Mapping, Optional, Set

from container_netstat.tcp_summary import STATE_NAMES, UNKNOWN_BACKLOG, TcpSocket
from container_netstat.errors import ParseError

Sections = Dict[str, Dict[str, int]]


def _to_int(token: str, path: str, lineno: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise ParseError(path, f"not an integer: {token!r}", lineno) from None


def _to_ints(tokens: List[str], path: str, lineno: int) -> List[int]:
    """Every token as an integer. ``map(int, ...)`` first, without a Python call per token
    (these files are parsed for every namespace of every run); the token that is not one
    is looked for only when that fails."""
    try:
        return list(map(int, tokens))
    except ValueError:
        for token in tokens:
            _to_int(token, path, lineno)
        raise  # not reached: one of the tokens raised above


def _split_prefix(line: str, path: str, lineno: int) -> tuple[str, list[str]]:
    prefix, sep, rest = line.partition(":")
    if not sep or not prefix or " " in prefix:
        raise ParseError(path, f"no 'Section:' prefix in {line[:80]!r}", lineno)
    return prefix, rest.split()


def parse_sockstat(text: str, path: str = "sockstat") -> Sections:
    """Parse sockstat/sockstat6: lines of ``SECTION: name value name value ...``."""
    sections: Sections = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        prefix, tokens = _split_prefix(line, path, lineno)
        if not tokens or len(tokens) % 2:
            raise ParseError(path, f"{prefix}: expected name/value pairs", lineno)
        fields = dict(zip(tokens[0::2], _to_ints(tokens[1::2], path, lineno)))
        if prefix in sections:
            raise ParseError(path, f"section {prefix} appears twice", lineno)
        sections[prefix] = fields
    if not sections:
        raise ParseError(path, "empty file")
    return sections


def parse_snmp(text: str, path: str = "snmp", keep: Optional[Collection[str]] = None) -> Sections:
    """Parse snmp/netstat: pairs of a header line and a value line with the same prefix.

    ``keep``: the sections to return (all by default). The others are checked all the same
    (prefixes, counts, integers) and then dropped, not kept for every namespace.
    """
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ParseError(path, "empty file")
    if len(lines) % 2:
        raise ParseError(path, "header line without a value line", lines[-1][0])
    sections: Sections = {}
    seen: Set[str] = set()
    for (hno, header), (vno, values) in zip(lines[0::2], lines[1::2]):
        hprefix, names = _split_prefix(header, path, hno)
        vprefix, tokens = _split_prefix(values, path, vno)
        if hprefix != vprefix:
            raise ParseError(path, f"header {hprefix}: followed by {vprefix}:", vno)
        if len(names) != len(tokens):
            raise ParseError(
                path, f"{hprefix}: {len(names)} names but {len(tokens)} values", vno
            )
        if hprefix in seen:
            raise ParseError(path, f"section {hprefix} appears twice", hno)
        seen.add(hprefix)
        numbers = _to_ints(tokens, path, vno)
        if keep is None or hprefix in keep:
            sections[hprefix] = dict(zip(names, numbers))
    return sections


def field(sections: Mapping[str, Mapping[str, int]], section: str, name: str, path: str) -> int:
    """Return one field, or raise ParseError naming the file if the kernel did not print it."""
    try:
        return sections[section][name]
    except KeyError:
        raise ParseError(path, f"missing field {section}: {name}") from None


# /proc/net/tcp "st" column (include/net/tcp_states.h), as printed: two hex digits.
_TCP_STATE_CODES = {code: number for number, code in ((n, f"{n:02X}") for n in STATE_NAMES)}
# An IPv4-mapped IPv6 address in tcp6's rem_address: four 32-bit words, each printed in
# host byte order (net/ipv6/tcp_ipv6.c get_tcp6_sock), so ::ffff: reads per byte order.
_MAPPED_PREFIX = "0000000000000000" + ("FFFF0000" if sys.byteorder == "little" else "0000FFFF")


def parse_tcp_sockets(text: str, path: str = "tcp") -> List[TcpSocket]:
    """The sockets of /proc/net/tcp or tcp6: state, remote, queues and inode of each line.

    The listener backlog is not in these files (tx_queue of a LISTEN line is not it),
    so ``wqueue`` is ``UNKNOWN_BACKLOG``. Remote addresses are kept in the file's own
    byte order, which is enough to tell remotes apart; an IPv4-mapped one in tcp6 is
    reduced to its IPv4 part so that it matches the same remote in tcp.
    """
    lines = text.splitlines()
    if not lines or not lines[0].split()[:1] == ["sl"]:
        raise ParseError(path, "no 'sl local_address ...' header", 1)
    sockets: List[TcpSocket] = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 10:
            raise ParseError(path, f"{len(fields)} fields, expected at least 10", lineno)
        state = _TCP_STATE_CODES.get(fields[3].upper())
        if state is None:
            raise ParseError(path, f"unknown TCP state {fields[3]!r}", lineno)
        address, _, port = fields[2].partition(":")
        queues = fields[4].partition(":")
        try:
            if address.startswith(_MAPPED_PREFIX):
                address = address[len(_MAPPED_PREFIX):]
            peer = (bytes.fromhex(address), int(port, 16))
            rqueue = int(queues[2], 16)
            inode = int(fields[9])
        except ValueError:
            raise ParseError(path, f"malformed line {line.strip()[:80]!r}", lineno) from None
        sockets.append(TcpSocket(state, peer, rqueue, UNKNOWN_BACKLOG, inode))
    return sockets


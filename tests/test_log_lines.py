"""Every diagnostic is one printable line on stderr, with the credentials of any URL hidden."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from container_netstat import diagnostics


def formatted(message: str) -> str:
    formatter = diagnostics.OneLineFormatter("container-netstat: %(levelname)s: %(message)s")
    return formatter.format(logging.LogRecord("container_netstat", logging.ERROR, __file__, 1, message, None, None))


@pytest.mark.parametrize("text, shown", [
    ("tcp://user:secret@host:2376", "tcp://***@host:2376"),
    ("cannot reach Docker: Invalid bind address format: tcp://u:p@ss@[::1]:1", "format: tcp://***@[::1]:1"),
    ("http://falcon:pw@127.0.0.1:1988/v1/push?x=a@b", "http://***@127.0.0.1:1988/v1/push?x=a@b"),
    ("ssh://me@host and https://a:b@c/d", "ssh://***@host and https://***@c/d"),
    ("unix:///run/user@1000/docker.sock", "unix:///run/user@1000/docker.sock"),  # a path, not credentials
    ("http://host/path@x", "http://host/path@x"),
])
def test_credentials_in_any_url_are_hidden(text: str, shown: str) -> None:
    assert shown in diagnostics.redact(text)
    assert shown in formatted(text)


@given(st.text())
def test_any_message_is_one_printable_line(message: str) -> None:
    line = formatted(message)
    assert line.splitlines() == [line] or line == ""
    assert not [ch for ch in line if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0], repr(line)


def test_escapes_are_readable() -> None:
    assert formatted("a\r\nb\tc\x1b[31md") == "container-netstat: ERROR: a\\r\\nb\\tc\\x1b[31md"

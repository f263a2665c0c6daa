"""Diagnostics on stderr: one line per message, with credentials hidden.

A message can quote a container label, a receiver's reply or a library's error text (docker-py
quotes DOCKER_HOST in full): control characters and line breaks are escaped, so a message stays
one line and cannot drive a terminal, and the user-information part of any URL is hidden.
"""

from __future__ import annotations

import logging
import re

# The user-information part of any URL ("scheme://user:password@"), up to its last "@".
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")

# Control characters (C0, DEL, C1) and the other line breaks str.splitlines() knows, escaped.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\r"): "\\r", ord("\n"): "\\n", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})

FORMAT = "container-netstat: %(levelname)s: %(message)s"


def redact(text: str) -> str:
    """Hide the credentials of every URL in ``text`` (user:password@host) before it is logged."""
    return _USERINFO.sub(r"\1***@", text)


class OneLineFormatter(logging.Formatter):
    """``container-netstat: level: message`` on one line, whatever the message holds, with the
    credentials of any URL in it hidden."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)).translate(_ESCAPES)

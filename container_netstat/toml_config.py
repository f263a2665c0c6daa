"""The string values of the runtimes' TOML files: containerd's ``config.toml``, CRI-O's
``crio.conf`` and its drop-ins, containers/storage's ``storage.conf``.

``parse_strings`` gives every string value by its full key (tables, then the key), which is
all ``runtime_dirs`` reads: ``state`` (containerd), ``crio.root`` and ``crio.runroot``,
``storage.graphroot`` and ``storage.runroot``. On Python 3.11 and later it is the standard
library's ``tomllib`` (PEP 680); on 3.8 to 3.10, which the package still supports, the small
reader below (``small_strings``), which reads only what those keys need.

A file that is not TOML gives None (the caller warns and takes its defaults), never an
exception: ``tomllib`` raises ``TOMLDecodeError`` (a ``ValueError``), and ``RecursionError``
on deeply nested arrays or inline tables (``x = [[[[...``, its parser recurses once per
level), both caught here. The small reader never fails: it skips a line it cannot read.

Both agree on the string values of the files the packages ship (tests/test_toml_config.py,
on the files recorded in tests/fixtures/runtime-config/); they differ on values
the callers do not read: the small reader skips multi-line strings and arrays, where
``tomllib`` also gives the strings of inline tables and arrays of tables.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib

Strings = Dict[Tuple[str, ...], str]


def parse_strings(text: str) -> Optional[Strings]:
    """Every string value of a TOML document by its full key; None if it is not TOML."""
    if sys.version_info < (3, 11):
        return small_strings(text)
    try:
        document = tomllib.loads(text)
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None
    return dict(_flatten(document, ()))


def _flatten(table: Mapping[str, Any], prefix: Tuple[str, ...]) -> Iterator[Tuple[Tuple[str, ...], str]]:
    """The strings of a parsed document, tables flattened into their keys. An array of
    tables gives each table's strings in turn, so the last one's win, as in the small reader."""
    for key, value in table.items():
        if isinstance(value, str):
            yield prefix + (key,), value
        elif isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for item in value:
                yield from _flatten(item, prefix + (key,))


# --- the small reader, for Python 3.8 to 3.10 (TOML 1.0.0, https://toml.io/en/v1.0.0) ---

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(match: "re.Match[str]") -> str:
    code = match.group(1)
    if code[0] in "uU" and len(code) > 1:
        return chr(int(code[1:], 16)) if int(code[1:], 16) <= 0x10FFFF else ""
    return _ESCAPES.get(code, "")


def _one_line_string(text: str, i: int) -> Tuple[Optional[str], int]:
    """The basic ("...") or literal ('...') string at text[i], and the index after it;
    (None, i) if there is none that ends on this line."""
    quote = text[i] if i < len(text) else ""
    if quote not in ("'", '"') or text.startswith(quote * 3, i):
        return None, i
    j = i + 1
    while j < len(text) and text[j] != quote and text[j] != "\n":
        j += 2 if quote == '"' and text[j] == "\\" else 1
    if j >= len(text) or text[j] != quote:
        return None, i
    body = text[i + 1:j]
    return (_ESCAPE.sub(_unescape, body) if quote == '"' else body), j + 1


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _end_of_line(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def _key(text: str, i: int) -> Tuple[Optional[Tuple[str, ...]], int]:
    """A dotted key (bare or quoted parts) at text[i], and the index after it."""
    parts: List[str] = []
    while True:
        i = _skip_blanks(text, i)
        bare = _BARE_KEY.match(text, i)
        if bare:
            part: Optional[str] = bare.group()
            i = bare.end()
        else:
            part, i = _one_line_string(text, i)
        if part is None:
            return None, i
        parts.append(part)
        i = _skip_blanks(text, i)
        if not text.startswith(".", i):
            return tuple(parts), i
        i += 1


def _after_multi_line_string(text: str, i: int) -> int:
    """The index after the multi-line string at text[i] (the end of the text if it never ends)."""
    quote = text[i:i + 3]
    end = i + 3
    while True:
        end = text.find(quote, end)
        if end < 0:
            return len(text)
        if quote == "'''" or not _escaped(text, end):
            break
        end += 1
    after = end + 3
    while after < end + 5 and text.startswith(quote[0], after):  # one or two quotes may end its content
        after += 1
    return after


def _escaped(text: str, i: int) -> bool:
    """True if text[i] follows an odd number of backslashes."""
    backslashes = 0
    while i - backslashes > 0 and text[i - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _skip_value(text: str, i: int) -> int:
    """The index of the end of the line where the value at text[i] ends: arrays and inline
    tables may span lines, and so may multi-line strings; strings may hold [ ] and #."""
    depth = 0
    while i < len(text):
        char = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            i = _after_multi_line_string(text, i)
        elif char in "'\"":
            _, after = _one_line_string(text, i)
            i = max(after, i + 1)
        elif char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char == "\n" and depth <= 0:
            return i
        else:
            depth += (char in "[{") - (char in "]}")
            i += 1
    return i


def small_strings(text: str) -> Strings:
    """Every one-line string value of a TOML document, by its full key (table, then key).

    Only what ``runtime_dirs`` needs: tables (``[a."b"]``, ``[[a]]``), bare, quoted and dotted
    keys, basic and literal strings. Other values (numbers, arrays, multi-line strings...)
    are skipped, and so is a line it cannot read: the runtime has already parsed its file.
    ``parse_strings`` on Python 3.8 to 3.10; called directly by the tests on every version.
    """
    out: Strings = {}
    table: Tuple[str, ...] = ()
    i = 0
    while i < len(text):
        i = _skip_blanks(text, i)
        if i >= len(text):
            break
        if text[i] in "\r\n#":
            i = _end_of_line(text, i)
            continue
        if text[i] == "[":
            double = text.startswith("[[", i)
            key, after = _key(text, i + (2 if double else 1))
            closing = "]]" if double else "]"
            after = _skip_blanks(text, after)
            if key is not None and text.startswith(closing, after):
                table = key
            i = _end_of_line(text, i)
            continue
        key, i = _key(text, i)
        i = _skip_blanks(text, i)
        if key is None or not text.startswith("=", i):
            i = _end_of_line(text, i)
            continue
        i = _skip_blanks(text, i + 1)
        value, after = _one_line_string(text, i)
        if value is not None:
            out[table + key] = value
            i = after
        else:
            i = _skip_value(text, i)
        i = _end_of_line(text, i)
    return out

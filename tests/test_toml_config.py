"""The runtimes' TOML files: ``tomllib`` (Python 3.11 and later) and the small reader kept
for 3.8 to 3.10, on the files the runtimes' packages ship (tests/fixtures/runtime-config/,
SOURCES.md there), on written cases, and on text that is not TOML.

The reader's use of them (which file wins, the warning for a broken one) is in
tests/test_runtime_dirs.py.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from container_netstat import toml_config

FIXTURES = Path(__file__).parent / "fixtures" / "runtime-config"
SHIPPED = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file() and p.suffix != ".md")

# What runtime_dirs._Reader reads: containerd's state, CRI-O's roots, containers/storage's roots.
CALLERS_KEYS = (("state",), ("crio", "root"), ("crio", "runroot"), ("storage", "graphroot"), ("storage", "runroot"))

# What the callers get from each file, read off the files by eye.
CALLERS_VALUES: Dict[str, Dict[Tuple[str, ...], str]] = {
    "containerd-config.toml": {("state",): "/run/containerd"},
    "containers.conf": {},  # every setting of Debian's is commented out
    "storage.conf": {("storage", "graphroot"): "/var/lib/containers/storage",
                     ("storage", "runroot"): "/run/containers/storage"},
    "crio.conf": {("crio", "root"): "/cc/graph", ("crio", "runroot"): "/cc/run"},
    "crio.conf.d/05-root.conf": {("crio", "root"): "/d05/graph", ("crio", "runroot"): "/d05/run"},
    "crio.conf.d/10-root.conf": {("crio", "root"): "/d10/graph"},
}

# Strings only tomllib gives: the small reader skips inline tables (``pull_options = {...}``).
ONLY_TOMLLIB: Dict[str, Set[Tuple[str, ...]]] = {
    "storage.conf": {("storage", "options", "pull_options", key)
                     for key in ("enable_partial_images", "use_hard_links", "ostree_repos")},
}

needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in Python 3.11 and later")


def _callers(strings: Dict[Tuple[str, ...], str]) -> Dict[Tuple[str, ...], str]:
    return {key: strings[key] for key in CALLERS_KEYS if key in strings}


def test_every_fixture_is_listed() -> None:
    assert set(SHIPPED) == set(CALLERS_VALUES)
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_both_readers_agree_on_the_shipped_files(name: str) -> None:
    text = (FIXTURES / name).read_text()
    small = toml_config.small_strings(text)
    parsed = toml_config.parse_strings(text)
    assert parsed is not None
    assert _callers(small) == _callers(parsed) == CALLERS_VALUES[name]
    assert small.items() <= parsed.items()
    if sys.version_info >= (3, 11):
        assert set(parsed) - set(small) == ONLY_TOMLLIB.get(name, set())


def test_containerds_default_config_is_read_whole() -> None:
    """More than the one key the callers read: every string of the 1.6 default (82 of them)."""
    strings = toml_config.small_strings((FIXTURES / "containerd-config.toml").read_text())
    assert len(strings) == 82
    assert strings[("grpc", "address")] == "/run/containerd/containerd.sock"
    assert strings[("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "runc", "runtime_type")] == (
        "io.containerd.runc.v2")


# --- the small reader, on written cases ---

CONTAINERD_V2 = '''version = 2
root = "/var/lib/containerd"   # a comment
state = '/run/k3s/containerd'
disabled_plugins = [
  "io.containerd.internal.v1.opt",  # state = "not this"
  "io.containerd.snapshotter.v1.btrfs",
]
imports = ["/etc/containerd/conf.d/*.toml"]

[grpc]
  address = "/run/containerd/containerd.sock"
  max_recv_message_size = 16777216

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
'''
STORAGE_CONF = r'''# storage.conf
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/data/containers/graph\u00e9"

[storage.options]
additionalimagestores = [
]
mountopt = """nodev,
metacopy=on"""

[storage.options.overlay]
mount_program = '/usr/bin/fuse-overlayfs'
'''
ODD_BUT_VALID = '''  [ crio ]   # spaces and a comment after the header
root="/a"
"runroot" = "/b\\"c"
crio.api.listen = "/var/run/crio/crio.sock"
note = """ root = "/not/this" """
list = [ { x = "[" }, '#', "]" ]
after = "still read"
empty = ""
['quoted key'.x]
y = 'lit\\eral'
'''


@pytest.mark.parametrize("text, expected", [
    (CONTAINERD_V2, {("root",): "/var/lib/containerd", ("state",): "/run/k3s/containerd",
                     ("grpc", "address"): "/run/containerd/containerd.sock",
                     ("plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter"): "overlayfs"}),
    (STORAGE_CONF, {("storage", "driver"): "overlay", ("storage", "runroot"): "/run/containers/storage",
                    ("storage", "graphroot"): "/data/containers/graph\u00e9",
                    ("storage", "options", "overlay", "mount_program"): "/usr/bin/fuse-overlayfs"}),
    (ODD_BUT_VALID, {("crio", "root"): "/a", ("crio", "runroot"): '/b"c',
                     ("crio", "crio", "api", "listen"): "/var/run/crio/crio.sock",
                     ("crio", "after"): "still read", ("crio", "empty"): "",
                     ("quoted key", "x", "y"): "lit\\eral"}),
    ("", {}),
    ("[[runtimes]]\nname = 'a'\n[[runtimes]]\nname = 'b'\n", {("runtimes", "name"): "b"}),
    ('state = "/ok"\nthis line is not TOML\nroot = "/ok too"\n', {("state",): "/ok", ("root",): "/ok too"}),
    ('state = "unterminated\nroot = "/r"\n', {("root",): "/r"}),
    ('x = """never ends\nstate = "/s"\n', {}),
])
def test_small_reader(text: str, expected: Dict[Tuple[str, ...], str]) -> None:
    assert toml_config.small_strings(text) == expected


def _strings(table: Dict[str, Any], prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], str]]:
    """tomllib's document to its strings by full key, tables only (written apart from the module's)."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _strings(value, prefix + (key,))
        elif isinstance(value, str):
            yield prefix + (key,), value


@needs_tomllib
@pytest.mark.parametrize("text, multi_line", [
    (CONTAINERD_V2, set()),
    (STORAGE_CONF, {("storage", "options", "mountopt")}),
    (ODD_BUT_VALID, {("crio", "note")}),
])
def test_small_reader_agrees_with_tomllib(text: str, multi_line: Set[Tuple[str, ...]]) -> None:
    """Every string it reads is tomllib's; it skips only the multi-line strings."""
    import tomllib

    theirs = dict(_strings(tomllib.loads(text)))
    ours = toml_config.small_strings(text)
    assert ours.items() <= theirs.items()
    assert set(theirs) - set(ours) == multi_line
    assert toml_config.parse_strings(text) == theirs


# --- parse_strings: which reader, and text that is not TOML ---

@needs_tomllib
def test_parse_strings_is_tomllib_on_311() -> None:
    text = 'state = """/run/multi"""\n[[a]]\nx = "1"\n[[a]]\ny = "2"\n'
    assert toml_config.parse_strings(text) == {("state",): "/run/multi", ("a", "x"): "1", ("a", "y"): "2"}
    assert toml_config.small_strings(text) == {("a", "x"): "1", ("a", "y"): "2"}  # no multi-line strings


def test_parse_strings_is_the_small_reader_before_311(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toml_config, "sys", types.SimpleNamespace(version_info=(3, 10, 13)))
    text = 'state = """/run/multi"""\nroot = "/r"\nthis line is not TOML\n'
    assert toml_config.parse_strings(text) == {("root",): "/r"}


NOT_TOML = [
    pytest.param('state = "/ok"\nthis line is not TOML\n', id="a line that is not TOML"),
    pytest.param('state = "unterminated\nroot = "/r"\n', id="an unterminated string"),
    pytest.param('state = "/a"\nstate = "/b"\n', id="a key set twice"),
    pytest.param('[crio]\nroot = "/a"\n[crio]\n', id="a table defined twice"),
    pytest.param("x = 1979-02-30\n", id="a date that is no date"),
    pytest.param('state = "\\x41"\n', id="an escape TOML has not"),
    pytest.param("x = " + "[" * 200_000, id="arrays nested 200,000 deep"),
    pytest.param("x = " + "{a = " * 100_000, id="inline tables nested 100,000 deep"),
]


@needs_tomllib
@pytest.mark.parametrize("text", NOT_TOML)
def test_text_that_is_not_toml_gives_none(text: str) -> None:
    """tomllib's TOMLDecodeError, and its RecursionError on deep nesting, end here."""
    assert toml_config.parse_strings(text) is None


@pytest.mark.parametrize("text", NOT_TOML)
def test_the_small_reader_reads_around_what_is_not_toml(text: str) -> None:
    assert isinstance(toml_config.small_strings(text), dict)


def _mutated(base: str) -> Any:
    return st.tuples(st.integers(0, len(base)), st.integers(0, 40), st.text(max_size=8)).map(
        lambda t: base[: t[0]] + t[2] + base[t[0] + t[1]:])


TOMLISH = st.text(alphabet=st.sampled_from(list("[]{}=\"'.#\\ \n\tabcu0123456789,")), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), TOMLISH, _mutated((FIXTURES / "storage.conf").read_text()),
                 _mutated((FIXTURES / "containerd-config.toml").read_text())))
def test_neither_reader_raises(text: str) -> None:
    for result in (toml_config.parse_strings(text), toml_config.small_strings(text)):
        assert result is None or all(
            isinstance(k, tuple) and all(isinstance(p, str) for p in k) and isinstance(v, str)
            for k, v in result.items())

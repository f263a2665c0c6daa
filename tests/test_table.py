"""The human view: exact output on a fixed snapshot, sorting, 80 columns, colour only when asked."""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import pytest
from click.testing import CliRunner

from container_netstat import cli, table
from container_netstat.metrics import COUNTER, GAUGE
from container_netstat.records import Sample

Tags = Tuple[Tuple[str, str], ...]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def namespace(tags: Tags, estab: int, inuse: int, tw: Optional[int], udp: int,
              close_wait: Optional[int] = None, fill: Optional[int] = None) -> List[Sample]:
    samples = [
        Sample("container.net.tcp.established", estab, GAUGE, tags),
        Sample("container.net.tcp.inuse", inuse, GAUGE, tags),
        Sample("container.net.udp.inuse", udp, GAUGE, tags),
        Sample("container.net.tcp.active_opens", 12345, COUNTER, tags),
    ]
    if tw is not None:
        samples.append(Sample("container.net.tcp.timewait", tw, GAUGE, tags))
    if close_wait is not None:
        samples.append(Sample("container.net.tcp.state.close_wait", close_wait, GAUGE, tags))
    if fill is not None:
        samples.append(Sample("container.net.tcp.listen.fill_max_pct", fill, GAUGE, tags))
    return samples


def collector(containers: int, namespaces: int, failed: int) -> List[Sample]:
    return [
        Sample("container.net.collector.containers", containers, GAUGE),
        Sample("container.net.collector.namespaces", namespaces, GAUGE),
        Sample("container.net.collector.failed", failed, GAUGE),
        Sample("container.net.host.tcp.orphan", 4, GAUGE),
    ]


WEB: Tags = (("container", "web-1"),)
CART: Tags = (("namespace", "shop"), ("pod", "cart-7d9f8c6b5-x2x4q"))
BATCH: Tags = (("container", "batch"),)

STATES = (namespace(WEB, 3, 10, 200, 1, 0, 25) + namespace(CART, 12, 14, 0, 2, 37, 150)
          + namespace(BATCH, 0, 1, 28000, 0, 0, 0) + collector(5, 3, 1))
BASIC = namespace(WEB, 3, 10, 200, 1) + namespace(CART, 12, 14, 0, 2) + namespace(BATCH, 0, 1, 28000, 0) + collector(4, 3, 0)


def test_snapshot_default_order_is_sockets_in_use_largest_first() -> None:
    assert table.render(STATES) == """\
NAME                       ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL
shop/cart-7d9f8c6b5-x2x4q     12     14          0    2          37          150
web-1                          3     10        200    1           0           25
batch                          0      1      28000    0           0            0
3 namespaces, 5 running containers, 1 could not be read"""


def test_snapshot_without_the_states_group_shows_dashes_for_close_wait_and_fill() -> None:
    assert table.render(BASIC, sort="time_wait") == """\
NAME                       ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL
batch                          0      1      28000    0           -            -
web-1                          3     10        200    1           -            -
shop/cart-7d9f8c6b5-x2x4q     12     14          0    2           -            -
3 namespaces, 4 running containers"""


def test_snapshot_by_name_with_a_column_the_kernel_does_not_give_per_namespace() -> None:
    # On a kernel where TIME_WAIT is host-wide there is no per-namespace value: "-", sorted last.
    samples = namespace(WEB, 3, 10, None, 1) + namespace(BATCH, 0, 1, None, 0) + collector(2, 2, 0)
    assert table.render(samples, sort="name") == """\
NAME   ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL
batch      0      1          -    0           -            -
web-1      3     10          -    1           -            -
2 namespaces, 2 running containers"""
    assert [r.name for r in table.sort_rows(table.rows(samples)[0], "time_wait")] == ["batch", "web-1"]


def test_no_namespaces() -> None:
    assert table.render(collector(0, 0, 0)) == (
        "NAME  ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL\n0 namespaces, 0 running containers")


@pytest.mark.parametrize("key", table.SORT_KEYS)
def test_every_sort_key_orders_rows(key: str) -> None:
    rows = table.sort_rows(table.rows(STATES)[0], key)
    if key == "name":
        assert [r.name for r in rows] == sorted(r.name for r in rows)
    else:
        values = [r.values[key.upper()] for r in rows]
        assert values == sorted(values, reverse=True)


def test_ties_are_broken_by_name() -> None:
    samples = namespace((("container", "b"),), 1, 1, 0, 0) + namespace((("container", "a"),), 1, 1, 0, 0)
    assert [r.name for r in table.sort_rows(table.rows(samples)[0], "inuse")] == ["a", "b"]


def test_an_unknown_sort_key_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sort by 'bogus'"):
        table.sort_rows([], "bogus")


def test_the_cli_offers_exactly_the_table_sort_keys() -> None:
    assert cli.SORT_COLUMNS == table.SORT_KEYS


def test_long_names_are_cut_in_the_middle_to_fit_80_columns() -> None:
    long_pod = (("namespace", "payments-production"), ("pod", "ledger-reconciliation-worker-6f7d8c9b4-zq2xw"))
    samples = namespace(long_pod, 123456, 234567, 345678, 4567, 56789, 100) + namespace(WEB, 1, 1, 1, 1, 1, 1)
    lines = table.render(samples).splitlines()
    assert max(len(line) for line in lines) == 80
    assert lines[1].startswith("payments-p..c9b4-zq2xw  ")
    assert lines[1].endswith("  123456  234567     345678  4567       56789          100")


def test_a_narrower_width_keeps_a_readable_name() -> None:
    lines = table.render(STATES, width=50).splitlines()
    assert lines[1].startswith("shop/ca..5-x2x4q ")  # never below 16 characters of name
    assert all(len(line) <= 16 + len("  ESTAB  INUSE  TIME_WAIT  UDP  CLOSE_WAIT  LISTEN_FILL") for line in lines)


def test_names_from_labels_cannot_send_terminal_escapes() -> None:
    evil = (("container", "evil\x1b]0;owned\x07\x1b[2J\nname\u202e"),)
    text = table.render(namespace(evil, 1, 1, 1, 1))
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil?]0;owned??[2J?name?" in text


def test_unknown_tag_shapes_are_shown_as_key_value_pairs() -> None:
    assert table.display_name((("runtime", "podman"), ("container", "db"))) == "container=db,runtime=podman"


def test_colour_only_when_asked_and_alignment_unchanged() -> None:
    plain = table.render(STATES)
    coloured = table.render(STATES, color=True)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured) == plain
    assert coloured.startswith("\x1b[1mNAME")
    assert "\x1b[33m37\x1b[0m" in coloured  # a CLOSE_WAIT that is not zero
    assert "\x1b[33m150\x1b[0m" in coloured  # a listener above 80 % of its backlog
    assert coloured.count("\x1b[33m") == 2


@pytest.mark.parametrize("key", ["close_wait", "listen_fill"])
def test_a_states_sort_without_the_states_group_is_a_usage_error(key: str) -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--format", "table", "--metrics", "basic", "--sort", key])
    assert result.exit_code == 2
    assert "states group" in result.output


def test_help_names_the_output_options() -> None:
    result = CliRunner().invoke(cli.main, ["collect", "--help"])
    for option in ("--format", "--textfile", "--sort", "json|prometheus|table"):
        assert option in result.output

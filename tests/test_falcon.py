"""Open-falcon items: types the agent accepts, and tags that transfer decodes as meant."""

from __future__ import annotations

import json
from typing import Dict

import pytest

from container_netstat import falcon
from container_netstat.records import Sample

HOSTILE = [
    "web,pod=evil",
    "a=b",
    "with space",
    'quote"s and \'single\'',
    "gt>lt<",
    "new\nline\r\tx",
    "slash/name",
    "",
    "ünïcødé-名前",
    "\x00\x07ctl",
    "x" * 65536,
]


def transfer_tags(tags: str) -> Dict[str, str]:
    """Transfer's decoding (docs/facts.rst, "The open-falcon push"): drop spaces, split on ',', then on the first '='."""
    out: Dict[str, str] = {}
    for piece in tags.replace(" ", "").split(","):
        if "=" in piece:
            key, value = piece.split("=", 1)
            out[key] = value
    return out


GRAPH_BAD = set("\r\n'\">") | {chr(c) for c in range(32)} | {chr(127)}


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_tag_values_decode_to_exactly_the_intended_keys(value: str) -> None:
    tags = falcon.format_tags((("namespace", value), ("pod", value)))
    decoded = transfer_tags(tags)
    assert list(decoded) == ["namespace", "pod"]
    assert all(decoded.values())
    assert not GRAPH_BAD & set(tags)
    assert "/" not in tags
    assert len(tags.encode()) <= 2 * (falcon.MAX_TAG_VALUE + 10) + 1


def test_long_values_stay_distinct() -> None:
    a = falcon.sanitize("p" * 100 + "a")
    b = falcon.sanitize("p" * 100 + "b")
    assert a != b and len(a) == len(b) == falcon.MAX_TAG_VALUE


def test_safe_names_pass_unchanged() -> None:
    assert falcon.sanitize("web-1.default_x:80") == "web-1.default_x:80"


def test_items_have_the_types_the_agent_demands() -> None:
    items = falcon.build_items(
        [Sample("container.net.tcp.established", 3, "GAUGE", (("container", "a b"),))],
        endpoint="host name,1",
        timestamp=1700000000.9,  # type: ignore[arg-type]
        step=60,
    )
    (item,) = items
    assert item == {
        "endpoint": "host_name_1",
        "metric": "container.net.tcp.established",
        "timestamp": 1700000000,
        "step": 60,
        "value": 3,
        "counterType": "GAUGE",
        "tags": "container=a_b",
    }
    assert type(item["timestamp"]) is int and type(item["step"]) is int
    text = falcon.dumps(items)
    assert json.loads(text) == items


def test_endpoint_and_counter_fit_the_index_columns() -> None:
    long = "n" * 5000
    (item,) = falcon.build_items(
        [Sample("container.net.sockets.used", 1, "GAUGE", (("namespace", long), ("pod", long)))],
        endpoint=long, timestamp=1, step=60,
    )
    assert len(item["endpoint"].encode()) <= 255
    assert len((item["metric"] + "/" + item["tags"]).encode()) <= 255


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError):
        falcon.dumps([{"value": float("nan")}])


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1001, 2500])
def test_chunked_json_is_the_same_text(n: int) -> None:
    items = falcon.build_items(
        [Sample("container.net.tcp.inuse", i, "GAUGE", (("container", f"c{i % 7}"),)) for i in range(n)],
        endpoint="h", timestamp=1, step=60,
    )
    assert "".join(falcon.iter_dumps(items)) == falcon.dumps(items) + "\n"
